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
        let writer = """
        import hashlib, os, random, sys
        root, seed, logp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        r = random.Random(seed)
        log = open(logp, 'a', buffering=1)
        i = 0
        try:
            while True:
                d = f'{root}/W{seed}/Study{i // 400:03d}/Series{(i // 100) % 4:02d}'
                os.makedirs(d, exist_ok=True)
                p = f'{d}/IM{i:05d}.dcm'
                data = r.randbytes(524288)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                log.write(f'{p} {hashlib.sha256(data).hexdigest()}\\n')
                i += 1
        except OSError:
            pass
        """
        let logPath = n.dir + "-acked.log"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: logPath) }
        var rederived = 0
        for round in 0..<3 {
            try n.start()
            let procs = try (0..<2).map { w in
                try Child(["/usr/bin/python3", "-c", writer, n.mnt, "\(round * 10 + w)", logPath],
                          stdout: "/dev/null", stderr: "/dev/null")
            }
            let delay = UInt32.random(in: 700_000...2_500_000)
            usleep(delay)
            print("round \(round): \(what) after \(delay / 1000) ms")
            try crash()
            for p in procs {
                let deadline = Date().addingTimeInterval(20)
                while p.isRunning && Date() < deadline { usleep(20_000) }
                if p.isRunning { kill(p.pid, SIGKILL) }
                p.wait()
            }
            try n.start()
            n.stop()
            rederived += n.log.components(separatedBy: "sealed content commits re-derived").count - 1
            let v = n.twinfs(["verify", "--config", n.configPath, "--json"], timeout: 600)
            XCTAssertEqual(v.status, 0, "round \(round): journal and brick disagree after the \(what):\n\(v.stdout)\n\(n.log)")
            try assertAcknowledgedIntact(n, logPath)
        }
        print("\(what): recoveries that re-derived rows from seals: \(rederived) of 3")
    }

    /// Every file whose close returned has exactly its bytes in the brick, and a clean
    /// journal row with their XXH3-128.
    func assertAcknowledgedIntact(_ n: TestNode, _ logPath: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let acked = try String(contentsOfFile: logPath, encoding: .utf8).split(separator: "\n")
        XCTAssertGreaterThan(acked.count, 5, "the writers got work done", file: file, line: line)
        let check = runCommand(["python3", "-c", """
        import hashlib, sys
        mnt, brick = sys.argv[2], sys.argv[3]
        bad = 0
        for line in open(sys.argv[1]):
            p, h = line.split()
            b = brick + p[len(mnt):]
            try:
                if hashlib.sha256(open(b, 'rb').read()).hexdigest() != h: bad += 1; print('BAD', p)
            except OSError as e:
                bad += 1; print('LOST', p, e)
        print('bad', bad)
        """, logPath, n.mnt, n.brick], timeout: 600)
        XCTAssertTrue(check.stdout.hasSuffix("bad 0\n"), check.stdout + check.stderr, file: file, line: line)
        let j = try Journal(readOnlyPath: n.journalPath)
        defer { j.close(cleanShutdown: false) }
        var missing: [String] = []
        for a in acked {
            let p = String(a.split(separator: " ")[0])
            let rel = String(p.dropFirst(n.mnt.count + 1))
            guard let id = try j.id(atPath: rel), let r = try j.inode(id), !r.dirty,
                  r.hash == (try xxh128(path: n.brick + "/" + rel)).bytes else {
                missing.append(rel)
                continue
            }
        }
        XCTAssertEqual(missing, [], "acknowledged files without a clean journal row holding their hash", file: file, line: line)
    }
}
