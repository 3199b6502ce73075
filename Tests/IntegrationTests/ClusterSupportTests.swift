import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import TwinConfig
import TwinCore
import TestSupport
import XCTest

/// Self-tests of the two-node test support: the relay (against a small echo server), the
/// brick and journal comparisons (on hand-built trees) and a pair of nodes with [peer] sections.
final class ClusterSupportTests: XCTestCase {

    // MARK: - Relay

    func testRelayPassForwardsBothWaysAndHalfClose() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try Relay(targetPort: echo.port)
        defer { relay.stop() }
        XCTAssertNotEqual(relay.port, echo.port)

        let fd = try connectLoopback(relay.port)
        defer { close(fd) }
        try sendAll(fd, Array("hello".utf8))
        XCTAssertEqual(readExactly(fd, 5, timeout: 5).map { String(decoding: $0, as: UTF8.self) }, "hello")

        // Bulk: a writer thread sends while this thread reads the echo back.
        let total = 64 << 20
        let payload = pseudoRandomBytes(1 << 20, seed: 7)
        let started = Date()
        let writer = Thread {
            for _ in 0..<(total >> 20) { try? sendAll(fd, payload) }
        }
        writer.start()
        let h = XXH128Hasher()
        var got = 0
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while got < total {
            guard waitReadable(fd, timeout: 10) else { XCTFail("echo stalled after \(got) bytes"); return }
            let n = read(fd, &buf, min(buf.count, total - got))
            guard n > 0 else { XCTFail("read returned \(n) after \(got) bytes (\(FSError.last))"); return }
            buf.withUnsafeBytes { h.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            got += n
        }
        let secs = Date().timeIntervalSince(started)
        let expected = XXH128Hasher()
        for _ in 0..<(total >> 20) { expected.update(payload) }
        XCTAssertEqual(h.digest(), expected.digest())
        let mbps = Double(total) / 1_048_576 / secs
        print("relay echo: \(total >> 20) MiB each way in \(String(format: "%.2f", secs)) s (\(Int(mbps)) MiB/s each way)")
        // The relay counts a chunk after its write returns, so the echo can reach us first.
        XCTAssertTrue(pollUntil(5) { relay.forwardedBytes >= Int64(2 * total) },
                      "relay forwarded \(relay.forwardedBytes) of \(2 * total) bytes")

        // Half-close: our FIN reaches the echo server, which closes; its FIN reaches us.
        shutdown(fd, Int32(SHUT_WR))
        XCTAssertEqual(readOutcome(fd, timeout: 5), .eof)
        XCTAssertTrue(pollUntil(5) { relay.openConnections == 0 }, "relay kept a finished connection")
    }

    func testRelayResetResetsOpenAndNewConnections() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try Relay(targetPort: echo.port)
        defer { relay.stop() }
        let fd = try connectLoopback(relay.port)
        defer { close(fd) }
        try sendAll(fd, [1, 2, 3])
        XCTAssertEqual(readExactly(fd, 3, timeout: 5), [1, 2, 3])

        relay.set(.reset)
        XCTAssertEqual(readOutcome(fd, timeout: 5), .reset, "an open connection is reset")
        XCTAssertTrue(pollUntil(5) { echo.openConnections == 0 }, "the upstream side is reset too")

        // A new connection is accepted, then reset at once.
        let fd2 = try connectLoopback(relay.port)
        defer { close(fd2) }
        XCTAssertEqual(readOutcome(fd2, timeout: 5), .reset)
        XCTAssertEqual(echo.acceptedConnections, 1, "nothing reaches the target while reset")

        relay.set(.pass)
        let fd3 = try connectLoopback(relay.port)
        defer { close(fd3) }
        try sendAll(fd3, [9])
        XCTAssertEqual(readExactly(fd3, 1, timeout: 5), [9])
        XCTAssertEqual(echo.acceptedConnections, 2)
    }

    /// An echo server behind a relay, and one connection through it that has carried a byte
    /// both ways; all three are closed when the test ends.
    fileprivate func echoBehindRelay() throws -> (EchoServer, Relay, Int32) {
        let echo = try EchoServer()
        let relay = try Relay(targetPort: echo.port)
        let fd = try connectLoopback(relay.port)
        addTeardownBlock {
            close(fd)
            relay.stop()
            echo.stop()
        }
        try sendAll(fd, [1])
        XCTAssertEqual(readExactly(fd, 1, timeout: 5), [1])
        return (echo, relay, fd)
    }

    func testRelayBlackholeHoldsSilentlyAndRestoreClosesItsConnections() throws {
        let (echo, relay, fd) = try echoBehindRelay()

        relay.set(.blackhole)
        let forwarded = relay.forwardedBytes
        try sendAll(fd, [2, 3])
        XCTAssertEqual(readOutcome(fd, timeout: 0.5), .timeout, "nothing comes back and nothing closes")
        // A new connection is accepted but never reaches the target.
        let fd2 = try connectLoopback(relay.port)
        defer { close(fd2) }
        try sendAll(fd2, [4])
        XCTAssertEqual(readOutcome(fd2, timeout: 0.5), .timeout)
        XCTAssertEqual(echo.acceptedConnections, 1)
        XCTAssertEqual(echo.openConnections, 1, "the old upstream connection stays open")
        XCTAssertEqual(relay.forwardedBytes, forwarded)
        XCTAssertEqual(relay.openConnections, 2)

        // Back to pass: connections of the blackhole period are closed, new ones work.
        relay.set(.pass)
        XCTAssertEqual(readOutcome(fd, timeout: 5), .reset)
        XCTAssertEqual(readOutcome(fd2, timeout: 5), .reset)
        XCTAssertTrue(pollUntil(5) { echo.openConnections == 0 })
        XCTAssertTrue(echo.receivedBytes == 1, "bytes sent during the blackhole were never delivered")
        let fd3 = try connectLoopback(relay.port)
        defer { close(fd3) }
        try sendAll(fd3, [5, 6])
        XCTAssertEqual(readExactly(fd3, 2, timeout: 5), [5, 6])
    }

    func testRelayAnswersLostDeliversRequestsButReturnsNothing() throws {
        let (echo, relay, fd) = try echoBehindRelay()

        relay.set(.answersLost)
        try sendAll(fd, [2, 3])
        XCTAssertTrue(pollUntil(5) { echo.receivedBytes == 3 }, "the request reaches the target")
        XCTAssertEqual(readOutcome(fd, timeout: 0.5), .timeout, "its answer never comes back")
        // A new connection reaches the target too, and hears nothing either.
        let fd2 = try connectLoopback(relay.port)
        defer { close(fd2) }
        try sendAll(fd2, [4])
        XCTAssertTrue(pollUntil(5) { echo.receivedBytes == 4 })
        XCTAssertEqual(readOutcome(fd2, timeout: 0.5), .timeout)

        // Back to pass: connections of the period are closed, new ones work both ways.
        relay.set(.pass)
        XCTAssertEqual(readOutcome(fd, timeout: 5), .reset)
        XCTAssertEqual(readOutcome(fd2, timeout: 5), .reset)
        let fd3 = try connectLoopback(relay.port)
        defer { close(fd3) }
        try sendAll(fd3, [5, 6])
        XCTAssertEqual(readExactly(fd3, 2, timeout: 5), [5, 6])
    }

    func testRelayCutsUnderLoadEndPromptly() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try Relay(targetPort: echo.port)
        defer { relay.stop() }
        for mode in [Relay.Mode.blackhole, .reset] {
            let fd = try connectLoopback(relay.port)
            defer { close(fd) }
            let done = DispatchGroup()
            let payload = pseudoRandomBytes(1 << 20, seed: 3)
            done.enter()
            Thread {
                while (try? sendAll(fd, payload)) != nil {}
                done.leave()
            }.start()
            done.enter()
            Thread {
                var buf = [UInt8](repeating: 0, count: 1 << 20)
                while read(fd, &buf, buf.count) > 0 {}
                done.leave()
            }.start()
            XCTAssertTrue(pollUntil(5) { relay.forwardedBytes > 8 << 20 }, "traffic flows")
            relay.set(mode)
            let frozen = relay.forwardedBytes
            usleep(200_000)
            XCTAssertEqual(relay.forwardedBytes, frozen, "\(mode): nothing forwarded after set returns")
            relay.set(.pass)
            XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "\(mode): the cut connection ends once restored")
        }
        let fd = try connectLoopback(relay.port)
        defer { close(fd) }
        try sendAll(fd, [42])
        XCTAssertEqual(readExactly(fd, 1, timeout: 5), [42])
    }

    func testRelayResetsClientWhenTargetIsDown() throws {
        let relay = try Relay(targetPort: freeLoopbackPort())
        defer { relay.stop() }
        let fd = try connectLoopback(relay.port)
        defer { close(fd) }
        XCTAssertEqual(readOutcome(fd, timeout: 5), .reset)
    }

    func testRelayStopClosesEverythingPromptly() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try Relay(targetPort: echo.port)
        let fd = try connectLoopback(relay.port)
        defer { close(fd) }
        try sendAll(fd, [1])
        XCTAssertEqual(readExactly(fd, 1, timeout: 5), [1])
        relay.set(.blackhole)
        let fd2 = try connectLoopback(relay.port)
        defer { close(fd2) }
        XCTAssertTrue(pollUntil(5) { relay.openConnections == 2 })
        let started = Date()
        relay.stop()
        relay.stop()
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        XCTAssertEqual(readOutcome(fd, timeout: 5), .reset)
        XCTAssertEqual(readOutcome(fd2, timeout: 5), .reset)
        // The port is closed now.
        XCTAssertThrowsError(try connectLoopback(relay.port))
    }

    func testFreeLoopbackPortIsBindable() throws {
        let p = freeLoopbackPort()
        XCTAssertGreaterThan(p, 0)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(p)).bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(rc, 0)
    }

    // MARK: - compareBricks

    /// Two identical hand-built trees with ids, under TestEnv.prefix; removed at teardown.
    private func twinTrees() throws -> (String, String) {
        guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
        let base = TestEnv.prefix + "/cmp-" + UUID().uuidString.prefix(8).lowercased()
        addTeardownBlock { runCommand(["/bin/rm", "-rf", base], timeout: 60) }
        var nextID: UInt64 = 1
        for side in ["a", "b"] {
            let r = base + "/" + side
            nextID = 1
            for d in ["", "/.twinfs", "/dir", "/dir/sub", "/gone", "/gone/x"] {
                try FileManager.default.createDirectory(atPath: r + d, withIntermediateDirectories: true)
            }
            // Private metadata differs freely between the nodes.
            try writeFile(r + "/.twinfs/brick.json", Array("{\"node\":\"\(side)\"}".utf8))
            try writeFile(r + "/file", pseudoRandomBytes(100_000, seed: 1))
            try writeFile(r + "/same-size", pseudoRandomBytes(4096, seed: 2))
            try writeFile(r + "/grows", pseudoRandomBytes(10, seed: 3))
            try writeFile(r + "/dir/sub/deep", pseudoRandomBytes(1, seed: 4))
            try writeFile(r + "/dir/mode", [])
            try writeFile(r + "/dir/owner", [])
            try writeFile(r + "/dir/reid", [])
            try writeFile(r + "/dir/missing", [])
            try writeFile(r + "/gone/x/y", [])
            try writeFile(r + "/kind", [])
            XCTAssertEqual(symlink("dir/sub/deep", r + "/link"), 0)
            XCTAssertEqual(symlink("/nowhere", r + "/dangling"), 0)
            chmod(r + "/dir/mode", 0o644)
            for rel in ["", "dir", "dir/sub", "gone", "gone/x", "file", "same-size", "grows", "dir/sub/deep",
                        "dir/mode", "dir/owner", "dir/reid", "dir/missing", "gone/x/y", "kind", "link", "dangling"] {
                try setID(rel.isEmpty ? r : r + "/" + rel, nextID)
                nextID += 1
            }
        }
        return (base + "/a", base + "/b")
    }

    private func setID(_ path: String, _ id: UInt64) throws {
        var v = id.littleEndian
        guard twin_lsetxattr(path, "trusted.twinfs.id", &v, 8, 0) == 0 else {
            let e = FSError.last
            if e.errno == ENOTSUP { throw XCTSkip("no trusted xattrs on \(path)'s filesystem") }
            throw e
        }
    }

    func testCompareBricksIdenticalTreesGiveNothing() throws {
        let (a, b) = try twinTrees()
        XCTAssertEqual(compareBricks(a, b), [])
        XCTAssertEqual(compareBricks(a, a), [])
        // A different .twinfs area is not a difference.
        try writeFile(b + "/.twinfs/extra", [1, 2, 3])
        XCTAssertEqual(compareBricks(a, b), [])
    }

    func testCompareBricksReportsEachDifference() throws {
        let (a, b) = try twinTrees()
        // Missing on b: one file, and a directory with its subtree (one line for the subtree).
        unlink(b + "/dir/missing")
        try FileManager.default.removeItem(atPath: b + "/gone")
        // Only on b.
        try writeFile(b + "/extra", [1])
        // Same size, other bytes.
        try writeFile(b + "/same-size", pseudoRandomBytes(4096, seed: 99))
        // Other size.
        try writeFile(b + "/grows", pseudoRandomBytes(11, seed: 3))
        chmod(b + "/dir/mode", 0o600)
        XCTAssertEqual(lchown(b + "/dir/owner", 1234, 5678), 0)
        try setID(b + "/dir/reid", 0x0200_0000_0000_0042)
        unlink(b + "/link")
        XCTAssertEqual(symlink("dir/sub", b + "/link"), 0)
        try setID(b + "/link", 16)  // same id as on a: only the target differs
        // A symlink's own id is compared, not its target's.
        try setID(b + "/dangling", 0x99)
        unlink(b + "/kind")
        mkdir(b + "/kind", 0o755)
        try setID(b + "/kind", 15)
        // A missing id.
        XCTAssertEqual(twin_lremovexattr(b + "/dir/sub/deep", "trusted.twinfs.id"), 0)
        // The root's mode.
        chmod(b, 0o700)

        let hashA = try xxh128(path: a + "/same-size").hex
        let hashB = try xxh128(path: b + "/same-size").hex
        let diffs = compareBricks(a, b)
        let expected = [
            ".: mode differs: a=0755 b=0700",
            "dangling: id xattr differs: a=0x11 b=0x99",
            "dir/missing: only in a (file)",
            "dir/mode: mode differs: a=0644 b=0600",
            "dir/owner: owner differs: a=0:0 b=1234:5678",
            "dir/reid: id xattr differs: a=0xc b=0x200000000000042",
            "dir/sub/deep: id xattr differs: a=0x9 b=none",
            "extra: only in b (file)",
            "gone: only in a (directory, 2 entries beneath)",
            "grows: size differs: a=10 b=11",
            "kind: kind differs: a=file b=directory",
            "link: symlink target differs: a=dir/sub/deep b=dir/sub",
            "same-size: content differs: xxh128 a=\(hashA) b=\(hashB)",
        ]
        XCTAssertEqual(diffs, expected, "\n" + diffs.joined(separator: "\n"))
        // Symmetric.
        XCTAssertEqual(compareBricks(b, a).count, expected.count)
    }

    func testCompareBricksScalesToThousands() throws {
        let (a, b) = try twinTrees()
        let t0 = Date()
        for d in 0..<5 {
            let dir = a + "/many/\(d)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for f in 0..<1000 { try writeFile(dir + "/\(f)", Array("\(d)/\(f)".utf8)) }
        }
        XCTAssertEqual(runCommand(["/bin/cp", "-a", a + "/many", b + "/many"]).status, 0)
        print("created 2 x 5000 files in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        try writeFile(b + "/many/3/300", Array("changed".utf8))
        let started = Date()
        let diffs = compareBricks(a, b)
        let secs = Date().timeIntervalSince(started)
        print("compareBricks: 2 x 5000 files in \(String(format: "%.2f", secs)) s")
        XCTAssertEqual(diffs, ["many/3/300: size differs: a=5 b=7"])
    }

    // MARK: - compareJournals

    private func record(_ id: UInt64, _ kind: EntryKind, size: Int64 = 0, hash: [UInt8]? = nil, dirty: Bool = false) -> InodeRecord {
        InodeRecord(id: id, kind: kind, size: size, mode: kind == .directory ? 0o40755 : 0o100644, uid: 0, gid: 0,
                    mtimeNs: 0, ctimeNs: 0, hash: hash, dirty: dirty)
    }

    /// A journal at `path` holding: /, dir/, dir/f (5 bytes), g (3 bytes), link -> f; then `extra`.
    private func makeJournal(_ path: String, node: String, extra: [JournalOp] = []) throws {
        let j = try Journal(path: path, identity: VolumeIdentity(volume: "v", node: node), create: true)
        defer { j.close(cleanShutdown: true) }
        try j.submit([.insertInode(record(1, .directory)),
                      .insertInode(record(10, .directory)), .link(parent: 1, name: "dir", id: 10),
                      .insertInode(record(11, .file, size: 5, hash: [1, 2])), .link(parent: 10, name: "f", id: 11),
                      .insertInode(record(12, .file, size: 3, hash: [3, 4])), .link(parent: 1, name: "g", id: 12),
                      .insertInode(record(13, .symlink, size: 1, hash: [5])), .link(parent: 1, name: "link", id: 13)]
                     + extra, durable: true)
    }

    private func journalDir() throws -> String {
        let d = TestEnv.prefix + "/jcmp-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func testCompareJournalsIdenticalGiveNothing() throws {
        let d = try journalDir()
        try makeJournal(d + "/a.db", node: "a")
        try makeJournal(d + "/b.db", node: "b")
        XCTAssertEqual(try compareJournals(d + "/a.db", d + "/b.db"), [])
    }

    func testCompareJournalsReportsEachDifference() throws {
        let d = try journalDir()
        try makeJournal(d + "/a.db", node: "a", extra: [
            .insertInode(record(20, .file, size: 1, hash: [9])), .link(parent: 10, name: "only-a", id: 20),
        ])
        try makeJournal(d + "/b.db", node: "b", extra: [
            // Other content of g, other id for link, dir/f dirty, a file only in b.
            .putAttributes(record(12, .file, size: 4)),
            .setContent(id: 12, size: 4, hash: [7, 7], mtimeNs: 0, ctimeNs: 0),
            .unlink(parent: 1, name: "link"),
            .insertInode(record(14, .symlink, size: 1, hash: [5])), .link(parent: 1, name: "link", id: 14),
            .markDirty(id: 11),
            .insertInode(record(21, .directory)), .link(parent: 1, name: "only-b", id: 21),
        ])
        let diffs = try compareJournals(d + "/a.db", d + "/b.db")
        let expected = [
            "dir/f: dirty in journal b (id 0xb)",
            "dir/only-a: only in journal a (file 0x14)",
            "g: hash differs: a=0304 b=0707",
            "g: size differs: a=3 b=4",
            "link: id differs: a=0xd b=0xe",
            "only-b: only in journal b (directory 0x15)",
        ]
        XCTAssertEqual(diffs, expected, "\n" + diffs.joined(separator: "\n"))
    }

    // MARK: - A pair of nodes

    func testClusterStartsMountsAndStopsCleanly() throws {
        let c = try startedCluster(watchdog: 120)
        XCTAssertNotEqual(c.a.dir, c.b.dir)
        for n in c.nodes {
            XCTAssertTrue(isTwinFSMount(n.mnt), "\(n.name) mounted")
            let cfg = try String(contentsOfFile: n.configPath, encoding: .utf8)
            XCTAssertTrue(cfg.contains("[peer]"), cfg)
        }
        XCTAssertTrue(try String(contentsOfFile: c.a.configPath, encoding: .utf8)
            .contains("address = \"127.0.0.1:\(c.relayToB.port)\""))
        XCTAssertTrue(try String(contentsOfFile: c.b.configPath, encoding: .utf8)
            .contains("listen = \"127.0.0.1:\(c.listenPortB)\""))
        XCTAssertEqual(c.relayToB.targetPort, c.listenPortB)
        XCTAssertEqual(c.relayToA.targetPort, c.listenPortA)
        var st = stat()
        XCTAssertEqual(stat(c.secretPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(try c.a.statusJSON()["peer"] as? String, "b")
        XCTAssertEqual(try c.b.statusJSON()["peer"] as? String, "a")

        // The peer links run through the relays (each node dials the other's relay).
        XCTAssertTrue(pollUntil(60) { c.relayToA.acceptedConnections > 0 && c.relayToB.acceptedConnections > 0 },
                      "peer connections through both relays (to a: \(c.relayToA.acceptedConnections), to b: \(c.relayToB.acceptedConnections))")
        print("cluster states: a=\(try c.a.statusJSON()["state"] ?? "?") b=\(try c.b.statusJSON()["state"] ?? "?")")

        // Each node serves its own mount (replication is not asserted here).
        try writeFile(c.a.mnt + "/hello", Array("a".utf8))
        XCTAssertEqual(try readFile(c.a.mnt + "/hello"), Array("a".utf8))

        c.cut(.blackhole)
        c.cut(.reset)
        c.restore()

        let (sa, sb) = c.stop()
        XCTAssertEqual(sa, 0, c.a.log)
        XCTAssertEqual(sb, 0, c.b.log)
        XCTAssertFalse(c.a.isMounted)
        XCTAssertFalse(c.b.isMounted)
        c.destroy()
        c.destroy()
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.dir))
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.a.dir))
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.b.dir))
    }

    func testClusterCarriesExtraConfig() throws {
        let c = try TestCluster(extraConfig: "attr_timeout = 0.5", peerExtra: "timeout = 1.5")
        defer { c.destroy() }
        for (n, peer, relay) in [(c.a, "b", c.relayToB), (c.b, "a", c.relayToA)] {
            let text = try String(contentsOfFile: n.configPath, encoding: .utf8)
            let cfg: NodeConfig
            do { cfg = try NodeConfig.load(path: n.configPath) } catch {
                XCTFail("\(error)\n\(text)"); continue
            }
            XCTAssertEqual(cfg.node, n.name)
            XCTAssertEqual(cfg.attrTimeout, 0.5)
            XCTAssertEqual(cfg.listen, "127.0.0.1:\(n === c.a ? c.listenPortA : c.listenPortB)")
            XCTAssertEqual(cfg.peer?.node, peer)
            XCTAssertEqual(cfg.peer?.address, "127.0.0.1:\(relay.port)")
            XCTAssertEqual(cfg.peer?.secretFile, c.secretPath)
            XCTAssertEqual(cfg.peer?.timeout, 1.5, text)
        }
    }
}

// MARK: - Socket helpers for the relay tests

private enum ReadOutcome: Equatable {
    case data, eof, reset, timeout, error
}

private func connectLoopback(_ port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw FSError.last }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port)).bigEndian
    addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let e = FSError.last
        close(fd)
        throw e
    }
    return fd
}

private func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw FSError.last }
        done += n
    }
}

private func waitReadable(_ fd: Int32, timeout: TimeInterval) -> Bool {
    var p = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
    return poll(&p, 1, Int32(timeout * 1000)) > 0
}

/// Exactly `count` bytes within `timeout`, or nil.
private func readExactly(_ fd: Int32, _ count: Int, timeout: TimeInterval) -> [UInt8]? {
    let deadline = Date().addingTimeInterval(timeout)
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: max(count, 1))
    while out.count < count {
        let left = deadline.timeIntervalSinceNow
        guard left > 0, waitReadable(fd, timeout: left) else { return nil }
        let n = read(fd, &buf, count - out.count)
        guard n > 0 else { return nil }
        out += buf[0..<n]
    }
    return out
}

/// What the next read on `fd` sees within `timeout`.
private func readOutcome(_ fd: Int32, timeout: TimeInterval) -> ReadOutcome {
    guard waitReadable(fd, timeout: timeout) else { return .timeout }
    var b = [UInt8](repeating: 0, count: 4096)
    let n = read(fd, &b, b.count)
    if n > 0 { return .data }
    if n == 0 { return .eof }
    return errno == ECONNRESET ? .reset : .error
}

private func pollUntil(_ seconds: TimeInterval, _ cond: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !cond() {
        if Date() > deadline { return false }
        usleep(10_000)
    }
    return true
}

/// A TCP echo server on 127.0.0.1 (one thread per connection, blocking I/O with short
/// poll timeouts so stop() is prompt).
private final class EchoServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let state = Locked((stopped: false, accepted: 0, open: 0, received: 0))
    private let group = DispatchGroup()

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FSError.last }
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 64) == 0 else { let e = FSError.last; close(fd); throw e }
        var a = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = Int(UInt16(bigEndian: a.sin_port))
        group.enter()
        Thread { [self] in acceptLoop(); group.leave() }.start()
    }

    var acceptedConnections: Int { state.with { $0.accepted } }
    var openConnections: Int { state.with { $0.open } }
    var receivedBytes: Int { state.with { $0.received } }

    private var stopped: Bool { state.with { $0.stopped } }

    private func acceptLoop() {
        while !stopped {
            guard waitReadable(fd, timeout: 0.1) else { continue }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { continue }
            state.with { $0.accepted += 1; $0.open += 1 }
            group.enter()
            Thread { [self] in serve(c); group.leave() }.start()
        }
    }

    private func serve(_ c: Int32) {
        defer {
            close(c)
            state.with { $0.open -= 1 }
        }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while !stopped {
            guard waitReadable(c, timeout: 0.1) else { continue }
            let n = read(c, &buf, buf.count)
            guard n > 0 else { return }
            state.with { $0.received += n }
            var done = 0
            while done < n {
                let w = buf.withUnsafeBytes { send(c, $0.baseAddress! + done, n - done, Int32(MSG_NOSIGNAL)) }
                guard w > 0 else { return }
                done += w
            }
        }
    }

    func stop() {
        state.with { $0.stopped = true }
        _ = group.wait(timeout: .now() + 5)
        close(fd)
    }
}
