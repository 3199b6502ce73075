import Fixity
import Foundation
import Glibc
import Journal
import TwinConfig
import TwinCore
import TestSupport
import XCTest

/// Test support: real node processes, real FUSE mounts, bounded waits, and cleanup that
/// never leaves a mount behind, even when a test fails or the node hangs.
enum TestEnv {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static var binary: String {
        ProcessInfo.processInfo.environment["TWINFS_BIN"] ?? repoRoot + "/.build/debug/twinfs"
    }
    /// Every test directory lives under this prefix (on disk, not tmpfs), so CI can sweep it.
    static let prefix = "/var/tmp/twinfs-test"

    static func requireFuse() throws {
        guard getuid() == 0 else { throw XCTSkip("FUSE integration tests need root") }
        guard access("/dev/fuse", R_OK | W_OK) == 0 else { throw XCTSkip("/dev/fuse is not available") }
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw XCTSkip("twinfs binary not built at \(binary) (run `swift build` first)")
        }
    }
}

@discardableResult
func sh(_ script: String, timeout: Int = 120) -> CommandResult {
    runCommand(["/bin/bash", "-c", script], timeout: timeout)
}

/// Mount points of this mount namespace.
func mountPoints() -> [String: String] {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [:] }
    var out: [String: String] = [:]
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        if f.count > 4 { out[String(f[4])] = String(f[2]) }
    }
    return out
}

/// The kernel's mount id of the mount at `path` (new for every mount, unlike the device minor).
func mountID(_ path: String) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        if f.count > 4, f[4] == path { return String(f[0]) }
    }
    return nil
}

/// True when a TwinFS FUSE filesystem is mounted at `path`.
func isTwinFSMount(_ path: String) -> Bool {
    let text = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").contains { line in
        let f = line.split(separator: " ")
        return f.count > 2 && f[1] == path && f[2] == "fuse.twinfs"
    }
}

/// Aborts the FUSE connection of a mount: frees anything blocked on it (ENOTCONN).
func abortFuseConnection(_ mountpoint: String) {
    guard let dev = mountPoints()[mountpoint], let minor = dev.split(separator: ":").last else { return }
    if !FileManager.default.fileExists(atPath: "/sys/fs/fuse/connections/\(minor)") {
        runCommand(["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"], timeout: 10)
    }
    let fd = open("/sys/fs/fuse/connections/\(minor)/abort", O_WRONLY)
    if fd >= 0 {
        _ = write(fd, "1", 1)
        close(fd)
    }
}

/// One TwinFS node run as a child process over a fresh brick, with its own mount.
final class TestNode: @unchecked Sendable {
    let name: String
    let volume: String
    let dir: String
    var brick: String { dir + "/brick" }
    var mnt: String { dir + "/mnt" }
    var state: String { dir + "/state" }
    var journalPath: String { state + "/journal.db" }
    var configPath: String { dir + "/\(name).toml" }
    var logPath: String { state + "/node-\(name).log" }
    private(set) var process: Child?
    private var watchdog: Thread?
    private let watchdogDeadline = Locked<Date?>(nil)

    init(name: String = "a", volume: String = "test", extraConfig: String = "", listen: String = "127.0.0.1:7780") throws {
        try TestEnv.requireFuse()
        self.name = name
        self.volume = volume
        dir = TestEnv.prefix + "/" + UUID().uuidString.prefix(8).lowercased()
        for d in [brick, mnt, state] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        let cfg = NodeConfig.render(volume: volume, node: name, brick: brick, journal: journalPath, mountpoint: mnt,
                                    controlSocket: state + "/control.sock", listen: listen) + extraConfig
        try cfg.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    var isMounted: Bool { mountPoints()[mnt] != nil }

    /// Starts the node and waits (bounded) until its mount is up.
    func start(file: StaticString = #filePath, line: UInt = #line) throws {
        // A dead mount may sit there already (after kill -9): wait for a new one.
        let before = mountID(mnt)
        let p = try Child([TestEnv.binary, "node", "--config", configPath], stdout: logPath, stderr: logPath)
        process = p
        let deadline = Date().addingTimeInterval(60)
        // (Mount ids are reused at once, so when one was there, wait for the node to answer.)
        while before == nil ? !isMounted
                : runCommand([TestEnv.binary, "status", "--config", configPath], timeout: 10).status != 0 {
            if !p.isRunning {
                XCTFail("node exited with \(p.wait()) before mounting; log:\n\(log)", file: file, line: line)
                throw CocoaError(.fileNoSuchFile)
            }
            if Date() > deadline {
                XCTFail("node did not mount within 60 s; log:\n\(log)", file: file, line: line)
                throw CocoaError(.fileNoSuchFile)
            }
            usleep(20_000)
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGTERM and wait: the node finishes requests, unmounts and exits 0.
    @discardableResult
    func stop(timeout: TimeInterval = 30) -> Int32? {
        guard let p = process else { return nil }
        if p.isRunning { kill(p.pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            abortFuseConnection(mnt)
            kill(p.pid, SIGKILL)
        }
        let status = p.wait()
        process = nil
        if isMounted { runCommand(["umount", "-l", mnt], timeout: 10) }
        return status
    }

    /// A crash: SIGKILL, then (unless told not to) detach the dead mount as an admin would.
    func kill9(detach: Bool = true) {
        guard let p = process else { return }
        kill(p.pid, SIGKILL)
        p.wait()
        process = nil
        if detach && isMounted {
            abortFuseConnection(mnt)
            runCommand(["umount", "-l", mnt], timeout: 10)
        }
    }

    /// Aborts the FUSE connection if the test is still running after `seconds`, so a hung
    /// request can never hang the test runner.
    func armWatchdog(seconds: TimeInterval) {
        watchdogDeadline.with { $0 = Date().addingTimeInterval(seconds) }
        guard watchdog == nil else { return }
        let t = Thread { [weak self] in
            while let s = self {
                if let d = s.watchdogDeadline.with({ $0 }), Date() > d, s.isMounted {
                    abortFuseConnection(s.mnt)
                    return
                }
                if s.process == nil && !s.isMounted { return }
                usleep(200_000)
            }
        }
        watchdog = t
        t.start()
    }

    func destroy() {
        stop()
        if isMounted { abortFuseConnection(mnt); runCommand(["umount", "-l", mnt], timeout: 10) }
        if dir.hasPrefix(TestEnv.prefix + "/") && !isMounted {
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    func twinfs(_ args: [String], timeout: Int = 300) -> CommandResult {
        runCommand([TestEnv.binary] + args, timeout: timeout)
    }

    func statusJSON() throws -> [String: Any] {
        let r = twinfs(["status", "--config", configPath, "--json"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
    }

    /// fsync on the mount's root directory: the node commits every queued journal op.
    func syncJournal() {
        let fd = open(mnt, O_RDONLY | O_DIRECTORY)
        if fd >= 0 {
            XCTAssertEqual(fsync(fd), 0, "fsync of a directory through the mount")
            close(fd)
        }
    }

    /// The journal's record of a brick-relative path (read-only open, safe beside the node),
    /// after the node committed everything queued.
    func journalRecord(_ rel: String) throws -> InodeRecord? {
        if isMounted { syncJournal() }
        let j = try Journal(readOnlyPath: journalPath)
        guard let id = try j.id(atPath: rel) else { return nil }
        return try j.inode(id)
    }
}

extension XCTestCase {
    /// A started node that is stopped and removed when the test ends, pass or fail.
    func startedNode(name: String = "a", watchdog: TimeInterval = 600) throws -> TestNode {
        let n = try TestNode(name: name)
        addTeardownBlock { n.destroy() }
        try n.start()
        n.armWatchdog(seconds: watchdog)
        return n
    }
}

/// XXH3-128 of a file's bytes, read with plain POSIX calls.
func xxh128(path: String) throws -> XXH128Digest {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw FSError.last }
    defer { close(fd) }
    return try XXH128Hasher.hash(fd: fd).0
}

/// Deterministic pseudo-random bytes (a test must be reproducible).
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        var v = x
        for _ in 0..<8 where i < count {
            out[i] = UInt8(truncatingIfNeeded: v)
            v >>= 8
            i += 1
        }
    }
    return out
}

func writeFile(_ path: String, _ bytes: [UInt8], flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC, fsync doSync: Bool = false) throws {
    let fd = open(path, flags, 0o644)
    guard fd >= 0 else { throw FSError.last }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        guard n > 0 else { throw FSError.last }
        done += n
    }
    if doSync { guard fsync(fd) == 0 else { throw FSError.last } }
}

func readFile(_ path: String) throws -> [UInt8] {
    guard let d = FileManager.default.contents(atPath: path) else { throw FSError.notFound }
    return [UInt8](d)
}

/// A recursive listing with sizes and mtimes: "nothing changed on disk" compares two of these.
func snapshot(_ root: String) -> [String] {
    var out: [String] = []
    guard let e = FileManager.default.enumerator(atPath: root) else { return [] }
    while let rel = e.nextObject() as? String {
        var st = stat()
        guard lstat(root + "/" + rel, &st) == 0 else { continue }
        out.append("\(rel) \(st.st_mode) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)")
    }
    return out.sorted()
}
