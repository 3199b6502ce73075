import Fixity
import Foundation
import Glibc
import TwinCore
import TestSupport
import XCTest

/// The admin's view: start and stop, status, refusals that change nothing, verify, rebuild.
final class NodeAdminTests: XCTestCase {
    func testSigtermUnmountsAndExitsZeroAndStatusSaysNotRunning() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        try writeFile(n.mnt + "/a", Array("a".utf8))
        let s = try n.statusJSON()
        XCTAssertEqual(s["volume"] as? String, "test")
        XCTAssertEqual(s["node"] as? String, "a")
        XCTAssertEqual(s["state"] as? String, "HEALTHY")
        XCTAssertEqual(s["files"] as? Int, 1)
        XCTAssertEqual(s["directories"] as? Int, 1)
        XCTAssertEqual(s["bytes"] as? Int, 1)
        for key in ["brick", "mountpoint", "journal_bytes", "uptime_seconds", "pid", "journal_path", "last_shutdown"] {
            XCTAssertNotNil(s[key], "status JSON has \(key)")
        }
        let text = n.twinfs(["status", "--config", n.configPath])
        XCTAssertEqual(text.status, 0)
        XCTAssertTrue(text.stdout.contains("state HEALTHY"), text.stdout)
        XCTAssertEqual(n.stop(), 0, n.log)
        XCTAssertFalse(n.isMounted)
        XCTAssertTrue(n.log.contains("journal closed cleanly"), n.log)
        let r = n.twinfs(["status", "--config", n.configPath])
        XCTAssertEqual(r.status, 3, "no node running: exit 3")
        XCTAssertTrue(r.stderr.contains("no TwinFS node is running"), r.stderr)
        // Restart: the data is still there, the last stop was clean.
        try n.start()
        XCTAssertEqual(try readFile(n.mnt + "/a"), Array("a".utf8))
        XCTAssertEqual(try n.statusJSON()["last_shutdown"] as? String, "clean")
    }

    /// Each refused start prints one line with the problem and the fix, exits 2, and leaves
    /// brick, journal and mount point exactly as they were.
    func testRefusedStartsChangeNothing() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        try writeFile(n.mnt + "/keep.dcm", Array("keep".utf8))
        n.stop()
        func refused(_ config: String, mention: String, file: StaticString = #filePath, line: UInt = #line) {
            let path = n.dir + "/bad.toml"
            try? config.write(toFile: path, atomically: true, encoding: .utf8)
            // SQLite's shared-memory index (-shm) is touched by any reader; it holds no data.
            func state() -> [String] { snapshot(n.dir).filter { !$0.hasPrefix("bad.toml") && !$0.contains("-shm ") } }
            let before = state()
            let r = n.twinfs(["node", "--config", path], timeout: 60)
            XCTAssertEqual(r.status, 2, "exit 2 for: \(mention); stderr: \(r.stderr)", file: file, line: line)
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "one line: \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(mention) && r.stderr.contains("fix:"), r.stderr, file: file, line: line)
            XCTAssertEqual(state(), before, "nothing changed on disk", file: file, line: line)
            XCTAssertFalse(isTwinFSMount(n.mnt), "not mounted", file: file, line: line)
        }
        let good = try String(contentsOfFile: n.configPath, encoding: .utf8)
        refused(good.replacingOccurrences(of: "volume = \"test\"", with: "volume = "), mention: "line")
        refused(good.replacingOccurrences(of: n.brick, with: n.dir + "/nope"), mention: "does not exist")
        refused(good.replacingOccurrences(of: "volume = \"test\"", with: "volume = \"other\""), mention: "belongs to")
        refused(good.replacingOccurrences(of: "node = \"a\"", with: "node = \"b\""), mention: "belongs to")
        // A journal of another volume, with a fresh brick.
        let otherBrick = n.dir + "/brick2"
        try FileManager.default.createDirectory(atPath: otherBrick, withIntermediateDirectories: true)
        refused(good.replacingOccurrences(of: n.brick + "\"", with: otherBrick + "\""), mention: "is empty but journal")
        // A non-empty directory that is not a brick.
        try writeFile(otherBrick + "/stranger.txt", Array("x".utf8))
        refused(good.replacingOccurrences(of: n.brick + "\"", with: otherBrick + "\""), mention: "no TwinFS marker")
        // A busy mount point (something mounted there already).
        XCTAssertEqual(runCommand(["mount", "-t", "tmpfs", "tmpfs", n.mnt]).status, 0)
        refused(good, mention: "busy")
        runCommand(["umount", n.mnt])
        // A corrupt journal file.
        let jcopy = try Data(contentsOf: URL(fileURLWithPath: n.journalPath))
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: n.journalPath))
        refused(good, mention: "journal")
        try jcopy.write(to: URL(fileURLWithPath: n.journalPath))
        // And after all that, the node starts and serves the old data.
        try n.start()
        XCTAssertEqual(try readFile(n.mnt + "/keep.dcm"), Array("keep".utf8))
    }

    /// Issue 15, case 4: the first start of a pair node on a fresh brick, refused for its
    /// secret file (readable by all) or a taken listen port, leaves the brick empty and makes
    /// no journal. Before, the brick got its marker and id high-water and the journal was
    /// created before the secret was read.
    func testARefusedFirstStartOfAPairNodeLeavesTheFreshBrickUntouched() throws {
        let c = try TestCluster()
        addTeardownBlock { c.destroy() }
        let n = c.a
        func refused(mention: String, file: StaticString = #filePath, line: UInt = #line) {
            let before = snapshot(n.dir)
            let r = n.twinfs(["node", "--config", n.configPath], timeout: 60)
            XCTAssertEqual(r.status, 2, "exit 2 for: \(mention); stderr: \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(mention) && r.stderr.contains("fix:"), r.stderr, file: file, line: line)
            XCTAssertEqual(snapshot(n.dir), before, "nothing changed on disk", file: file, line: line)
            XCTAssertEqual(snapshot(n.brick), [], "the brick is still empty", file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: n.journalPath), "no journal made", file: file, line: line)
        }
        XCTAssertEqual(chmod(c.secretPath, 0o644), 0)
        refused(mention: "readable or writable by every user")
        XCTAssertEqual(chmod(c.secretPath, 0o600), 0)
        // Another process holds the listen port.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = UInt16(c.listenPortA).bigEndian
        sa.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(bound, 0)
        XCTAssertEqual(listen(fd, 1), 0)
        refused(mention: "port \(c.listenPortA)")
        close(fd)
        try c.start()
        waitHealthy(c)
    }

    func testVerifyNamesFlippedMissingAndUnexpectedFiles() throws {
        let n = try startedNode()
        try FileManager.default.createDirectory(atPath: n.mnt + "/S/1", withIntermediateDirectories: true)
        for i in 0..<5 { try writeFile(n.mnt + "/S/1/IM\(i).dcm", pseudoRandomBytes(70_000, seed: UInt64(i))) }
        var r = n.twinfs(["verify", "--config", n.configPath])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        // Behind TwinFS's back: flip one byte, delete one file, add one file.
        let fd = open(n.brick + "/S/1/IM2.dcm", O_RDWR)
        var b: UInt8 = 0
        XCTAssertEqual(pread(fd, &b, 1, 12345), 1)
        b ^= 0x01
        XCTAssertEqual(pwrite(fd, &b, 1, 12345), 1)
        close(fd)
        XCTAssertEqual(unlink(n.brick + "/S/1/IM3.dcm"), 0)
        try writeFile(n.brick + "/S/1/intruder.dcm", Array("?".utf8))
        r = n.twinfs(["verify", "--config", n.configPath])
        XCTAssertEqual(r.status, 1, "verify exits 1 on problems")
        XCTAssertTrue(r.stdout.contains("MISMATCH  /S/1/IM2.dcm"), r.stdout)
        XCTAssertTrue(r.stdout.contains("MISSING  /S/1/IM3.dcm"), r.stdout)
        XCTAssertTrue(r.stdout.contains("UNEXPECTED  /S/1/intruder.dcm"), r.stdout)
        XCTAssertTrue(r.stdout.contains("3 problems"), r.stdout)
        XCTAssertFalse(r.stdout.contains("IM1.dcm"), "good files are not named")
        let j = n.twinfs(["verify", "--config", n.configPath, "--json"])
        let obj = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
        XCTAssertEqual((obj?["problems"] as? [Any])?.count, 3)
    }

    func testJournalRebuildFromBrickKeepsStableIDsAndBacksUpTheOldJournal() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        try FileManager.default.createDirectory(atPath: n.mnt + "/St/Se", withIntermediateDirectories: true)
        var inodes: [String: UInt] = [:]
        for i in 0..<20 {
            let p = "St/Se/IM\(i).dcm"
            try writeFile(n.mnt + "/" + p, pseudoRandomBytes(10_000 + i, seed: UInt64(i)))
            var st = stat()
            XCTAssertEqual(stat(n.mnt + "/" + p, &st), 0)
            inodes[p] = st.st_ino
        }
        XCTAssertEqual(symlink("St", n.mnt + "/link"), 0)
        // Refused while the node runs (journal locked).
        var r = n.twinfs(["journal", "rebuild", "--config", n.configPath])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("in use by a running TwinFS node"), r.stderr)
        n.stop()
        let oldHash = try n.journalRecord("St/Se/IM7.dcm")?.hash
        r = n.twinfs(["journal", "rebuild", "--config", n.configPath])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("20 files"), r.stdout)
        XCTAssertTrue(r.stdout.contains("previous journal is kept"), r.stdout)
        let backups = try FileManager.default.contentsOfDirectory(atPath: n.state).filter { $0.hasPrefix("journal.db.bak-") }
        XCTAssertFalse(backups.isEmpty)
        XCTAssertEqual(try n.journalRecord("St/Se/IM7.dcm")?.hash, oldHash)
        // A lost journal (or a journal disk that did not mount) is not replaced silently: the
        // start is refused with the two ways out; after `journal rebuild` inode numbers are
        // the same as before.
        for s in ["", "-wal", "-shm"] { unlink(n.journalPath + s) }
        let refused = n.twinfs(["node", "--config", n.configPath], timeout: 60)
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("is missing") && refused.stderr.contains("journal rebuild"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: n.journalPath), "nothing created")
        XCTAssertEqual(n.twinfs(["journal", "rebuild", "--config", n.configPath]).status, 0)
        try n.start()
        for (p, ino) in inodes {
            var st = stat()
            XCTAssertEqual(stat(n.mnt + "/" + p, &st), 0)
            XCTAssertEqual(st.st_ino, ino, "stable id of \(p) survives a journal rebuild")
        }
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0)
    }

    func testImportingAPlainDirectoryWithRebuild() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        // An existing archive copied in with cp: no marker, no ids.
        try FileManager.default.createDirectory(atPath: n.brick + "/old/study", withIntermediateDirectories: true)
        try writeFile(n.brick + "/old/study/a.dcm", pseudoRandomBytes(5000, seed: 9))
        let r = n.twinfs(["journal", "rebuild", "--config", n.configPath])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("new ids"), r.stdout)
        try n.start()
        XCTAssertEqual(try readFile(n.mnt + "/old/study/a.dcm"), pseudoRandomBytes(5000, seed: 9))
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0)
    }

    func testDemoStartsAMountedVolumeAndStopsOnCtrlC() throws {
        try TestEnv.requireFuse()
        let dir = TestEnv.prefix + "/demo-" + UUID().uuidString.prefix(8)
        addTeardownBlock {
            if mountPoints()[dir + "/a/mnt"] != nil { runCommand(["umount", "-l", dir + "/a/mnt"]) }
            try? FileManager.default.removeItem(atPath: dir)
        }
        let p = try Child([TestEnv.binary, "demo", "--dir", dir], stdout: "/dev/null", stderr: "/dev/null")
        let deadline = Date().addingTimeInterval(60)
        while mountPoints()[dir + "/a/mnt"] == nil && Date() < deadline && p.isRunning { usleep(50_000) }
        XCTAssertNotNil(mountPoints()[dir + "/a/mnt"], "demo mounted node a")
        try writeFile(dir + "/a/mnt/hello.txt", Array("hi".utf8))
        XCTAssertEqual(try readFile(dir + "/a/brick/hello.txt"), Array("hi".utf8))
        let st = runCommand([TestEnv.binary, "status", "--config", dir + "/a.toml"])
        XCTAssertEqual(st.status, 0, st.stderr)
        kill(p.pid, SIGINT)
        let stopBy = Date().addingTimeInterval(60)
        while p.isRunning && Date() < stopBy { usleep(50_000) }
        XCTAssertFalse(p.isRunning)
        XCTAssertEqual(p.wait(), 0)
        XCTAssertNil(mountPoints()[dir + "/a/mnt"], "Ctrl-C unmounted the demo")
    }

    /// `mount -t twinfs CONFIG MOUNTPOINT` through the shipped helper, then `umount`.
    func testMountHelperMountsAndUmountStopsTheNode() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        let helper = TestEnv.repoRoot + "/mount/mount.twinfs"
        let installed = "/sbin/mount.twinfs"
        var linked = false
        // A link from an earlier or parallel run (possibly into a checkout that is gone) is
        // replaced by ours; a helper really installed there is used as it is.
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: installed)) != nil {
            unlink(installed)
        }
        if !FileManager.default.fileExists(atPath: installed) {
            try FileManager.default.createSymbolicLink(atPath: installed, withDestinationPath: helper)
            linked = true
        }
        addTeardownBlock { if linked { unlink(installed) } }
        let other = n.dir + "/elsewhere"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        addTeardownBlock { if isTwinFSMount(other) { runCommand(["umount", "-l", other]) } }
        let r = runCommand(["mount", "-t", "twinfs", "-o", "defaults,_netdev", n.configPath, other], timeout: 90,
                           environment: ["TWINFS": TestEnv.binary, "TWINFS_LOG_DIR": n.state])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(isTwinFSMount(other), "mounted at the mount point given to mount(8)")
        try writeFile(other + "/via-mount.dcm", Array("m".utf8))
        XCTAssertEqual(try readFile(n.brick + "/via-mount.dcm"), Array("m".utf8))
        XCTAssertEqual(n.twinfs(["status", "--config", n.configPath]).status, 0)
        XCTAssertEqual(runCommand(["umount", other], timeout: 60).status, 0)
        // The node notices the unmount, closes its journal and exits.
        let deadline = Date().addingTimeInterval(30)
        while n.twinfs(["status", "--config", n.configPath], timeout: 10).status == 0 && Date() < deadline { usleep(100_000) }
        XCTAssertEqual(n.twinfs(["status", "--config", n.configPath]).status, 3)
        let log = (try? String(contentsOfFile: n.state + "/\(n.name).log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("journal closed cleanly"), log)
        // A bad config: the helper fails with the node's one-line reason.
        let bad = runCommand(["mount", "-t", "twinfs", n.dir + "/missing.toml", other], timeout: 60,
                             environment: ["TWINFS": TestEnv.binary, "TWINFS_LOG_DIR": n.state])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("cannot read config file"), bad.stderr)
    }

    /// After kill -9 the dead mount stays behind; a restart (systemd Restart=on-failure)
    /// detaches it and serves again, instead of refusing the busy mount point forever.
    func testRestartAfterCrashDetachesItsOwnDeadMount() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        try writeFile(n.mnt + "/before.dcm", Array("b".utf8), fsync: true)
        n.kill9(detach: false)
        XCTAssertTrue(isTwinFSMount(n.mnt), "the dead mount is still there")
        try n.start()
        XCTAssertEqual(try readFile(n.mnt + "/before.dcm"), Array("b".utf8))
        XCTAssertTrue(n.log.contains("detaching the dead mount"), n.log)
        XCTAssertEqual(try n.statusJSON()["last_shutdown"] as? String, "crash")
    }

    /// Totals after a rebuild count a hard-linked file once.
    func testStatusTotalsAfterRebuildWithHardLinks() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        try writeFile(n.mnt + "/a", [UInt8](repeating: 1, count: 1000))
        XCTAssertEqual(link(n.mnt + "/a", n.mnt + "/b"), 0)
        n.stop()
        XCTAssertEqual(n.twinfs(["journal", "rebuild", "--config", n.configPath]).status, 0)
        try n.start()
        let s = try n.statusJSON()
        XCTAssertEqual(s["files"] as? Int, 1)
        XCTAssertEqual(s["bytes"] as? Int, 1000)
    }

    /// A full brick: the client is told ENOSPC, the admin gets one line with the cause and the
    /// fix (log and `twinfs status`), nothing breaks, and writes work again once space is freed.
    func testAFullBrickIsOneClearLineAndNothingBreaks() throws {
        let n = try TestNode(name: "a")
        // A 12 MiB brick file system (tmpfs keeps trusted.* xattrs like ext4/XFS).
        XCTAssertEqual(runCommand(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", n.brick]).status, 0)
        addTeardownBlock {
            n.destroy()
            _ = runCommand(["umount", "-l", n.brick])
        }
        try n.start()
        var failed: Int32 = 0
        for i in 0..<20 {
            do { try putFile(n.mnt + "/img\(i).dcm", pseudoRandomBytes(1 << 20, seed: UInt64(i))) } catch let e as FSError {
                failed = e.errno
                break
            }
        }
        XCTAssertEqual(failed, ENOSPC, "the client must be told 'no space left on device'")
        XCTAssertTrue(n.log.contains("brick \(n.brick) is full (no space left on device)") && n.log.contains("fix: free space on the brick's disk"),
                      n.log.suffix(2000).description)
        XCTAssertTrue(n.twinfs(["status", "--config", n.configPath]).stdout.contains("WARNING     the brick is full or nearly"))
        XCTAssertEqual(try n.statusJSON()["state"] as? String, "HEALTHY", "a full brick does not fail the journal")
        // Space freed: writes work again.
        for i in 0..<6 { unlink(n.mnt + "/img\(i).dcm") }
        try putFile(n.mnt + "/after.dcm", pseudoRandomBytes(1 << 20, seed: 99))
        XCTAssertEqual(try readFile(n.mnt + "/after.dcm"), pseudoRandomBytes(1 << 20, seed: 99))
        let v = n.twinfs(["verify", "--config", n.configPath])
        XCTAssertEqual(v.status, 0, v.stdout)
    }
}
