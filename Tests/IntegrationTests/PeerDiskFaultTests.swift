import CTwinShims
import Foundation
import Glibc
import Journal
import TestSupport
import TwinCore
import XCTest

/// Real node processes whose peer brick is a real filesystem that fills up or goes read-only
/// (a tmpfs mounted as b's brick, its size and mode changed under the running node). What a
/// client on a is told must stay true, a's files never turn into EIO, b never records or
/// serves a copy it did not verify, and the pair heals by itself once b's disk takes changes.
final class PeerDiskFaultTests: XCTestCase {
    /// A pair (not started) whose b brick is a tmpfs of `bytes`.
    func clusterWithSmallPeerBrick(bytes: Int) throws -> TestCluster {
        let c = try TestCluster(peerExtra: "timeout = 2.0\n")
        addTeardownBlock { c.destroy(); _ = runCommand(["/bin/umount", "-l", c.b.brick], timeout: 30) }
        let r = runCommand(["/bin/mount", "-t", "tmpfs", "-o", "size=\(bytes),mode=0755", "tmpfs", c.b.brick], timeout: 30)
        guard r.status == 0 else { throw XCTSkip("cannot mount a tmpfs brick: \(r.stderr)") }
        try c.start()
        c.armWatchdogs(seconds: 600)
        return c
    }

    func remount(_ c: TestCluster, _ options: String) {
        let r = runCommand(["/bin/mount", "-o", "remount,\(options)", c.b.brick], timeout: 30)
        XCTAssertEqual(r.status, 0, "remount \(options): \(r.stderr)")
    }

    func splitBrains(_ c: TestCluster, _ n: TestNode) -> Int {
        (replication(n)["split_brain"] as? [[String: Any]] ?? []).count
    }

    /// b's disk fills up during a 16 MiB write on a. The close on a succeeds (a has every byte
    /// and owes the file durably); b keeps its partial copy out of service instead of
    /// recording the zeros' hash as clean; once b has room, a sends the file and both bricks
    /// and journals end identical.
    func testPeerDiskFullDuringAWriteHealsWithoutEverRecordingTheZeros() throws {
        let c = try clusterWithSmallPeerBrick(bytes: 6 << 20)
        let data = (0..<(16 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
        try put(c.a.mnt + "/CT-series.dcm", data)
        XCTAssertEqual(try readFile(c.a.mnt + "/CT-series.dcm"), data, "a serves what its client wrote")
        XCTAssertEqual(splitBrains(c, c.a), 0)
        waitUntil("a owes b the file", timeout: 30) { (replication(c.a)["pending_files"] as? Int ?? 0) >= 1 }
        // b knows its copy is incomplete: it is awaited, not clean.
        c.b.syncJournal()
        let jb = try Journal(readOnlyPath: c.b.journalPath)
        let id = try XCTUnwrap(try jb.id(atPath: "CT-series.dcm"))
        XCTAssertEqual(try jb.healPendingRow(id)?.kind, .incompleteReplica, "b does not take its cut-off copy for a replica")
        XCTAssertEqual(try jb.inode(id)?.dirty, true, "b never records the cut-off copy as clean")

        remount(c, "size=64m")
        waitHealthy(c, timeout: 150)
        waitUntil("a owes nothing", timeout: 150) { (replication(c.a)["pending_files"] as? Int ?? 1) == 0 }
        XCTAssertEqual(try readFile(c.b.mnt + "/CT-series.dcm"), data)
        try assertReplicasIdentical(c)
    }

    /// Preallocation is not a change the peer must get whole: fallocate with KEEP_SIZE sends
    /// nothing, and a plain fallocate past the end sends only the new size (zeros on both).
    /// Before, every fallocate made the close send the whole file again.
    func testPreallocationIsNotAWholeFileResend() throws {
        let c = try cluster()
        let path = c.a.mnt + "/prealloc.dcm"
        let data = (0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(twin_fallocate(fd, twin_FALLOC_FL_KEEP_SIZE(), 0, 1 << 20), 0, "KEEP_SIZE: \(String(cString: strerror(errno)))")
        XCTAssertEqual(data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, data.count)
        XCTAssertEqual(twin_fallocate(fd, 0, 0, 512 << 10), 0, "plain fallocate past the end")
        XCTAssertEqual(close(fd), 0)
        let expected = data + [UInt8](repeating: 0, count: 256 << 10)
        XCTAssertEqual(try readFile(path), expected)
        XCTAssertEqual(try readFile(c.b.mnt + "/prealloc.dcm"), expected)
        XCTAssertFalse(c.a.log.contains("sending the whole file"), "no whole-file resend for a preallocation")
        try assertReplicasIdentical(c)
    }

    /// b's brick goes read-only: mkdir and writes on a still succeed and stay readable on a
    /// (no split brain, no EIO); a owes the changes and replays them once b is read-write.
    func testPeerBrickReadOnlyIsOwedNotASplitBrain() throws {
        let c = try clusterWithSmallPeerBrick(bytes: 64 << 20)
        try put(c.a.mnt + "/before.dcm", Array(repeating: 1, count: 4096))
        waitUntil("before.dcm on b", timeout: 30) { FileManager.default.fileExists(atPath: c.b.brick + "/before.dcm") }
        remount(c, "ro")
        XCTAssertEqual(mkdir(c.a.mnt + "/study", 0o755), 0, "mkdir on a: \(String(cString: strerror(errno)))")
        let img = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try put(c.a.mnt + "/study/IM1.dcm", img)
        XCTAssertEqual(try readFile(c.a.mnt + "/study/IM1.dcm"), img, "a serves its file (no EIO)")
        XCTAssertEqual(splitBrains(c, c.a), 0, "a storage fault on b is not a split brain")
        XCTAssertEqual(splitBrains(c, c.b), 0)
        XCTAssertGreaterThan(replication(c.a)["pending_changes"] as? Int ?? 0, 0, "a owes b the changes")

        remount(c, "rw")
        waitHealthy(c, timeout: 150)
        waitUntil("a owes nothing", timeout: 150) {
            let r = replication(c.a)
            return (r["pending_files"] as? Int ?? 1) == 0 && (r["pending_changes"] as? Int ?? 1) == 0
        }
        XCTAssertEqual(try readFile(c.b.mnt + "/study/IM1.dcm"), img)
        try assertReplicasIdentical(c)
    }
}
