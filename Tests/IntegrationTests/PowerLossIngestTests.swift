import Foundation
import Glibc
import Journal
import TestSupport
import XCTest

/// Power loss in the middle of an fsync-per-file ingest, made real: the node's brick, journal
/// and mount point live on an XFS image, which is shut down without flushing its log
/// (`xfs_io -x -c shutdown`) while writers run, then the node is killed and the image mounted
/// again (the log replayed, as after a power cut). With `seal_commits`, a content commit makes only the brick file
/// durable (one flush: bytes, seal xattr, seal marker); the journal row follows without a
/// flush. Recovery must re-derive every row the WAL's lost tail held from the seals, so that
/// afterwards no acknowledged file is lost or different and journal and brick agree.
final class PowerLossIngestTests: XCTestCase {
    func imageNode() throws -> (TestNode, String) {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/xfs_io"),
              FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.xfs") else { throw XCTSkip("xfsprogs is not installed") }
        let n = try TestNode(extraConfig: "seal_commits = true\n")
        let img = n.dir + "-disk.img"
        addTeardownBlock {
            n.destroy()
            _ = runCommand(["/bin/umount", "-l", n.dir], timeout: 30)
            try? FileManager.default.removeItem(atPath: img)
        }
        XCTAssertEqual(runCommand(["/usr/bin/truncate", "-s", "4G", img], timeout: 30).status, 0)
        let mk = runCommand(["/usr/sbin/mkfs.xfs", "-q", "-f", img], timeout: 120)
        guard mk.status == 0 else { throw XCTSkip("mkfs.xfs: \(mk.stderr)") }
        try n.mountImage(img)
        return (n, img)
    }

    /// Two writers store 512 KiB files (write, fsync, close) in the PACS layout; the disk
    /// loses power at a random moment, three times. After each restart every file whose
    /// close returned is there with its bytes, and `verify` finds journal and brick agreeing
    /// (every file's row present, clean, with the XXH3-128 of its bytes).
    func testPowerCutDuringIngestLosesNoAcknowledgedFileAndJournalAgreesWithBrick() throws {
        let (n, img) = try imageNode()
        try ingestAndCrash(n, "power cut") { try n.cutPower(image: img) }
    }

    /// The same with kill -9 of the node at a random moment (the WAL survives, the seal
    /// markers of commits not yet durable are left behind): journal and brick agree after
    /// recovery and no acknowledged file is lost.
    func testKill9DuringSealedIngestLosesNoAcknowledgedFileAndJournalAgreesWithBrick() throws {
        let (n, _) = try imageNode()
        try ingestAndCrash(n, "kill -9") { n.kill9() }
    }

    func ingestAndCrash(_ n: TestNode, _ what: String, crash: () throws -> Void) throws {
        let logPath = n.dir + "-acked.log"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: logPath) }
        var rederived = 0
        for round in 0..<3 {
            try n.start()
            let procs = try AcknowledgedIngest.start(root: n.mnt, seeds: [round * 10, round * 10 + 1], log: logPath)
            let delay = UInt32.random(in: 700_000...2_500_000)
            usleep(delay)
            print("round \(round): \(what) after \(delay / 1000) ms")
            try crash()
            AcknowledgedIngest.reap(procs)
            try n.start()
            n.stop()
            rederived += n.log.components(separatedBy: "sealed content commits re-derived").count - 1
            let v = n.twinfs(["verify", "--config", n.configPath, "--json"], timeout: 600)
            XCTAssertEqual(v.status, 0, "round \(round): journal and brick disagree after the \(what):\n\(v.stdout)\n\(n.log)")
            // Every file whose close returned has exactly its bytes in the brick, and a clean
            // journal row with their XXH3-128.
            let acked = try AcknowledgedIngest.lines(logPath)
            XCTAssertGreaterThan(acked.count, 5, "the writers got work done")
            XCTAssertEqual(AcknowledgedIngest.damaged(log: logPath, under: n.brick), [], "round \(round)")
            XCTAssertEqual(try AcknowledgedIngest.withoutCleanRow(acked, journal: n.journalPath, brick: n.brick), [],
                           "round \(round): acknowledged files without a clean journal row holding their hash")
        }
        print("\(what): recoveries that re-derived rows from seals: \(rederived) of 3")
    }
}
