import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import NIOCore
import PeerLink
import PeerProtocol
import TwinCore
import TestSupport
import XCTest

/// Writes a whole file and checks close(): with replication, close is where a failure shows.
func putFile(_ path: String, _ bytes: [UInt8], flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC) throws {
    let fd = open(path, flags, 0o644)
    guard fd >= 0 else { throw FSError.last }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        guard n > 0 else { let e = FSError.last; close(fd); throw e }
        done += n
    }
    guard close(fd) == 0 else { throw FSError.last }
}

/// Two real node processes with real FUSE mounts, joined through test relays that can cut the
/// link. Every scenario ends by comparing both bricks entry by entry (XXH3-128, modes, owners,
/// ids) and both journals.
final class ClusterTests: XCTestCase {
    // MARK: - Guarantee 1: both up, every change on both bricks when the call returns

    func testEveryChangeIsOnBothBricksWhenTheCallReturns() throws {
        let c = try cluster()
        waitHealthy(c)
        let a = c.a.mnt, b = c.b.mnt
        func onBrick(_ n: TestNode, _ rel: String) -> stat? {
            var st = stat()
            return lstat(n.brick + "/" + rel, &st) == 0 ? st : nil
        }
        XCTAssertEqual(mkdir(a + "/study", 0o2775), 0)
        XCTAssertNotNil(onBrick(c.b, "study"), "mkdir returned before the peer had it")
        let img = pseudoRandomBytes(700_000, seed: 1)
        try put(a + "/study/IMG1.dcm", img)
        // close() returned: the peer's brick has every byte and its journal the same hash.
        XCTAssertEqual(try xxh128(path: c.b.brick + "/study/IMG1.dcm"), XXH128Hasher.hash(img))
        XCTAssertEqual(try c.b.journalRecord("study/IMG1.dcm")?.hash, XXH128Hasher.hash(img).bytes)
        XCTAssertEqual(rename(a + "/study/IMG1.dcm", a + "/study/IMG2.dcm"), 0)
        XCTAssertNil(onBrick(c.b, "study/IMG1.dcm"))
        XCTAssertNotNil(onBrick(c.b, "study/IMG2.dcm"))
        XCTAssertEqual(link(a + "/study/IMG2.dcm", a + "/study/hard"), 0)
        XCTAssertEqual(onBrick(c.b, "study/hard")?.st_nlink, 2)
        XCTAssertEqual(symlink("IMG2.dcm", a + "/study/latest"), 0)
        XCTAssertEqual(onBrick(c.b, "study/latest").map { $0.st_mode & S_IFMT }, S_IFLNK)
        XCTAssertEqual(chmod(a + "/study/IMG2.dcm", 0o640), 0)
        XCTAssertEqual(onBrick(c.b, "study/IMG2.dcm").map { $0.st_mode & 0o7777 }, 0o640)
        XCTAssertEqual(chown(a + "/study/IMG2.dcm", 1234, 5678), 0)
        XCTAssertEqual(onBrick(c.b, "study/IMG2.dcm")?.st_uid, 1234)
        XCTAssertEqual(twin_setxattr(a + "/study/IMG2.dcm", "user.dicom.study", "1.2.3", 5, 0), 0)
        var buf = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(twin_lgetxattr(c.b.brick + "/study/IMG2.dcm", "user.dicom.study", &buf, 16), 5)
        XCTAssertEqual(truncate(a + "/study/IMG2.dcm", 1000), 0)
        XCTAssertEqual(onBrick(c.b, "study/IMG2.dcm")?.st_size, 1000)
        XCTAssertEqual(unlink(a + "/study/hard"), 0)
        XCTAssertNil(onBrick(c.b, "study/hard"))
        // And the other way: b writes, a's brick has it.
        XCTAssertEqual(mkdir(b + "/from-b", 0o755), 0)
        let other = pseudoRandomBytes(300_000, seed: 2)
        try put(b + "/from-b/x.dcm", other)
        XCTAssertEqual(try xxh128(path: c.a.brick + "/from-b/x.dcm"), XXH128Hasher.hash(other))
        // b's mount shows a's changes at once (kernel cache invalidated), and a's shows b's.
        XCTAssertEqual(try readFile(b + "/study/IMG2.dcm"), Array(img[0..<1000]))
        XCTAssertEqual(try readFile(a + "/from-b/x.dcm"), other)
        XCTAssertEqual(unlink(b + "/from-b/x.dcm"), 0)
        XCTAssertEqual(rmdir(b + "/from-b"), 0)
        XCTAssertNil(onBrick(c.a, "from-b"))
        var st = stat()
        XCTAssertEqual(lstat(a + "/from-b", &st), -1, "a's mount still shows a directory b removed")
        try assertReplicasIdentical(c)
        XCTAssertEqual(state(c.a), "HEALTHY")
    }

    // MARK: - Guarantee 2 + 3: peer killed mid-stream, catch-up (scenario i)

    /// Small writes are gathered into bigger messages to the peer (Orthanc writes 4 KiB at a
    /// time): whatever is gathered, on any handle of the file, reaches the peer's disk by each
    /// fsync, and before a truncate or a rename, so the peer holds exactly this node's bytes
    /// every time fsync returns.
    func testGatheredSmallWritesAreOnThePeerAtEachFsyncBeforeATruncateAndARename() throws {
        let c = try cluster()
        waitHealthy(c)
        let fd = open(c.a.mnt + "/small.dcm", O_RDWR | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        func write(_ bytes: [UInt8], at off: Int) {
            XCTAssertEqual(bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(off)) }, bytes.count)
        }
        func peerHoldsOurs(_ what: String) throws {
            XCTAssertEqual(fsync(fd), 0)
            let ours = try readFile(c.a.brick + "/small.dcm"), theirs = try readFile(c.b.brick + "/small.dcm")
            XCTAssertTrue(ours == theirs, "\(what): b's brick holds \(theirs.count) bytes that differ from a's \(ours.count)")
        }
        // 100 sequential 4 KiB writes (gathered), then fsync.
        for i in 0..<100 { write(pseudoRandomBytes(4096, seed: UInt64(i)), at: i * 4096) }
        try peerHoldsOurs("after 100 sequential 4 KiB writes")
        // Scattered: a write back at the start, one past the end (a hole), small ones after it.
        write(pseudoRandomBytes(100, seed: 200), at: 10)
        write(pseudoRandomBytes(4096, seed: 201), at: 600_000)
        for i in 0..<5 { write(pseudoRandomBytes(512, seed: UInt64(300 + i)), at: 604_096 + i * 512) }
        try peerHoldsOurs("after scattered writes")
        // Gathered writes, then a truncate below them, then more small writes.
        for i in 0..<10 { write(pseudoRandomBytes(1000, seed: UInt64(400 + i)), at: 700_000 + i * 1000) }
        XCTAssertEqual(ftruncate(fd, 650_000), 0)
        for i in 0..<3 { write(pseudoRandomBytes(700, seed: UInt64(500 + i)), at: 640_000 + i * 700) }
        try peerHoldsOurs("after a truncate between gathered writes")
        XCTAssertEqual(try readFile(c.a.brick + "/small.dcm").count, 650_000)
        // Two handles: what one gathered goes with the other's fsync (a commit covers the file).
        let fd2 = open(c.a.mnt + "/small.dcm", O_RDWR)
        XCTAssertGreaterThanOrEqual(fd2, 0)
        write(pseudoRandomBytes(2000, seed: 600), at: 1000)
        let other = pseudoRandomBytes(4096, seed: 601)
        XCTAssertEqual(other.withUnsafeBytes { pwrite(fd2, $0.baseAddress, $0.count, 100_000) }, other.count)
        XCTAssertEqual(fsync(fd2), 0)
        XCTAssertTrue(try readFile(c.a.brick + "/small.dcm") == readFile(c.b.brick + "/small.dcm"),
                      "after an fsync through a second handle, b lacks what the first one gathered")
        XCTAssertEqual(close(fd2), 0)
        // A rename while writes are gathered: they reach the peer under the file's new name.
        write(pseudoRandomBytes(3000, seed: 700), at: 5000)
        XCTAssertEqual(rename(c.a.mnt + "/small.dcm", c.a.mnt + "/renamed.dcm"), 0)
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertTrue(try readFile(c.a.brick + "/renamed.dcm") == readFile(c.b.brick + "/renamed.dcm"),
                      "after a rename with gathered writes, b's copy differs")
        // A truncating open while another handle holds gathered writes: they go before the
        // truncate, so they cannot land on the peer after the new content.
        write(pseudoRandomBytes(1500, seed: 800), at: 0)
        let fd3 = open(c.a.mnt + "/renamed.dcm", O_WRONLY | O_TRUNC)
        XCTAssertGreaterThanOrEqual(fd3, 0)
        let fresh = pseudoRandomBytes(200_000, seed: 801)   // big: sent at once, before the commit
        XCTAssertEqual(fresh.withUnsafeBytes { pwrite(fd3, $0.baseAddress, $0.count, 0) }, fresh.count)
        XCTAssertEqual(close(fd3), 0)
        XCTAssertTrue(try readFile(c.a.brick + "/renamed.dcm") == fresh && readFile(c.b.brick + "/renamed.dcm") == fresh,
                      "after a truncating open and close, the bricks do not both hold the new content")
        // Each time by the streamed writes themselves, not by the fallback that resends the file.
        XCTAssertFalse(c.a.log.contains("peer refused the commit"), c.a.log.suffix(2000).description)
        try assertReplicasIdentical(c)
    }

    /// A file renamed while open for writing (Windows renames open files over SMB), after a
    /// commit, then written again, in a directory renamed too: the writes after the renames
    /// reach the peer under the file's new name, streamed, not by resending the whole file.
    func testWritesAfterRenamingAnOpenFileStreamUnderItsNewName() throws {
        let c = try cluster()
        waitHealthy(c)
        XCTAssertEqual(mkdir(c.a.mnt + "/in", 0o755), 0)
        let fd = open(c.a.mnt + "/in/upload.tmp", O_RDWR | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var want = pseudoRandomBytes(300_000, seed: 1)
        XCTAssertEqual(want.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }, want.count)
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertEqual(rename(c.a.mnt + "/in/upload.tmp", c.a.mnt + "/in/IM0001.dcm"), 0)
        let more = pseudoRandomBytes(200_000, seed: 2)
        XCTAssertEqual(more.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(want.count)) }, more.count)
        want += more
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertTrue(try readFile(c.b.brick + "/in/IM0001.dcm") == want, "b's copy after the rename")
        XCTAssertEqual(rename(c.a.mnt + "/in", c.a.mnt + "/study"), 0)
        let tail = pseudoRandomBytes(5_000, seed: 3)
        XCTAssertEqual(tail.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 1000) }, tail.count)
        want.replaceSubrange(1000..<6000, with: tail)
        XCTAssertEqual(close(fd), 0)
        XCTAssertTrue(try readFile(c.b.brick + "/study/IM0001.dcm") == want, "b's copy after the directory's rename")
        XCTAssertTrue(try readFile(c.a.brick + "/study/IM0001.dcm") == want)
        XCTAssertFalse(c.a.log.contains("peer refused the commit"), c.a.log.suffix(2000).description)
        XCTAssertFalse(c.a.log.contains("did not stream to the peer"), c.a.log.suffix(2000).description)
        try assertReplicasIdentical(c)
    }

    /// A change that cannot stream (punching a hole has no message) makes the close send the
    /// whole file: when fsync and close return, the peer holds every byte, as for any other file.
    func testAFileThatCouldNotStreamIsWholeOnThePeerWhenItsFsyncAndCloseReturn() throws {
        let c = try cluster()
        waitHealthy(c)
        let fd = open(c.a.mnt + "/prealloc.dcm", O_RDWR | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(twin_fallocate(fd, 0, 0, 1 << 20), 0)
        var want = pseudoRandomBytes(400_000, seed: 1) + [UInt8](repeating: 0, count: (1 << 20) - 400_000)
        XCTAssertEqual(want.withUnsafeBytes { pwrite(fd, $0.baseAddress, 400_000, 0) }, 400_000)
        // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: bytes become zeros, no message says so.
        XCTAssertEqual(twin_fallocate(fd, 0x02 | 0x01, 100_000, 8192), 0)
        want.replaceSubrange(100_000..<108_192, with: [UInt8](repeating: 0, count: 8192))
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertTrue(try readFile(c.b.brick + "/prealloc.dcm") == want, "b's copy when fsync returned")
        // Afterwards the handle streams again.
        let more = pseudoRandomBytes(10_000, seed: 2)
        XCTAssertEqual(more.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 500_000) }, more.count)
        want.replaceSubrange(500_000..<510_000, with: more)
        XCTAssertEqual(close(fd), 0)
        XCTAssertTrue(try readFile(c.b.brick + "/prealloc.dcm") == want, "b's copy when close returned")
        XCTAssertEqual(c.a.log.components(separatedBy: "did not stream to the peer; sending the whole file").count - 1, 1,
                       c.a.log.suffix(2000).description)
        try assertReplicasIdentical(c)
    }

    /// smbd's put: create, write, set the write time, close. At the close both bricks hold the
    /// same atime and mtime, also when a write follows the times, when they are set through a
    /// second handle, and when the link is cut in between (the file is then owed and sent
    /// whole, with its mtime).
    func testTimesSetOnAFileBeingWrittenAreOnThePeerAtItsClose() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        func times(_ path: String) -> (Int, Int, Int, Int) {
            var st = stat()
            XCTAssertEqual(stat(path, &st), 0, path)
            return (st.st_atim.tv_sec, st.st_atim.tv_nsec, st.st_mtim.tv_sec, st.st_mtim.tv_nsec)
        }
        func setTimes(_ path: String, atime: Int, mtime: Int) {
            var ts = [timespec(tv_sec: atime, tv_nsec: 11), timespec(tv_sec: mtime, tv_nsec: 22)]
            XCTAssertEqual(utimensat(AT_FDCWD, path, &ts, 0), 0)
        }
        func store(_ name: String, seed: UInt64, thenWrite: Bool = false, cut: Bool = false) throws -> [UInt8] {
            let path = c.a.mnt + "/" + name
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            XCTAssertGreaterThanOrEqual(fd, 0)
            var bytes = pseudoRandomBytes(300_000, seed: seed)
            XCTAssertEqual(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, bytes.count)
            if cut { c.cut(.blackhole) }
            setTimes(path, atime: 1_500_000_000, mtime: 1_600_000_000)
            if thenWrite {
                let more = pseudoRandomBytes(1000, seed: seed + 1)
                XCTAssertEqual(more.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, more.count)
                bytes += more
            }
            XCTAssertEqual(close(fd), 0)
            return bytes
        }
        let plain = try store("plain.dcm", seed: 1)
        XCTAssertEqual(times(c.a.brick + "/plain.dcm").2, 1_600_000_000)
        XCTAssertTrue(times(c.a.brick + "/plain.dcm") == times(c.b.brick + "/plain.dcm"),
                      "a: \(times(c.a.brick + "/plain.dcm")), b: \(times(c.b.brick + "/plain.dcm"))")
        XCTAssertTrue(try readFile(c.b.brick + "/plain.dcm") == plain)
        let later = try store("later.dcm", seed: 3, thenWrite: true)
        XCTAssertNotEqual(times(c.a.brick + "/later.dcm").2, 1_600_000_000, "the write after the times moves mtime")
        XCTAssertEqual(times(c.a.brick + "/later.dcm").2, times(c.b.brick + "/later.dcm").2)
        XCTAssertEqual(times(c.a.brick + "/later.dcm").3, times(c.b.brick + "/later.dcm").3)
        XCTAssertTrue(try readFile(c.b.brick + "/later.dcm") == later)
        // Through another handle than the writer's (smbd may set times by path).
        let fd = open(c.a.mnt + "/two.dcm", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let two = pseudoRandomBytes(50_000, seed: 5)
        XCTAssertEqual(two.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, two.count)
        let reader = open(c.a.mnt + "/two.dcm", O_RDONLY)
        var ts = [timespec(tv_sec: 1_400_000_000, tv_nsec: 1), timespec(tv_sec: 1_450_000_000, tv_nsec: 2)]
        XCTAssertEqual(futimens(reader, &ts), 0)
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertTrue(times(c.a.brick + "/two.dcm") == times(c.b.brick + "/two.dcm"),
                      "a: \(times(c.a.brick + "/two.dcm")), b: \(times(c.b.brick + "/two.dcm"))")
        close(reader)
        close(fd)
        // The link goes between the times and the close: the file is owed, then sent whole.
        let cutFile = try store("cut.dcm", seed: 7, cut: true)
        waitUntil("a DEGRADED", timeout: 30) { state(c.a) == "DEGRADED" }
        c.restore()
        waitHealthy(c, timeout: 60)
        XCTAssertTrue(try readFile(c.b.brick + "/cut.dcm") == cutFile)
        XCTAssertEqual(times(c.b.brick + "/cut.dcm").2, 1_600_000_000)
        XCTAssertEqual(times(c.b.brick + "/cut.dcm").3, 22)
        try assertReplicasIdentical(c)
    }

    /// Times set through a handle still writing, after a second handle's close committed the
    /// file; the node then dies before the writer's close. Whatever path the times take to the
    /// peer, the two copies end with the same bytes and the same mtime once the node is back.
    func testTimesSetBeforeANodeDiesEndTheSameOnBothBricks() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        func mtime(_ path: String) -> Int {
            var st = stat()
            XCTAssertEqual(stat(path, &st), 0, path)
            return st.st_mtim.tv_sec
        }
        let path = c.a.mnt + "/held.dcm"
        let bytes = pseudoRandomBytes(200_000, seed: 21)
        let writer = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(writer, 0)
        XCTAssertEqual(bytes.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }, bytes.count)
        // Another handle rewrites the first bytes (the same ones) and closes: its commit covers
        // the whole file.
        let second = open(path, O_WRONLY)
        XCTAssertGreaterThanOrEqual(second, 0)
        XCTAssertEqual(bytes.withUnsafeBytes { pwrite(second, $0.baseAddress, 1000, 0) }, 1000)
        XCTAssertEqual(close(second), 0)
        var ts = [timespec(tv_sec: 1_500_000_000, tv_nsec: 0), timespec(tv_sec: 1_600_000_000, tv_nsec: 0)]
        XCTAssertEqual(futimens(writer, &ts), 0)
        XCTAssertEqual(mtime(c.a.brick + "/held.dcm"), 1_600_000_000)
        c.a.kill9()
        close(writer)
        try c.a.start()
        waitHealthy(c, timeout: 60)
        waitUntil("both bricks with one mtime (a: \(mtime(c.a.brick + "/held.dcm")), b: \(mtime(c.b.brick + "/held.dcm")))",
                  timeout: 30) { mtime(c.a.brick + "/held.dcm") == mtime(c.b.brick + "/held.dcm") }
        XCTAssertTrue(try readFile(c.a.brick + "/held.dcm") == bytes)
        XCTAssertTrue(try readFile(c.b.brick + "/held.dcm") == bytes)
        try assertReplicasIdentical(c)
    }

    func testPeerKilledAndRestartedWhile2000DicomFilesAreWritten() throws {
        let c = try cluster()
        waitHealthy(c)
        XCTAssertEqual(mkdir(c.a.mnt + "/CT", 0o755), 0)
        var expected: [String: XXH128Digest] = [:]
        var slowest = 0.0
        for i in 0..<2000 {
            if i == 400 { c.b.kill9() }
            if i == 800 {
                // Namespace changes only a replay can carry (a whole-file send would not).
                XCTAssertEqual(mkdir(c.a.mnt + "/CT/sub", 0o750), 0)
                XCTAssertEqual(rename(c.a.mnt + "/CT/IMG00010.dcm", c.a.mnt + "/CT/sub/moved.dcm"), 0)
                expected["CT/sub/moved.dcm"] = expected.removeValue(forKey: "CT/IMG00010.dcm")
                XCTAssertEqual(unlink(c.a.mnt + "/CT/IMG00011.dcm"), 0)
                expected["CT/IMG00011.dcm"] = nil
                XCTAssertEqual(chmod(c.a.mnt + "/CT/IMG00012.dcm", 0o600), 0)
                XCTAssertEqual(chown(c.a.mnt + "/CT/IMG00013.dcm", 4321, 8765), 0)
                XCTAssertEqual(symlink("sub/moved.dcm", c.a.mnt + "/CT/latest"), 0)
                XCTAssertEqual(twin_setxattr(c.a.mnt + "/CT/IMG00014.dcm", "user.study", "1.2.840", 7, 0), 0)
            }
            if i == 1200 {
                XCTAssertEqual(state(c.a), "DEGRADED")
                // What the peer must receive is durable and complete, not merely counted.
                c.a.syncJournal()
                let owed = try Journal(readOnlyPath: c.a.journalPath).peerOps(after: 0, limit: 100_000)
                XCTAssertTrue(owed.allSatisfy(\.applied), "owed changes not marked applied")
                let r = replication(c.a)
                XCTAssertGreaterThan(r["pending_files"] as? Int ?? 0, 700)
                XCTAssertGreaterThan(r["pending_bytes"] as? Int ?? 0, 700 * 64 * 1024)
                XCTAssertGreaterThan(r["pending_changes"] as? Int ?? 0, 700)
                try c.b.start()
            }
            let bytes = pseudoRandomBytes(64 * 1024 + (i * 7919) % (448 * 1024), seed: UInt64(i))
            let path = "CT/IMG\(String(format: "%05d", i)).dcm"
            slowest = max(slowest, try seconds { try put(c.a.mnt + "/" + path, bytes) })
            expected[path] = XXH128Hasher.hash(bytes)
        }
        // No write waited much longer than the peer timeout (2 s), never GlusterFS's 42 s.
        XCTAssertLessThan(slowest, 8, "a write waited \(slowest) s")
        waitHealthy(c)
        for (path, digest) in expected {
            XCTAssertEqual(try xxh128(path: c.b.brick + "/" + path), digest, path)
        }
        var st = stat()
        XCTAssertEqual(lstat(c.b.brick + "/CT/IMG00011.dcm", &st), -1, "unlink made while b was down did not reach b")
        XCTAssertEqual(lstat(c.b.brick + "/CT/sub", &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o750)
        XCTAssertEqual(lstat(c.b.brick + "/CT/IMG00012.dcm", &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o600)
        XCTAssertEqual(lstat(c.b.brick + "/CT/IMG00013.dcm", &st), 0)
        XCTAssertEqual(st.st_uid, 4321)
        var buf = [CChar](repeating: 0, count: 64)
        XCTAssertEqual(readlink(c.b.brick + "/CT/latest", &buf, 63), 13)
        var x = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(twin_lgetxattr(c.b.brick + "/CT/IMG00014.dcm", "user.study", &x, 16), 7)
        try assertReplicasIdentical(c)
    }

    // MARK: - Scenario ii: link cut while both write

    func testLinkCutWhileBothNodesWriteThenRestored() throws {
        let c = try cluster()
        waitHealthy(c)
        XCTAssertEqual(mkdir(c.a.mnt + "/A", 0o755), 0)
        XCTAssertEqual(mkdir(c.b.mnt + "/B", 0o755), 0)
        let errors = Locked<[String]>([])
        let done = DispatchGroup()
        for (n, dir, seed) in [(c.a, "A", UInt64(1000)), (c.b, "B", UInt64(2000))] {
            done.enter()
            Thread {
                defer { done.leave() }
                for i in 0..<150 {
                    do {
                        try putFile(n.mnt + "/\(dir)/f\(i)", pseudoRandomBytes(50_000 + i * 1000, seed: seed + UInt64(i)))
                        if i % 10 == 0 { try putFile(n.mnt + "/\(dir)/f\(i)", pseudoRandomBytes(3000, seed: seed), flags: O_WRONLY | O_APPEND) }
                        if i % 25 == 0, rename(n.mnt + "/\(dir)/f\(i)", n.mnt + "/\(dir)/r\(i)") != 0 {
                            errors.with { $0.append("\(n.name) rename f\(i): \(errno)") }
                        }
                    } catch { errors.with { $0.append("\(n.name) f\(i): \(error)") } }
                    usleep(5_000)
                }
            }.start()
        }
        usleep(200_000)
        c.cut(.blackhole)
        waitUntil("both nodes DEGRADED after the cut", timeout: 30) { state(c.a) == "DEGRADED" && state(c.b) == "DEGRADED" }
        XCTAssertGreaterThan(replication(c.a)["pending_changes"] as? Int ?? 0, 0)
        usleep(300_000)
        c.restore()
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(errors.with { $0 }, [])
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }

    // MARK: - Scenario iii: peer frozen with SIGSTOP

    func testPeerFrozenWithSIGSTOPThenContinued() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        guard let pid = c.b.process?.pid else { return XCTFail("b not running") }
        XCTAssertEqual(mkdir(c.a.mnt + "/S", 0o755), 0)
        kill(pid, SIGSTOP)
        defer { kill(pid, SIGCONT) }
        var times: [Double] = []
        for i in 0..<60 {
            times.append(try seconds { try put(c.a.mnt + "/S/f\(i)", pseudoRandomBytes(100_000, seed: UInt64(i))) })
        }
        // The first write waits out the timeout; the rest go at full speed.
        XCTAssertLessThan(times.max() ?? 0, 6, "\(times)")
        XCTAssertLessThan(times.dropFirst(5).reduce(0, +), 5, "writes after the peer was declared down were slow: \(times)")
        XCTAssertEqual(state(c.a), "DEGRADED")
        XCTAssertEqual(replication(c.a)["mode"] as? String, "degraded")
        kill(pid, SIGCONT)
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }

    // MARK: - Scenario iv + guarantee 5: both nodes at once, races across nodes

    func testBothNodesIngestDifferentStudiesAtOnce() throws {
        let c = try cluster()
        waitHealthy(c)
        let errors = Locked<[String]>([])
        let group = DispatchGroup()
        for (n, study) in [(c.a, "study-A"), (c.b, "study-B"), (c.a, "study-C"), (c.b, "study-D")] {
            group.enter()
            Thread {
                defer { group.leave() }
                guard mkdir(n.mnt + "/" + study, 0o755) == 0 else { return errors.with { $0.append("mkdir \(study): \(errno)") } }
                for i in 0..<80 {
                    do { try putFile(n.mnt + "/\(study)/IMG\(i).dcm", pseudoRandomBytes(200_000 + i * 300, seed: UInt64(i) ^ UInt64(study.hashValue & 0xFFFF))) }
                    catch { errors.with { $0.append("\(study)/\(i): \(error)") } }
                }
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(errors.with { $0 }, [])
        try assertReplicasIdentical(c)
    }

    func testRacingDirectoryOperationsAcrossNodesEndInOneNamespace() throws {
        let c = try cluster()
        waitHealthy(c)
        XCTAssertEqual(mkdir(c.a.mnt + "/race", 0o755), 0)
        for i in 0..<40 {
            try put(c.a.mnt + "/race/src-a-\(i)", Array("from a \(i)".utf8))
            try put(c.b.mnt + "/race/src-b-\(i)", Array("from b \(i)".utf8))
        }
        let wins = Locked([String: Int]())
        let group = DispatchGroup()
        for n in [c.a, c.b] {
            group.enter()
            Thread {
                defer { group.leave() }
                for i in 0..<40 {
                    // mkdir of one name on both nodes: exactly one wins, the other sees EEXIST.
                    if mkdir(n.mnt + "/race/d\(i)", 0o755) == 0 { wins.with { $0["d\(i)", default: 0] += 1 } }
                    // Renames from both nodes into one target.
                    _ = rename(n.mnt + "/race/src-\(n.name)-\(i)", n.mnt + "/race/target-\(i)")
                }
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 300), .success)
        for i in 0..<40 { XCTAssertEqual(wins.with { $0["d\(i)"] }, 1, "mkdir d\(i) succeeded \(wins.with { $0["d\(i)"] ?? 0 }) times") }
        try assertReplicasIdentical(c)
    }

    func testWritersOnBothNodesToOneFileLeaveIdenticalReplicas() throws {
        let c = try cluster()
        waitHealthy(c)
        try put(c.a.mnt + "/shared.dcm", [])
        // Writes of the two nodes must cross in flight (so that a commit is refused and the
        // whole file re-sent) for this to test anything: repeat until the logs show it.
        var crossed = false
        for attempt in 0..<10 where !crossed {
            let group = DispatchGroup()
            for (n, seed) in [(c.a, UInt64(1)), (c.b, UInt64(2))] {
                group.enter()
                Thread {
                    defer { group.leave() }
                    for round in 0..<8 {
                        // No O_TRUNC: both overwrite the same bytes in place.
                        try? putFile(n.mnt + "/shared.dcm", pseudoRandomBytes(400_000, seed: seed * 1000 + UInt64(attempt * 10 + round)),
                                     flags: O_WRONLY | O_CREAT)
                        usleep(UInt32.random(in: 0...3000))
                    }
                }.start()
            }
            XCTAssertEqual(group.wait(timeout: .now() + 300), .success)
            crossed = (c.a.log + c.b.log).contains("refused the commit")
        }
        XCTAssertTrue(crossed, "the writers never crossed: the repair path was not exercised")
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }

    /// Every byte streamed and acknowledged, then the link dies before close(): the commit is
    /// lost, so the file must be owed and end up committed (hash, mtime) on the peer.
    func testACommitLostWithTheLinkLeavesTheFileOwed() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        let bytes = pseudoRandomBytes(300_000, seed: 5)
        let fd = open(c.a.mnt + "/late.dcm", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, bytes.count)
        usleep(500_000)
        c.cut(.blackhole)
        XCTAssertEqual(close(fd), 0)
        XCTAssertEqual(state(c.a), "DEGRADED")
        XCTAssertEqual(replication(c.a)["pending_files"] as? Int, 1, "the file whose commit was lost is not owed")
        c.restore()
        waitHealthy(c)
        var sa = stat(), sb = stat()
        XCTAssertEqual(lstat(c.a.brick + "/late.dcm", &sa), 0)
        XCTAssertEqual(lstat(c.b.brick + "/late.dcm", &sb), 0)
        XCTAssertEqual(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec)
        XCTAssertEqual(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec, "the peer's copy did not get the sender's mtime")
        XCTAssertEqual(try c.b.journalRecord("late.dcm")?.hash, XXH128Hasher.hash(bytes).bytes)
        try assertReplicasIdentical(c)
    }

    /// A node (a) dies while a client's create is on its way to the peer: made on its own
    /// brick, never answered. The client stores the file through the other node (b) instead.
    /// Returns what b stored; the link stays cut and a stopped. `reachedThePeer`: the create
    /// reached b and only b's answer was lost.
    func storeThroughThePeerAfterAnUnansweredCreate(_ c: TestCluster, reachedThePeer: Bool = false) throws -> [UInt8] {
        waitHealthy(c)
        XCTAssertEqual(mkdir(c.a.mnt + "/scans", 0o755), 0)
        try put(c.a.mnt + "/scans/before.dcm", pseudoRandomBytes(50_000, seed: 10))
        if reachedThePeer { c.relayToB.set(.answersLost) } else { c.cut(.blackhole) }
        let path = c.a.mnt + "/scans/x.dcm"
        Thread { let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644); if fd >= 0 { close(fd) } }.start()
        let made = (reachedThePeer ? c.b : c.a).brick + "/scans/x.dcm"
        waitUntil("the file made on \(made)", timeout: reachedThePeer ? 2 : 5) { access(made, F_OK) == 0 }
        c.a.kill9()
        waitUntil("b DEGRADED", timeout: 30) { state(c.b) == "DEGRADED" }
        let bytes = pseudoRandomBytes(200_000, seed: 11)
        try put(c.b.mnt + "/scans/x.dcm", bytes)
        return bytes
    }

    /// When a returns, its empty, never-acknowledged file gives the name up to the stored
    /// one: no split brain, and both bricks hold the stored bytes.
    func testAnUnansweredCreateOnADeadNodeYieldsToTheFileStoredOnThePeer() throws {
        let c = try cluster(timeout: 1.5)
        let bytes = try storeThroughThePeerAfterAnUnansweredCreate(c)
        c.restore()
        try c.a.start()
        waitHealthy(c, timeout: 60)
        XCTAssertTrue(c.a.log.contains("\"scans/x.dcm\" was made here just before this node stopped"), c.a.log.suffix(3000).description)
        XCTAssertTrue(try readFile(c.a.brick + "/scans/x.dcm") == bytes, "a's brick does not hold the stored bytes")
        XCTAssertTrue(try readFile(c.a.mnt + "/scans/x.dcm") == bytes, "a's mount does not serve the stored bytes")
        try assertReplicasIdentical(c)
    }

    /// The create reached b, but b's answer was lost and a died before it heard of it: a
    /// returns with the create still to replay, while the client stored the file through b
    /// (over the empty file, same id). The replay changes nothing on b: not a split brain,
    /// and the stored bytes reach a. (Seen with an SMB client whose node lost power.)
    func testACreateThePeerAppliedButNeverAnsweredReplaysCleanlyOverTheFileStoredThere() throws {
        // a must be killed before its create times out (then it would answer the client).
        let c = try cluster(timeout: 3)
        let bytes = try storeThroughThePeerAfterAnUnansweredCreate(c, reachedThePeer: true)
        c.restore()
        try c.a.start()
        waitUntil("both settled", timeout: 60) { [state(c.a), state(c.b)].allSatisfy { $0 == "HEALTHY" || $0 == "SPLIT-BRAIN" } }
        XCTAssertEqual([state(c.a), state(c.b)], ["HEALTHY", "HEALTHY"], c.a.log.suffix(3000).description)
        XCTAssertTrue(try readFile(c.a.brick + "/scans/x.dcm") == bytes, "a's brick does not hold the stored bytes")
        XCTAssertTrue(try readFile(c.a.mnt + "/scans/x.dcm") == bytes, "a's mount does not serve the stored bytes")
        try assertReplicasIdentical(c)
    }

    /// But a client that wrote that file on the returned node before the nodes met again was
    /// told its bytes are stored: both copies were acknowledged, a split brain, both kept.
    func testAnUnansweredCreateWrittenAfterTheRestartIsASplitBrainNotYielded() throws {
        let c = try cluster(timeout: 1.5)
        let vb = try storeThroughThePeerAfterAnUnansweredCreate(c)
        let va = pseudoRandomBytes(100_000, seed: 12)
        try c.a.start()
        try put(c.a.mnt + "/scans/x.dcm", va)
        c.restore()
        waitUntil("both report the split brain", timeout: 60) { state(c.a) == "SPLIT-BRAIN" && state(c.b) == "SPLIT-BRAIN" }
        XCTAssertTrue(try readFile(c.a.brick + "/scans/x.dcm") == va, "a's acknowledged copy was not kept")
        XCTAssertTrue(try readFile(c.b.brick + "/scans/x.dcm") == vb, "b's acknowledged copy was not kept")
        XCTAssertFalse(c.a.log.contains("was made here just before this node stopped"))
    }

    /// Likewise a client that holds the file open for writing on the returned node (nothing
    /// written yet): the name is not given up under it, and its bytes, written and closed
    /// after the nodes met, are kept.
    func testAnUnansweredCreateHeldOpenAfterTheRestartIsNotYielded() throws {
        let c = try cluster(timeout: 1.5)
        _ = try storeThroughThePeerAfterAnUnansweredCreate(c)
        try c.a.start()
        let fd = open(c.a.mnt + "/scans/x.dcm", O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        c.restore()
        waitUntil("both report the split brain", timeout: 60) { state(c.a) == "SPLIT-BRAIN" && state(c.b) == "SPLIT-BRAIN" }
        let va = pseudoRandomBytes(100_000, seed: 13)
        XCTAssertEqual(va.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, va.count)
        XCTAssertEqual(close(fd), 0)
        XCTAssertTrue(try readFile(c.a.brick + "/scans/x.dcm") == va, "a's acknowledged copy was not kept")
        XCTAssertFalse(c.a.log.contains("was made here just before this node stopped"))
    }

    // MARK: - Scenario v + guarantee 4: split brain

    func testSplitBrainOnOneFileIsDetectedAndBothCopiesAreKept() throws {
        let c = try cluster()
        waitHealthy(c)
        try put(c.a.mnt + "/report.dcm", pseudoRandomBytes(10_000, seed: 1))
        try put(c.a.mnt + "/untouched.dcm", pseudoRandomBytes(10_000, seed: 9))
        c.cut(.reset)
        waitUntil("both DEGRADED", timeout: 30) { state(c.a) == "DEGRADED" && state(c.b) == "DEGRADED" }
        let va = pseudoRandomBytes(20_000, seed: 2), vb = pseudoRandomBytes(30_000, seed: 3)
        try put(c.a.mnt + "/report.dcm", va)
        try put(c.b.mnt + "/report.dcm", vb)
        // A change on one side only is caught up, not a split brain.
        try put(c.b.mnt + "/only-b.dcm", pseudoRandomBytes(5_000, seed: 4))
        c.restore()
        waitUntil("both report the split brain", timeout: 60) { state(c.a) == "SPLIT-BRAIN" && state(c.b) == "SPLIT-BRAIN" }
        for n in [c.a, c.b] {
            let entries = replication(n)["split_brain"] as? [[String: Any]] ?? []
            XCTAssertEqual(entries.compactMap { $0["path"] as? String }, ["report.dcm"], "\(n.name): \(entries)")
        }
        // Both versions kept, each on its own brick; neither served as current.
        XCTAssertEqual(try readFile(c.a.brick + "/report.dcm"), va)
        XCTAssertEqual(try readFile(c.b.brick + "/report.dcm"), vb)
        for n in [c.a, c.b] {
            let fd = open(n.mnt + "/report.dcm", O_RDONLY)
            XCTAssertEqual(fd, -1, "\(n.name) served a split-brain file")
            XCTAssertEqual(errno, EIO)
            if fd >= 0 { close(fd) }
        }
        XCTAssertEqual(try readFile(c.a.mnt + "/only-b.dcm"), pseudoRandomBytes(5_000, seed: 4))
        XCTAssertEqual(try readFile(c.b.mnt + "/untouched.dcm"), pseudoRandomBytes(10_000, seed: 9))
    }

    func testANodeThatWasDownDoesNotServeItsStaleCopy() throws {
        let c = try cluster()
        waitHealthy(c)
        try put(c.a.mnt + "/series.dcm", pseudoRandomBytes(100_000, seed: 1))
        XCTAssertEqual(c.b.stop(), 0)
        let fresh = pseudoRandomBytes(250_000, seed: 2)
        for i in 0..<200 { try put(c.a.mnt + "/other\(i).dcm", pseudoRandomBytes(200_000, seed: UInt64(i))) }
        try put(c.a.mnt + "/series.dcm", fresh)
        XCTAssertEqual(mkdir(c.a.mnt + "/new-study", 0o755), 0)
        try c.b.start()
        // The first reads on b, right after its mount is up, already see a's changes.
        XCTAssertEqual(try readFile(c.b.mnt + "/series.dcm"), fresh)
        var st = stat()
        XCTAssertEqual(stat(c.b.mnt + "/new-study", &st), 0)
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }

    // MARK: - Guarantee 3: restarts during catch-up

    func testCatchUpResumesAfterEitherNodeRestartsMidway() throws {
        let c = try cluster()
        waitHealthy(c)
        XCTAssertEqual(c.b.stop(), 0)
        XCTAssertEqual(mkdir(c.a.mnt + "/big", 0o755), 0)
        for i in 0..<300 { try put(c.a.mnt + "/big/f\(i)", pseudoRandomBytes(1 << 20, seed: UInt64(i))) }
        try c.b.start()
        waitUntil("catch-up under way", timeout: 30) { (replication(c.a)["pending_files"] as? Int ?? 300) < 300 }
        // New writes keep working during catch-up.
        try put(c.a.mnt + "/during.dcm", pseudoRandomBytes(50_000, seed: 7))
        c.a.kill9()
        try c.a.start()
        usleep(500_000)
        c.b.kill9()
        try c.b.start()
        waitHealthy(c, timeout: 180)
        try assertReplicasIdentical(c)
    }

    // MARK: - Guarantee 6: the peer link

    func testANodeWithTheWrongSecretIsRefusedAndLogged() throws {
        let c = try TestCluster(peerExtra: "timeout = 1.0\n")
        addTeardownBlock { c.destroy() }
        // b gets a secret of its own.
        let wrong = c.dir + "/wrong-secret"
        try TestCluster.writeSecret(wrong)
        let cfg = try String(contentsOfFile: c.b.configPath, encoding: .utf8).replacingOccurrences(of: c.secretPath, with: wrong)
        try cfg.write(toFile: c.b.configPath, atomically: true, encoding: .utf8)
        try c.start()
        try put(c.a.mnt + "/f", [1, 2, 3])
        usleep(1_500_000)
        XCTAssertEqual(state(c.a), "DEGRADED")
        XCTAssertEqual(state(c.b), "DEGRADED")
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.b.brick + "/f"))
        XCTAssertTrue(c.a.log.contains("refus") || c.a.log.contains("authentication"), c.a.log)
        // What the admin reads: the cause and the fix, in one line.
        let why = replication(c.b)["link"] as? String ?? ""
        XCTAssertTrue(why.contains("wrong cluster secret") && why.contains("copy the same secret_file to both nodes") && !why.contains("\n"), why)
    }

    func testFuzzedFramesNeverCrashALiveNodeOrWriteOutsideItsBrick() throws {
        let c = try cluster()
        waitHealthy(c)
        try put(c.a.mnt + "/keep.dcm", pseudoRandomBytes(10_000, seed: 1))
        // "../outside" seen from a's brick: a directory right beside it.
        XCTAssertEqual(mkdir(c.a.dir + "/outside", 0o755), 0)
        func besideBrick() -> [String] {
            snapshot(c.a.dir).filter { !$0.hasPrefix("brick") && !$0.hasPrefix("mnt") && !$0.hasPrefix("state") }
        }
        let before = besideBrick()
        // Unauthenticated garbage: random bytes, truncated and oversized frames.
        var rng = SystemRandomNumberGenerator()
        for round in 0..<300 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(c.listenPortA).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            XCTAssertEqual(ok, 0)
            var bytes: [UInt8]
            switch round % 3 {
            case 0: bytes = (0..<Int.random(in: 1...4096, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1: bytes = Array("TWFS".utf8) + [0, 1, 0, 1] + [0xFF, 0xFF, 0xFF, 0xFF] + [UInt8](repeating: 0x41, count: 64)
            default: bytes = Array("TWFS".utf8) + (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(fd)
        }
        // Authenticated (with the cluster secret) but hostile: paths escaping the brick.
        let secret = try SecretFile.load(path: c.secretPath)
        let client = PeerClient(configuration: .init(identity: PeerLinkIdentity(node: "b", volume: "test", secret: secret, peerNode: "a"),
                                                     host: "127.0.0.1", port: c.listenPortA))
        defer { let s = DispatchSemaphore(value: 0); Task { await client.shutdown(); s.signal() }; s.wait() }
        let hostile: [PeerMessage] = [
            .create(parentPath: "..", name: "escaped", mode: 0o644, uid: 0, gid: 0, stableID: 1 << 57 | 5),
            .create(parentPath: "../outside", name: "escaped", mode: 0o644, uid: 0, gid: 0, stableID: 1 << 57 | 6),
            .mkdir(parentPath: "/tmp", name: "escaped", mode: 0o755, uid: 0, gid: 0, stableID: 1 << 57 | 7),
            .write(path: "../outside/escaped", stableID: 1 << 57 | 6, offset: 0, data: ByteBuffer(bytes: [1, 2, 3])),
            .symlink(parentPath: "", name: "to-etc", target: "/etc", uid: 0, gid: 0, stableID: 1 << 57 | 8),
            .write(path: "to-etc/passwd", stableID: 1 << 57 | 8, offset: 0, data: ByteBuffer(bytes: [1])),
            .rename(fromParent: "", fromName: "keep.dcm", toParent: "..", toName: "stolen", flags: 0),
            .unlink(parentPath: ".twinfs", name: "brick.json"),
            .setxattr(path: "keep.dcm", name: "trusted.twinfs.id", value: [1], flags: 0),
            .create(parentPath: "", name: "a\0b", mode: 0o644, uid: 0, gid: 0, stableID: 1 << 57 | 9),
            .create(parentPath: "", name: String(repeating: "x", count: 300), mode: 0o644, uid: 0, gid: 0, stableID: 1 << 57 | 10),
        ]
        let results = Locked<[String]>([])
        let done = DispatchSemaphore(value: 0)
        Task {
            _ = await client.waitUntilUp(timeout: .seconds(10))
            for m in hostile {
                do {
                    let r = try await client.send(m)
                    if case let .reply(_, e, _) = r { results.with { $0.append("\(m.type):\(e)") } }
                } catch {
                    results.with { $0.append("\(m.type):link \(error)") }
                }
                // A link closed by the node for a protocol violation comes back.
                _ = await client.waitUntilUp(timeout: .seconds(5))
            }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        // Each was refused (errno or a closed link), the symlink aside (a legal entry).
        for r in results.with({ $0 }) where !r.hasPrefix("symlink") {
            XCTAssertFalse(r.hasSuffix(":0"), "accepted: \(r)")
        }
        XCTAssertTrue(c.a.process?.isRunning ?? false, "node a died:\n\(c.a.log)")
        XCTAssertEqual(besideBrick(), before, "something was written outside the brick")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/escaped"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: c.a.brick + "/.twinfs/brick.json"))
        XCTAssertEqual(try readFile(c.a.mnt + "/keep.dcm"), pseudoRandomBytes(10_000, seed: 1))
        // Still serving and replicating.
        try put(c.a.mnt + "/after.dcm", [9, 9, 9])
        XCTAssertEqual(try readFile(c.b.brick + "/after.dcm"), [9, 9, 9])
    }
}
