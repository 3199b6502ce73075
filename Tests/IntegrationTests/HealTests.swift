import Fixity
import Foundation
import Glibc
import Journal
import TwinCore
import TestSupport
import XCTest

/// Self-heal with real node processes and mounts: a replaced disk rebuilt while the mount
/// serves, a node killed during its own rebuild, bit rot found by scrub, split brain resolved
/// by each policy, and `heal info` on a journal with a million pending entries. Every
/// scenario ends with both bricks compared by XXH3-128.
final class HealTests: XCTestCase {
    /// A DICOM-like archive: studies / series / instances of mixed sizes. Returns path -> seed.
    func writeArchive(_ root: String, studies: Int, series: Int, instances: Int, seedBase: UInt64 = 0) throws -> [String: (Int, UInt64)] {
        var files: [String: (Int, UInt64)] = [:]
        var n: UInt64 = seedBase
        for s in 0..<studies {
            let study = "study-\(s)"
            XCTAssertEqual(mkdir(root + "/" + study, 0o755), 0)
            for r in 0..<series {
                let dir = "\(study)/series-\(r)"
                XCTAssertEqual(mkdir(root + "/" + dir, 0o750), 0)
                for i in 0..<instances {
                    n += 1
                    // Mostly small CT/MR slices, some CR/DX-sized images, a few empty files.
                    let size: Int
                    switch n % 100 {
                    case 0: size = 0
                    case 1...2: size = 1_000_000 + Int(n % 7) * 150_000
                    case 3...12: size = 100_000 + Int(n % 13) * 25_000
                    default: size = 4_000 + Int(n % 11) * 4_000
                    }
                    let rel = "\(dir)/img-\(i).dcm"
                    try put(root + "/" + rel, pseudoRandomBytes(size, seed: n))
                    files[rel] = (size, n)
                }
            }
        }
        return files
    }

    func wipe(_ n: TestNode) {
        let r = sh("rm -rf '\(n.brick)' && mkdir -p '\(n.brick)' && rm -f '\(n.journalPath)'*")
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func heal(_ n: TestNode, _ args: [String]) -> [String: Any] {
        let r = n.twinfs(["heal"] + args + ["--config", n.configPath, "--json"], timeout: 120)
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func healInfo(_ n: TestNode) -> [[String: Any]] { heal(n, ["info", "--summary"])["nodes"] as? [[String: Any]] ?? [] }

    // MARK: - (i) disk replacement

    func testReplacedDiskIsRebuiltWhileTheMountServesCorrectBytes() throws {
        // Throttled so that the checks below run while the rebuild is still under way.
        let c = try cluster(extraConfig: "[heal]\nrate_mb = 25\nconcurrency = 4\n")
        waitHealthy(c)
        let files = try writeArchive(c.a.mnt, studies: 50, series: 4, instances: 25)
        XCTAssertEqual(files.count, 5000)
        XCTAssertEqual(c.b.stop(), 0)
        wipe(c.b)
        try c.b.start()

        // From the first moment: HEALING, the whole namespace, and correct bytes on b's mount.
        XCTAssertEqual(state(c.b), "HEALING")
        let top = try FileManager.default.contentsOfDirectory(atPath: c.b.mnt).sorted()
        XCTAssertEqual(top, (0..<50).map { "study-\($0)" }.sorted())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: c.b.mnt + "/study-49/series-3").count, 25)
        var rng = SystemRandomNumberGenerator()
        let sample = Array(files.keys).shuffled(using: &rng).prefix(150)
        for rel in sample {
            let (size, seed) = files[rel]!
            var st = stat()
            XCTAssertEqual(stat(c.b.mnt + "/" + rel, &st), 0, rel)
            XCTAssertEqual(Int(st.st_size), size, "size of \(rel) on b during the rebuild")
            XCTAssertEqual(try readFile(c.b.mnt + "/" + rel), pseudoRandomBytes(size, seed: seed), "bytes of \(rel) on b during the rebuild")
        }
        if let run = testRun, run.failureCount > 0 {
            print(c.b.log.split(separator: "\n").filter { $0.contains("error") || $0.contains("warning") || $0.contains("critical") }.prefix(40).joined(separator: "\n"))
        }
        // New writes during the rebuild land on both, from either side.
        for i in 0..<20 {
            try put(c.b.mnt + "/study-\(i)/new-on-b-\(i).dcm", pseudoRandomBytes(70_000, seed: 90_000 + UInt64(i)))
            try put(c.a.mnt + "/study-\(i)/new-on-a-\(i).dcm", pseudoRandomBytes(70_000, seed: 91_000 + UInt64(i)))
        }
        XCTAssertEqual(mkdir(c.b.mnt + "/study-during-rebuild", 0o755), 0)
        let info = healInfo(c.b)
        XCTAssertEqual(info.first?["state"] as? String, "HEALING", "\(info)")
        XCTAssertEqual((info.first?["crawl"] as? [String: Any])?["kind"] as? String, "rebuild")

        waitHealthy(c, timeout: 300)
        let done = healInfo(c.b)
        XCTAssertEqual(done.map { $0["pending_entries"] as? Int }, [0, 0], "\(done)")
        XCTAssertEqual((done.first?["crawl"] as? [String: Any])?["state"] as? String, "done")
        try assertReplicasIdentical(c)
        // The old journal of the lost disk is kept, never deleted.
        let state = try FileManager.default.contentsOfDirectory(atPath: (c.b.journalPath as NSString).deletingLastPathComponent)
        XCTAssertFalse(state.contains { $0.hasPrefix("journal.db.replaced-") }, "no old journal existed: nothing to keep")
    }
}
