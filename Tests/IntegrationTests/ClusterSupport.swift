import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import TwinCore
import TestSupport
import XCTest

// Test support for two-node scenarios: a pair of nodes linked through relays (so a test can
// cut the link), and comparisons of the two bricks and the two journals.

/// Two TwinFS nodes "a" and "b" of one volume with a shared secret. Each listens on its own
/// free loopback port; a's [peer] address is `relayToB` (forwarding to b's listen port) and
/// b's is `relayToA`, so `cut` and `restore` act on the link in both directions.
final class TestCluster: @unchecked Sendable {
    let volume: String
    let a: TestNode
    let b: TestNode
    /// b's peer client connects here; forwards to a's listen port.
    let relayToA: Relay
    /// a's peer client connects here; forwards to b's listen port.
    let relayToB: Relay
    /// Directory of the cluster's own files (the secret), under TestEnv.prefix.
    let dir: String
    let secretPath: String
    let listenPortA: Int
    let listenPortB: Int
    private let destroyed = Locked(false)

    var nodes: [TestNode] { [a, b] }

    /// `extraConfig` is appended to both configs as top-level keys; `peerExtra` is appended
    /// inside both [peer] sections (e.g. "timeout = 2.5\n").
    init(volume: String = "test", extraConfig: String = "", peerExtra: String = "") throws {
        try TestEnv.requireFuse()
        self.volume = volume
        let dir = TestEnv.prefix + "/cluster-" + UUID().uuidString.prefix(8).lowercased()
        let secretPath = dir + "/secret"
        self.dir = dir
        self.secretPath = secretPath
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var relays: [Relay] = []
        var made: [TestNode] = []
        do {
            let portA = freeLoopbackPort()
            var portB = freeLoopbackPort()
            while portB == portA { portB = freeLoopbackPort() }
            // A relay must not sit on a port a node is about to listen on.
            func relay(to target: Int) throws -> Relay {
                while true {
                    let r = try Relay(targetPort: target)
                    relays.append(r)
                    if r.port != portA && r.port != portB { return r }
                }
            }
            let toA = try relay(to: portA)
            let toB = try relay(to: portB)
            try Self.writeSecret(secretPath)
            func extra(peer: String, via r: Relay) -> String {
                var s = extraConfig
                if !s.isEmpty && !s.hasSuffix("\n") { s += "\n" }
                s += "\n[peer]\nnode = \"\(peer)\"\naddress = \"127.0.0.1:\(r.port)\"\nsecret_file = \"\(secretPath)\"\n"
                s += peerExtra
                if !peerExtra.isEmpty && !peerExtra.hasSuffix("\n") { s += "\n" }
                return s
            }
            let na = try TestNode(name: "a", volume: volume, extraConfig: extra(peer: "b", via: toB),
                                  listen: "127.0.0.1:\(portA)")
            made.append(na)
            let nb = try TestNode(name: "b", volume: volume, extraConfig: extra(peer: "a", via: toA),
                                  listen: "127.0.0.1:\(portB)")
            made.append(nb)
            for r in relays where r !== toA && r !== toB { r.stop() }
            a = na
            b = nb
            relayToA = toA
            relayToB = toB
            listenPortA = portA
            listenPortB = portB
        } catch {
            for r in relays { r.stop() }
            for n in made { n.destroy() }
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
    }

    /// 32 random bytes, mode 0600 (SecretFile refuses a secret others can read).
    static func writeSecret(_ path: String) throws {
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FSError.last }
        defer { close(fd) }
        guard fchmod(fd, 0o600) == 0 else { throw FSError.last }
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress!, $0.count) }) == bytes.count else { throw FSError.last }
    }

    /// Starts both at once (each node waits up to its peer timeout for the other before it
    /// mounts); returns when both mounts are up.
    func start(file: StaticString = #filePath, line: UInt = #line) throws {
        let failure = Locked<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread { [a] in
            do { try a.start(file: file, line: line) } catch { failure.with { $0 = error } }
            done.signal()
        }.start()
        try b.start(file: file, line: line)
        done.wait()
        if let e = failure.with({ $0 }) { throw e }
    }

    /// Stops both nodes (SIGTERM, bounded wait); returns their exit statuses (a, b).
    @discardableResult
    func stop(timeout: TimeInterval = 30) -> (a: Int32?, b: Int32?) {
        (a.stop(timeout: timeout), b.stop(timeout: timeout))
    }

    /// Cuts the link both ways (`.reset` or `.blackhole`; `.pass` is `restore()`).
    func cut(_ mode: Relay.Mode) {
        relayToA.set(mode)
        relayToB.set(mode)
    }

    /// Lets bytes flow again both ways; connections from a cut are closed.
    func restore() {
        relayToA.set(.pass)
        relayToB.set(.pass)
    }

    func armWatchdogs(seconds: TimeInterval) {
        a.armWatchdog(seconds: seconds)
        b.armWatchdog(seconds: seconds)
    }

    /// Stops both nodes and relays and removes every directory. Safe to call twice.
    func destroy() {
        let first = destroyed.with { d -> Bool in
            defer { d = true }
            return !d
        }
        guard first else { return }
        // Relays first: a node stopping must not wait on a link that hangs.
        relayToA.stop()
        relayToB.stop()
        a.destroy()
        b.destroy()
        if dir.hasPrefix(TestEnv.prefix + "/") { try? FileManager.default.removeItem(atPath: dir) }
    }
}

extension XCTestCase {
    /// A started pair of nodes that is stopped and removed when the test ends, pass or fail.
    func startedCluster(volume: String = "test", extraConfig: String = "", peerExtra: String = "",
                        watchdog: TimeInterval = 600,
                        file: StaticString = #filePath, line: UInt = #line) throws -> TestCluster {
        let c = try TestCluster(volume: volume, extraConfig: extraConfig, peerExtra: peerExtra)
        addTeardownBlock { c.destroy() }
        try c.start(file: file, line: line)
        c.armWatchdogs(seconds: watchdog)
        return c
    }
}

// MARK: - Scenario helpers shared by the cluster and heal tests

extension XCTestCase {

    func put(_ path: String, _ bytes: [UInt8], flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC) throws {
        try putFile(path, bytes, flags: flags)
    }

    func status(_ n: TestNode) -> [String: Any] {
        let r = n.twinfs(["status", "--config", n.configPath, "--json"], timeout: 30)
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func replication(_ n: TestNode) -> [String: Any] { status(n)["replication"] as? [String: Any] ?? [:] }

    func state(_ n: TestNode) -> String { status(n)["state"] as? String ?? "?" }

    /// Waits (bounded) until `cond` holds; fails the test with `what` otherwise.
    func waitUntil(_ what: String, timeout: TimeInterval = 60, file: StaticString = #filePath, line: UInt = #line,
                   _ cond: () -> Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if cond() { return }
            usleep(100_000)
        }
        XCTFail("timed out after \(Int(timeout)) s waiting for: \(what)", file: file, line: line)
    }

    func waitHealthy(_ c: TestCluster, timeout: TimeInterval = 120, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if state(c.a) == "HEALTHY" && state(c.b) == "HEALTHY" { return }
            usleep(100_000)
        }
        // What a CI log needs to find the cause: each node's warnings and worse.
        func notable(_ n: TestNode) -> String {
            n.log.split(separator: "\n").filter { $0.contains("warning") || $0.contains("error") || $0.contains("critical") || $0.contains("split") }
                .suffix(30).joined(separator: "\n")
        }
        XCTFail("timed out after \(Int(timeout)) s waiting for: both nodes HEALTHY (a: \(state(c.a)), b: \(state(c.b)))\n"
                + "a's log:\n\(notable(c.a))\nb's log:\n\(notable(c.b))", file: file, line: line)
    }

    /// Both bricks and both journals identical.
    func assertReplicasIdentical(_ c: TestCluster, file: StaticString = #filePath, line: UInt = #line) throws {
        c.a.syncJournal()
        c.b.syncJournal()
        let bricks = compareBricks(c.a.brick, c.b.brick)
        XCTAssertEqual(bricks, [], "bricks differ:\n" + bricks.prefix(20).joined(separator: "\n"), file: file, line: line)
        let journals = try compareJournals(c.a.journalPath, c.b.journalPath)
        XCTAssertEqual(journals, [], "journals differ:\n" + journals.prefix(20).joined(separator: "\n"), file: file, line: line)
        // Nothing left owed either way (not even a live copy's streaming mark).
        for n in [c.a, c.b] {
            let j = try Journal(readOnlyPath: n.journalPath)
            XCTAssertEqual(try j.peerFiles(limit: 10, includeStreaming: true).map(\.id), [], "\(n.name) still owes files", file: file, line: line)
            XCTAssertEqual(try j.peerOps(after: 0, limit: 10).map(\.seq), [], "\(n.name) still owes changes", file: file, line: line)
        }
    }

    func cluster(timeout: Double = 2.0, extraConfig: String = "", file: StaticString = #filePath, line: UInt = #line) throws -> TestCluster {
        try startedCluster(extraConfig: extraConfig, peerExtra: "timeout = \(timeout)\n", file: file, line: line)
    }

    func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t = Date()
        try body()
        return Date().timeIntervalSince(t)
    }
}

/// A node's Prometheus endpoint, sample name (with labels) -> value.
func scrapeMetrics(_ port: Int) -> [String: Double] {
    let r = runCommand(["curl", "-sf", "http://127.0.0.1:\(port)/metrics"], timeout: 10)
    var out: [String: Double] = [:]
    for line in r.stdout.split(separator: "\n") where !line.hasPrefix("#") {
        guard let sp = line.lastIndex(of: " "), let v = Double(line[line.index(after: sp)...]) else { continue }
        out[String(line[..<sp])] = v
    }
    return out
}

/// Makes node a export metrics on a free loopback port (before the cluster starts).
func exportMetrics(_ c: TestCluster) throws -> Int {
    let port = freeLoopbackPort()
    // A top-level key, so before the [peer] section.
    let cfg = try String(contentsOfFile: c.a.configPath, encoding: .utf8)
    try ("metrics_listen = \"127.0.0.1:\(port)\"\n" + cfg).write(toFile: c.a.configPath, atomically: true, encoding: .utf8)
    return port
}

// MARK: - Comparing bricks

/// One entry of a brick as compareBricks sees it.
private struct BrickEntry {
    var kind: EntryKind
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int64
    var linkTarget: String?
    var id: String
    /// A special file's type bits and device number.
    var special: String = ""
}

private func kindName(_ k: EntryKind) -> String {
    switch k {
    case .file: "file"
    case .directory: "directory"
    case .symlink: "symlink"
    case .other: "special file"
    }
}

/// The `trusted.twinfs.id` xattr of `path` itself (not followed): "0x…" for the 8-byte
/// little-endian id, "none" when absent, raw hex otherwise.
private func idXattr(_ path: String) -> String {
    var buf = [UInt8](repeating: 0, count: 64)
    let n = twin_lgetxattr(path, "trusted.twinfs.id", &buf, buf.count)
    if n < 0 { return errno == ENODATA ? "none" : "unreadable (\(FSError.last))" }
    if n == 8 {
        var v: UInt64 = 0
        for i in (0..<8).reversed() { v = v << 8 | UInt64(buf[i]) }
        return "0x" + String(v, radix: 16)
    }
    return "raw[" + buf[0..<n].map { String(format: "%02x", $0) }.joined() + "]"
}

/// Every entry below `root` by brick-relative path ("" is the root itself), without the
/// top-level private `.twinfs` directory. Symlinks are never followed.
private func walkBrick(_ root: String) -> [String: BrickEntry] {
    var out: [String: BrickEntry] = [:]
    func entry(_ abs: String) -> BrickEntry? {
        var st = stat()
        guard lstat(abs, &st) == 0 else { return nil }
        let kind = EntryKind(mode: st.st_mode)
        var target: String?
        if kind == .symlink {
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(abs, &buf, buf.count - 1)
            target = n >= 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
        return BrickEntry(kind: kind, mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid,
                          size: Int64(st.st_size), linkTarget: target, id: idXattr(abs),
                          special: kind == .other ? "type 0o\(String(st.st_mode & S_IFMT, radix: 8)) rdev \(st.st_rdev)" : "")
    }
    guard let r = entry(root) else { return out }
    out[""] = r
    var stack: [String] = [""]
    while let rel = stack.popLast() {
        let abs = rel.isEmpty ? root : root + "/" + rel
        guard let d = opendir(abs) else { continue }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = dirent.name(e)
            if name == "." || name == ".." { continue }
            if rel.isEmpty && name == ".twinfs" { continue }
            let childRel = rel.isEmpty ? name : rel + "/" + name
            guard let ce = entry(abs + "/" + name) else { continue }
            out[childRel] = ce
            if ce.kind == .directory { stack.append(childRel) }
        }
    }
    return out
}

private func parentPath(_ rel: String) -> String {
    guard let i = rel.lastIndex(of: "/") else { return "" }
    return String(rel[..<i])
}

/// The differences between two brick directories (empty when they are the same): entries on
/// one side only, kind, file size and XXH3-128 content, symlink target, mode bits, owner and
/// the `trusted.twinfs.id` xattr. Timestamps and directory sizes are not compared; the
/// top-level `.twinfs` directory is skipped. Each line names the path ("." for the root).
func compareBricks(_ a: String, _ b: String) -> [String] {
    let ea = walkBrick(a)
    let eb = walkBrick(b)
    var out: [String] = []
    if ea[""] == nil { out.append("brick a \(a) cannot be read") }
    if eb[""] == nil { out.append("brick b \(b) cannot be read") }
    let onlyA = Set(ea.keys).subtracting(eb.keys)
    let onlyB = Set(eb.keys).subtracting(ea.keys)
    func reportOnly(_ side: String, _ only: Set<String>, _ entries: [String: BrickEntry]) {
        // Only the topmost entry of a subtree that is missing on the other side is named.
        func top(_ rel: String) -> String {
            var t = rel
            while !t.isEmpty, only.contains(parentPath(t)) { t = parentPath(t) }
            return t
        }
        var beneath: [String: Int] = [:]
        var tops: [String] = []
        for rel in only {
            let t = top(rel)
            if t == rel { tops.append(rel) } else { beneath[t, default: 0] += 1 }
        }
        for rel in tops {
            var note = kindName(entries[rel]!.kind)
            if let n = beneath[rel] { note += ", \(n) entries beneath" }
            out.append("\(rel.isEmpty ? "." : rel): only in \(side) (\(note))")
        }
    }
    reportOnly("a", onlyA, ea)
    reportOnly("b", onlyB, eb)

    for rel in Set(ea.keys).intersection(eb.keys) {
        let x = ea[rel]!, y = eb[rel]!
        let p = rel.isEmpty ? "." : rel
        guard x.kind == y.kind else {
            out.append("\(p): kind differs: a=\(kindName(x.kind)) b=\(kindName(y.kind))")
            continue
        }
        if x.kind == .file {
            if x.size != y.size {
                out.append("\(p): size differs: a=\(x.size) b=\(y.size)")
            } else {
                let ha = (try? xxh128(path: a + "/" + rel))?.hex ?? "unreadable"
                let hb = (try? xxh128(path: b + "/" + rel))?.hex ?? "unreadable"
                if ha != hb || ha == "unreadable" { out.append("\(p): content differs: xxh128 a=\(ha) b=\(hb)") }
            }
        }
        if x.kind == .other && x.special != y.special {
            out.append("\(p): special file differs: a=\(x.special) b=\(y.special)")
        }
        if x.kind == .symlink && x.linkTarget != y.linkTarget {
            out.append("\(p): symlink target differs: a=\(x.linkTarget ?? "?") b=\(y.linkTarget ?? "?")")
        }
        // A symlink's mode bits are always 0777 on Linux and cannot be changed.
        if x.mode != y.mode {
            out.append("\(p): mode differs: a=0\(String(x.mode, radix: 8)) b=0\(String(y.mode, radix: 8))")
        }
        if x.uid != y.uid || x.gid != y.gid {
            out.append("\(p): owner differs: a=\(x.uid):\(x.gid) b=\(y.uid):\(y.gid)")
        }
        if x.id != y.id {
            out.append("\(p): id xattr differs: a=\(x.id) b=\(y.id)")
        }
    }
    return out.sorted()
}

// MARK: - Comparing journals

private struct JournalEntry: Equatable {
    var id: UInt64
    var kind: EntryKind
    var size: Int64
    var hash: [UInt8]?
}

private func hexID(_ id: UInt64) -> String { "0x" + String(id, radix: 16) }
private func hexHash(_ h: [UInt8]?) -> String { h.map { $0.map { String(format: "%02x", $0) }.joined() } ?? "none" }

/// Every entry reachable from the root by path ("" is the root), walking `children(of:)`.
private func walkJournal(_ j: Journal, problems: inout [String], side: String) throws -> [String: JournalEntry] {
    var out: [String: JournalEntry] = [:]
    var visited: Set<UInt64> = []
    var stack: [(String, UInt64)] = [("", StableID.root)]
    while let (rel, id) = stack.popLast() {
        guard let r = try j.inode(id) else {
            problems.append("\(rel.isEmpty ? "." : rel): journal \(side) has a name for \(hexID(id)) but no inode row")
            continue
        }
        out[rel] = JournalEntry(id: id, kind: r.kind, size: r.kind == .directory ? 0 : r.size, hash: r.hash)
        guard r.kind == .directory, visited.insert(id).inserted else { continue }
        for (name, child) in try j.children(of: id) {
            stack.append((rel.isEmpty ? name : rel + "/" + name, child))
        }
    }
    return out
}

/// The differences between two journals (empty when they agree): for every entry reachable
/// from the root, path, stable id, kind, size (files and symlinks) and hash; and every inode
/// either journal marks dirty. Both are opened read-only (safe beside running nodes; call
/// `syncJournal()` on a mounted node first for its latest state).
func compareJournals(_ a: String, _ b: String) throws -> [String] {
    let ja = try Journal(readOnlyPath: a)
    let jb = try Journal(readOnlyPath: b)
    var out: [String] = []
    let ea = try walkJournal(ja, problems: &out, side: "a")
    let eb = try walkJournal(jb, problems: &out, side: "b")
    for (side, j) in [("a", ja), ("b", jb)] {
        for id in try j.dirtyInodes() {
            let p = try j.path(of: id).map { $0.isEmpty ? "." : $0 } ?? "<unreachable>"
            out.append("\(p): dirty in journal \(side) (id \(hexID(id)))")
        }
    }
    for rel in Set(ea.keys).union(eb.keys) {
        let p = rel.isEmpty ? "." : rel
        switch (ea[rel], eb[rel]) {
        case let (x?, nil):
            out.append("\(p): only in journal a (\(kindName(x.kind)) \(hexID(x.id)))")
        case let (nil, y?):
            out.append("\(p): only in journal b (\(kindName(y.kind)) \(hexID(y.id)))")
        case let (x?, y?):
            if x.id != y.id { out.append("\(p): id differs: a=\(hexID(x.id)) b=\(hexID(y.id))") }
            if x.kind != y.kind {
                out.append("\(p): kind differs: a=\(kindName(x.kind)) b=\(kindName(y.kind))")
                continue
            }
            if x.size != y.size { out.append("\(p): size differs: a=\(x.size) b=\(y.size)") }
            if x.hash != y.hash { out.append("\(p): hash differs: a=\(hexHash(x.hash)) b=\(hexHash(y.hash))") }
        case (nil, nil):
            break
        }
    }
    return out.sorted()
}
