import Foundation
import Glibc
import TestSupport
import XCTest

/// kill -9 in the middle of heavy writes, and trees far larger than the process's fd limit.
final class CrashAndScaleTests: XCTestCase {
    /// Writers create files (half fsynced), append, truncate, rename and delete while the node
    /// is killed with SIGKILL at a random moment, three times. After each restart the journal
    /// agrees with the brick (`verify` exits 0) and every file whose close() succeeded has
    /// exactly the bytes written.
    func testKill9DuringHeavyWritesLeavesJournalAndBrickInAgreement() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        let writer = """
        import hashlib, os, random, sys
        root, seed, logp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        r = random.Random(seed)
        log = open(logp, 'a', buffering=1)
        i = 0
        try:
            os.makedirs(f'{root}/churn', exist_ok=True)
            while True:
                d = f'{root}/S{seed}/{i // 40:03d}/R{i % 5}'
                os.makedirs(d, exist_ok=True)
                p = f'{d}/IM{i:05d}.dcm'
                data = r.randbytes(r.choice([0, 1000, 65536, 524288, 1500000]))
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                for off in range(0, len(data), 131072):
                    os.write(fd, data[off:off + 131072])
                if r.random() < 0.5:
                    os.fsync(fd)
                os.close(fd)
                log.write(f'{p[len(root) + 1:]} {hashlib.sha256(data).hexdigest()}\\n')
                c = f'{root}/churn/c{seed}-{r.randrange(20)}'
                k = r.random()
                if k < 0.4:
                    with open(c, 'ab') as f: f.write(r.randbytes(r.randrange(1, 70000)))
                elif k < 0.55:
                    try: os.truncate(c, r.randrange(0, 5000))
                    except FileNotFoundError: pass
                elif k < 0.7:
                    try: os.rename(c, c + '.r')
                    except FileNotFoundError: pass
                elif k < 0.8:
                    try: os.unlink(c + '.r')
                    except FileNotFoundError: pass
                i += 1
        except OSError:
            pass
        """
        let logPath = n.dir + "/acked.log"
        for round in 0..<3 {
            try n.start()
            let procs = try AcknowledgedIngest.start(writer, root: n.mnt, seeds: [round * 10, round * 10 + 1], log: logPath)
            let delay = UInt32.random(in: 400_000...2_000_000)
            usleep(delay)
            print("round \(round): kill -9 after \(delay / 1000) ms")
            n.kill9()
            AcknowledgedIngest.reap(procs)
            // Restart: recovery runs before anything is served.
            try n.start()
            let st = try n.statusJSON()
            XCTAssertEqual(st["last_shutdown"] as? String, "crash")
            XCTAssertEqual(st["dirty_files"] as? Int, 0, "round \(round): every file cut off mid-write was re-hashed before serving")
            n.stop()
            let v = n.twinfs(["verify", "--config", n.configPath, "--json"], timeout: 600)
            XCTAssertEqual(v.status, 0, "round \(round): journal and brick disagree after kill -9:\n\(v.stdout)\n\(n.log)")
            let report = try JSONSerialization.jsonObject(with: Data(v.stdout.utf8)) as? [String: Any]
            XCTAssertEqual(report?["in_progress"] as? Int, 0, "nothing left unjudged")
        }
        // Every acknowledged file (close() returned success) is intact.
        try n.start()
        XCTAssertGreaterThan(try AcknowledgedIngest.lines(logPath).count, 10, "the writers got work done before each kill")
        XCTAssertEqual(AcknowledgedIngest.damaged(log: logPath, under: n.mnt), [])
    }

    /// A directory of 100,000 entries lists completely through the mount.
    func testDirectoryOf100000EntriesListsCorrectly() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        n.stop()
        // Filled in the brick (as an import would), then adopted by a journal rebuild.
        let made = runCommand(["python3", "-c", "import os,sys\nd=sys.argv[1]\nos.mkdir(d)\nfor i in range(100000): open(f'{d}/IM{i:06d}.dcm','wb').close()", n.brick + "/big"], timeout: 300)
        XCTAssertEqual(made.status, 0, made.stderr)
        XCTAssertEqual(n.twinfs(["journal", "rebuild", "--config", n.configPath], timeout: 900).status, 0)
        try n.start()
        let t0 = Date()
        let names = try FileManager.default.contentsOfDirectory(atPath: n.mnt + "/big")
        print("listed 100,000 entries in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        XCTAssertEqual(names.count, 100_000)
        XCTAssertEqual(Set(names).count, 100_000, "no duplicates")
        XCTAssertTrue(names.contains("IM099999.dcm") && names.contains("IM000000.dcm"))
        // And through a second listing method (getdents via ls -f).
        let ls = sh("ls -f \(n.mnt)/big | wc -l", timeout: 300)
        XCTAssertEqual(ls.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "100002")
    }

    /// 200,000 files walked and stat'ed through the mount while the node's open descriptors
    /// stay far below the 20,000 limit (no descriptor per known inode).
    func testWalkAndStat200000FilesWithoutRunningOutOfDescriptors() throws {
        let n = try TestNode()
        addTeardownBlock { n.destroy() }
        try n.start()
        n.stop()
        let made = runCommand(["python3", "-c", """
        import os, sys
        root = sys.argv[1]
        for d in range(200):
            os.makedirs(f'{root}/tree/S{d:03d}', exist_ok=True)
            for f in range(1000):
                open(f'{root}/tree/S{d:03d}/IM{f:04d}.dcm', 'wb').close()
        """, n.brick], timeout: 600)
        XCTAssertEqual(made.status, 0, made.stderr)
        XCTAssertEqual(n.twinfs(["journal", "rebuild", "--config", n.configPath], timeout: 1200).status, 0)
        try n.start()
        let t0 = Date()
        let walk = runCommand(["python3", "-c", """
        import os, sys
        n = 0
        for dp, dns, fns in os.walk(sys.argv[1]):
            for f in fns:
                os.lstat(os.path.join(dp, f)); n += 1
        print(n)
        """, n.mnt + "/tree"], timeout: 1200)
        print("walked and stat'ed 200,000 files in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        XCTAssertEqual(walk.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "200000", walk.stderr + n.log)
        let pid = try XCTUnwrap(n.process?.pid)
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
        XCTAssertLessThan(fds, 200, "the node holds no descriptor per inode")
        XCTAssertTrue(n.process?.isRunning == true)
    }
}
