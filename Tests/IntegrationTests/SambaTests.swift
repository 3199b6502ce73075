import CTwinShims
import Fixity
import Foundation
import Glibc
import TwinCore
import TestSupport
import XCTest

/// A real smbd (Debian `samba`) serving shares on loopback from a private directory: its own
/// port, passdb, lock and state directories, so nothing of the machine's Samba is touched.
final class SambaServer: @unchecked Sendable {
    let dir: String
    let port: Int
    let password = "twinfs-test"
    private var process: Child?
    var conf: String { dir + "/smb.conf" }

    let user: String
    var log: String { (try? String(contentsOfFile: dir + "/smbd.out", encoding: .utf8)) ?? "" }

    /// `shares`: name -> path, every share with the settings of `profile` (by default those of
    /// ctdb-like/smb.conf.example). Clients log on as the profile's user.
    init(shares: [(String, String)], profile: SambaShareProfile = .recommended) throws {
        for tool in ["smbd", "smbclient", "smbpasswd"] where runCommand(["which", tool]).status != 0 {
            throw XCTSkip("\(tool) is not installed (apt-get install samba smbclient)")
        }
        dir = TestEnv.prefix + "/samba-" + UUID().uuidString.prefix(8).lowercased()
        port = freeLoopbackPort()
        user = profile.user
        let text = try SambaConfig.render(dir: dir, port: port, shares: shares, repoRoot: TestEnv.repoRoot, profile: profile, smb1: true)
        try text.write(toFile: conf, atomically: true, encoding: .utf8)
        let pw = sh("printf '%s\\n%s\\n' '\(password)' '\(password)' | smbpasswd -c '\(conf)' -a -s \(user)")
        guard pw.status == 0 else { throw SpawnError(description: "smbpasswd failed: \(pw.stderr)") }
        // In a session of its own: smbd signals its whole process group when it stops.
        process = try Child(["setsid", "smbd", "--foreground", "--no-process-group", "-s", conf, "--debug-stdout", "-d", "1"],
                            stdout: dir + "/smbd.out", stderr: dir + "/smbd.out")
        let deadline = Date().addingTimeInterval(20)
        while !smbclient(share: shares[0].0, "ls").ok {
            guard Date() < deadline, process?.isRunning == true else {
                throw SpawnError(description: "smbd did not answer on port \(port): \((try? String(contentsOfFile: dir + "/smbd.out", encoding: .utf8)) ?? "")")
            }
            usleep(200_000)
        }
    }

    func smbclient(share: String, _ commands: String, timeout: Int = 300) -> CommandResult {
        runCommand(["smbclient", "//127.0.0.1/\(share)", "-p", "\(port)", "-U", "\(user)%\(password)", "-c", commands], timeout: timeout)
    }

    struct TortureResult {
        var failed = Set<String>(), passed = Set<String>()
        var output = ""
        var seconds = 0.0
    }

    /// Runs smbtorture `tests` against `share`: the names of the tests that passed and those
    /// that failed or erred.
    func torture(share: String, _ tests: [String]) -> TortureResult {
        let started = Date()
        let r = runCommand(["smbtorture", "//127.0.0.1/\(share)", "-p", "\(port)", "-U", "\(user)%\(password)"] + tests, timeout: 900)
        var t = TortureResult(output: r.stdout + r.stderr, seconds: Date().timeIntervalSince(started))
        for line in r.stdout.split(separator: "\n") {
            if line.hasPrefix("success: ") { t.passed.insert(String(line.dropFirst(9))) }
            if line.hasPrefix("failure: ") || line.hasPrefix("error: ") {
                t.failed.insert(String(line.split(separator: " ", maxSplits: 1)[1]).replacingOccurrences(of: " [", with: ""))
            }
        }
        // A crash or timeout with no verdict line still fails.
        if r.status != 0 && t.failed.isEmpty { t.failed.insert("\(tests.joined(separator: ",")) (exit \(r.status))") }
        return t
    }

    func stop() {
        _ = runCommand(["pkill", "-TERM", "-f", "smbd --foreground --no-process-group -s \(conf)"])
        if let p = process { _ = p.wait(timeout: 10) }
        _ = runCommand(["pkill", "-KILL", "-f", "smbd --foreground --no-process-group -s \(conf)"])
        process = nil
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// smbd on top of the TwinFS mount (real smbd, smbclient and smbtorture), as the hospital's
/// modalities and PACS servers reach it: every byte checked, on both bricks.
final class SambaTests: XCTestCase {
    func samba(_ shares: [(String, String)]) throws -> SambaServer {
        let s = try SambaServer(shares: shares)
        addTeardownBlock { s.stop() }
        return s
    }

    func testFilesFromEmptyTo64MiBUnicodeNamesAndDirectoriesOverSMBLandOnBothBricks() throws {
        let c = try cluster()
        waitHealthy(c)
        let smb = try samba([("pacs", c.a.mnt)])
        let local = smb.dir + "/files"
        try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
        let sizes = [0, 1, 4095, 65_536, 1_000_003, 20 << 20, 64 << 20]
        var cmds: [String] = ["mkdir Studies", "mkdir \"Studies/Müller^Jürgen 🩻\""]
        for (i, size) in sizes.enumerated() {
            try putFile(local + "/in\(i)", pseudoRandomBytes(size, seed: UInt64(100 + i)))
            cmds.append("put \(local)/in\(i) \"Studies/Müller^Jürgen 🩻/IM\(i) Ä.dcm\"")
        }
        for i in sizes.indices { cmds.append("get \"Studies/Müller^Jürgen 🩻/IM\(i) Ä.dcm\" \(local)/out\(i)") }
        var r = smb.smbclient(share: "pacs", cmds.joined(separator: "; "))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for (i, size) in sizes.enumerated() {
            let want = pseudoRandomBytes(size, seed: UInt64(100 + i))
            XCTAssertEqual(try readFile(local + "/out\(i)"), want, "SMB read-back of \(size) bytes")
            for n in [c.a, c.b] {
                XCTAssertEqual(try xxh128(path: n.brick + "/Studies/Müller^Jürgen 🩻/IM\(i) Ä.dcm"), XXH128Hasher.hash(want),
                               "\(size) bytes on \(n.name)'s brick")
            }
        }
        // Directories: create, rename, delete; a file renamed across directories.
        r = smb.smbclient(share: "pacs", "mkdir tmp; mkdir tmp/sub; rename tmp/sub tmp/series; put \(local)/in2 tmp/series/x.dcm; "
                          + "rename tmp/series/x.dcm Studies/x-moved.dcm; rmdir tmp/series; rmdir tmp")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for n in [c.a, c.b] {
            var st = stat()
            XCTAssertEqual(stat(n.mnt + "/tmp", &st), -1, "tmp still on \(n.name)")
            XCTAssertEqual(try readFile(n.mnt + "/Studies/x-moved.dcm"), pseudoRandomBytes(4095, seed: 102))
        }
        // A file written on the mount (as storescp or Orthanc would) read over SMB.
        try putFile(c.b.mnt + "/Studies/from-mount.dcm", pseudoRandomBytes(300_000, seed: 7))
        r = smb.smbclient(share: "pacs", "get Studies/from-mount.dcm \(local)/from-mount")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(try readFile(local + "/from-mount"), pseudoRandomBytes(300_000, seed: 7))
        // DOS attributes (user.DOSATTRIB) reached the peer's brick with the file.
        var buf = [UInt8](repeating: 0, count: 256)
        XCTAssertGreaterThan(twin_getxattr(c.b.brick + "/Studies/x-moved.dcm", "user.DOSATTRIB", &buf, buf.count), 0)
        // The same stable inode number on both nodes: with fileid:algorithm = fsname, the SMB
        // file id is the same whichever node serves the share.
        var sa = stat(), sb = stat()
        XCTAssertEqual(stat(c.a.mnt + "/Studies/x-moved.dcm", &sa), 0)
        XCTAssertEqual(stat(c.b.mnt + "/Studies/x-moved.dcm", &sb), 0)
        XCTAssertEqual(sa.st_ino, sb.st_ino)
        smb.stop()
        waitUntil("smbd's files closed on a") { status(c.a)["open_handles"] as? Int == 0 }
        try assertReplicasIdentical(c)
    }

    /// Names stay case-insensitive over SMB, and smbd learns that from the node instead of
    /// listing the directory through the mount before every create (glusterfs_fuse in the
    /// example's `vfs objects`): no readdir reaches the node while files are stored.
    func testCaseInsensitiveNamesOverSMBWithoutADirectoryListingPerCreate() throws {
        let c = try TestCluster(peerExtra: "timeout = 2.0\n")
        addTeardownBlock { c.destroy() }
        let port = try exportMetrics(c)
        try c.start()
        waitHealthy(c)
        let smb = try samba([("pacs", c.a.mnt)])
        let local = smb.dir + "/files"
        try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
        var r = smb.smbclient(share: "pacs", "mkdir Series")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let key = "twinfs_operation_duration_seconds_count{op=\"readdir\"}"
        let before = scrapeMetrics(port)[key]
        var cmds: [String] = []
        for i in 0..<30 {
            try putFile(local + "/in\(i)", pseudoRandomBytes(2000 + i, seed: UInt64(300 + i)))
            cmds.append("put \(local)/in\(i) Series/IM\(i).dcm")
        }
        r = smb.smbclient(share: "pacs", cmds.joined(separator: "; "))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertNotNil(before)
        XCTAssertEqual(scrapeMetrics(port)[key], before, "smbd listed the directory through the mount to create files")
        // Another spelling names the same file: the put replaces IM7.dcm, the get finds it.
        try putFile(local + "/new7", pseudoRandomBytes(5000, seed: 399))
        r = smb.smbclient(share: "pacs", "put \(local)/new7 series/im7.DCM; get SERIES/Im7.Dcm \(local)/out7")
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(try readFile(local + "/out7"), pseudoRandomBytes(5000, seed: 399))
        for n in [c.a, c.b] {
            let names = try FileManager.default.contentsOfDirectory(atPath: n.brick + "/Series")
            XCTAssertEqual(names.count, 30, "\(n.name): \(names.sorted())")
            XCTAssertFalse(names.contains("im7.DCM"), n.name)
            XCTAssertEqual(try xxh128(path: n.brick + "/Series/IM7.dcm"), XXH128Hasher.hash(pseudoRandomBytes(5000, seed: 399)), n.name)
        }
        smb.stop()
        waitUntil("smbd's files closed on a") { status(c.a)["open_handles"] as? Int == 0 }
        try assertReplicasIdentical(c)
    }

    /// smbd's xattr calls on a file deleted while open (delete-on-close with another handle
    /// open, smbtorture's base.delete and base.unlink): the DOS attributes and the NT ACL are
    /// read and written through its descriptor, as on a plain file system. The kernel asks by
    /// inode, and the node answered ESTALE (no path left) before it went through the handle.
    func testXattrsOfAFileDeletedWhileOpenAnswerThroughItsDescriptor() throws {
        let c = try cluster()
        waitHealthy(c)
        let path = c.a.mnt + "/deleted-while-open.dat"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let pathref = open(path, twin_O_PATH())  // smbd's pathref fsp; xattrs go through /proc/self/fd
        XCTAssertGreaterThanOrEqual(pathref, 0)
        defer { close(pathref) }
        XCTAssertEqual(unlink(path), 0)
        let dos = [UInt8](repeating: 0x11, count: 64), acl = [UInt8](repeating: 0x22, count: 300)
        XCTAssertEqual(twin_fsetxattr(fd, "user.DOSATTRIB", dos, dos.count, 0), 0, "fsetxattr: \(String(cString: strerror(errno)))")
        XCTAssertEqual(twin_setxattr("/proc/self/fd/\(pathref)", "security.NTACL", acl, acl.count, 0), 0,
                       "setxattr via /proc/self/fd: \(String(cString: strerror(errno)))")
        var buf = [UInt8](repeating: 0, count: 512)
        XCTAssertEqual(twin_fgetxattr(fd, "user.DOSATTRIB", &buf, buf.count), dos.count, String(cString: strerror(errno)))
        XCTAssertEqual(Array(buf[0..<dos.count]), dos)
        XCTAssertEqual(twin_getxattr("/proc/self/fd/\(pathref)", "security.NTACL", &buf, buf.count), acl.count)
        var names = [CChar](repeating: 0, count: 512)
        let n = twin_listxattr("/proc/self/fd/\(fd)", &names, names.count)
        XCTAssertGreaterThan(n, 0, String(cString: strerror(errno)))
        let listed = names[0..<max(n, 0)].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        XCTAssertEqual(Set(listed), ["user.DOSATTRIB", "security.NTACL"])
        XCTAssertEqual(twin_removexattr("/proc/self/fd/\(fd)", "user.DOSATTRIB"), 0, String(cString: strerror(errno)))
        // Nothing landed on a named entry (the root) of either brick.
        for node in [c.a, c.b] {
            XCTAssertLessThan(twin_getxattr(node.brick, "user.DOSATTRIB", &buf, buf.count), 0, node.name)
            XCTAssertLessThan(twin_getxattr(node.brick, "security.NTACL", &buf, buf.count), 0, node.name)
        }
    }

    /// smbtorture's SMB2 tests against a plain directory and against TwinFS, side by side:
    /// none may fail on TwinFS that passes on the plain directory.
    func testSmbtortureFindsNothingOnTwinFSThatAPlainDirectoryPasses() throws {
        guard runCommand(["which", "smbtorture"]).status == 0 else { throw XCTSkip("smbtorture not installed (apt-get install samba-testsuite)") }
        let c = try cluster()
        waitHealthy(c)
        let plain = TestEnv.prefix + "/plain-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: plain) }
        let smb = try samba([("plain", plain), ("pacs", c.a.mnt)])
        let tests = ["smb2.rw", "smb2.dir", "smb2.rename.simple", "smb2.rename.no_sharing", "smb2.rename.share_delete_and_delete_access",
                     "smb2.rename.rename_dir_openfile", "smb2.getinfo", "smb2.setinfo", "smb2.read", "smb2.fileid",
                     "smb2.delete-on-close-perms", "smb2.create.open", "smb2.create.brlocks", "smb2.create.multi",
                     "smb2.lock.rw-shared", "smb2.lock.rw-exclusive", "smb2.lock.lock", "smb2.lock.unlock",
                     "smb2.lock.zerobytelength", "smb2.lock.range", "smb2.lock.overlap"]
        let started = Date()
        let p = smb.torture(share: "plain", tests)
        let t = smb.torture(share: "pacs", tests)
        XCTAssertGreaterThan(t.passed.count, 30, "too few smbtorture tests ran:\n" + t.output.suffix(3000))
        let regressions = t.failed.subtracting(p.failed)
        XCTAssertEqual(regressions, [], "fail on TwinFS but pass on a plain directory:\n" + t.output.suffix(6000))
        print("smbtorture (\(Int(Date().timeIntervalSince(started))) s): \(t.passed.count) passed on TwinFS (\(p.passed.count) on the plain directory); failing on both: \(p.failed.sorted())")
        // smbd keeps durable handles of the torture's files open for a while: stop it first,
        // and let the kernel's releases of its files reach the node.
        smb.stop()
        waitUntil("smbd's files closed on a") { status(c.a)["open_handles"] as? Int == 0 }
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }
}
