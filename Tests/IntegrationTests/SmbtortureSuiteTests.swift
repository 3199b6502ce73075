import Foundation
import Glibc
import TestSupport
import XCTest

/// Issue 15's 22 smbtorture suites against a plain directory and against a pair's mount, the
/// same smbd serving both, side by side: nothing may fail on TwinFS that passes on the plain
/// directory in the same run. Once per profile by default; `TWINFS_SMBTORTURE_RUNS=10` for the
/// release check (each run takes a few minutes per profile; see README).
final class SmbtortureSuiteTests: XCTestCase {
    static let suites = [
        "base.rw1", "base.lock", "base.delete", "base.open", "base.unlink", "base.attr", "base.dir1", "base.rename",
        "base.chkpath", "base.tcon", "smb2.rw", "smb2.create", "smb2.lock", "smb2.rename", "smb2.read", "smb2.dir",
        "smb2.getinfo", "smb2.setinfo", "smb2.mkdir", "smb2.sharemode", "smb2.delete-on-close-perms", "smb2.fileid",
    ]

    static var runs: Int { Int(ProcessInfo.processInfo.environment["TWINFS_SMBTORTURE_RUNS"] ?? "") ?? 1 }

    func testIssue15SuitesWithTheRecommendedShare() throws { try compareSuites(.recommended) }

    func testIssue15SuitesWithAGenericShare() throws { try compareSuites(.generic) }

    func compareSuites(_ profile: SambaShareProfile) throws {
        guard runCommand(["which", "smbtorture"]).status == 0 else { throw XCTSkip("smbtorture not installed (apt-get install samba-testsuite)") }
        // A run takes 3-6 minutes; the nodes' watchdog (600 s by default) must outlast them all.
        let c = try startedCluster(peerExtra: "timeout = 2.0\n", watchdog: 900 + 600 * Double(Self.runs))
        waitHealthy(c)
        let plain = TestEnv.prefix + "/plain-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: plain) }
        // The generic profile's `nobody` must be able to create in both share roots.
        for p in [plain, c.a.mnt] { XCTAssertEqual(chmod(p, 0o777), 0) }
        let smb = try SambaServer(shares: [("plain", plain), ("pacs", c.a.mnt)], profile: profile)
        addTeardownBlock { smb.stop() }
        var table = SuiteTable()
        for run in 1...Self.runs {
            for suite in Self.suites {
                let p = smb.torture(share: "plain", [suite])
                let t = smb.torture(share: "pacs", [suite])
                table.add(suite, plain: p, pair: t)
                let regressions = t.failed.subtracting(p.failed)
                XCTAssertEqual(regressions, [], "\(profile) run \(run): \(suite) fails on TwinFS but passes on a plain directory:\n"
                               + t.output.suffix(4000) + "\nsmbd:\n" + smb.log.suffix(3000))
            }
        }
        print(table.render(profile: profile, runs: Self.runs))
        XCTAssertFalse(smb.log.contains("PANIC"), "smbd panicked:\n" + smb.log.suffix(6000))
        smb.stop()
        waitUntil("smbd's files closed on a") { status(c.a)["open_handles"] as? Int == 0 }
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }
}

/// Per suite: passes and failures on each share over the runs, and the time taken.
struct SuiteTable {
    struct Row { var plainFailed = 0, pairFailed = 0, plainSeconds = 0.0, pairSeconds = 0.0, failures: Set<String> = [] }
    var rows: [(String, Row)] = []

    mutating func add(_ suite: String, plain: SambaServer.TortureResult, pair: SambaServer.TortureResult) {
        var r = rows.first(where: { $0.0 == suite })?.1 ?? Row()
        if !plain.failed.isEmpty { r.plainFailed += 1 }
        if !pair.failed.isEmpty { r.pairFailed += 1 }
        r.plainSeconds += plain.seconds
        r.pairSeconds += pair.seconds
        r.failures.formUnion(pair.failed.subtracting(plain.failed))
        if let i = rows.firstIndex(where: { $0.0 == suite }) { rows[i].1 = r } else { rows.append((suite, r)) }
    }

    func render(profile: SambaShareProfile, runs: Int) -> String {
        var out = "smbtorture, \(profile) share, \(runs) run(s): suite, runs with a failure plain/pair, seconds plain/pair (ratio)\n"
        for (suite, r) in rows {
            let ratio = r.plainSeconds > 0 ? r.pairSeconds / r.plainSeconds : 0
            out += "  \(suite): \(r.plainFailed)/\(r.pairFailed), \(String(format: "%.1f/%.1f (%.2fx)", r.plainSeconds, r.pairSeconds, ratio))"
            out += r.failures.isEmpty ? "\n" : " pair only: \(r.failures.sorted())\n"
        }
        return out
    }
}

/// smb2.dir on a plain directory and on the pair's mount in the same run, with the node's
/// FUSE operations it caused (count and total time per operation). A benchmark, not a check:
/// `TWINFS_SMB_BENCH=1` runs it (about 2 minutes).
final class Smb2DirBenchmark: XCTestCase {
    func testSmb2DirOnThePairAgainstAPlainDirectory() throws {
        guard ProcessInfo.processInfo.environment["TWINFS_SMB_BENCH"] != nil else { throw XCTSkip("set TWINFS_SMB_BENCH=1") }
        guard runCommand(["which", "smbtorture"]).status == 0 else { throw XCTSkip("smbtorture not installed") }
        let c = try TestCluster(peerExtra: "timeout = 2.0\n")
        addTeardownBlock { c.destroy() }
        let port = try exportMetrics(c)
        try c.start()
        waitHealthy(c)
        let plain = TestEnv.prefix + "/plain-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: plain) }
        let profile = SambaShareProfile(rawValue: ProcessInfo.processInfo.environment["TWINFS_SMB_PROFILE"] ?? "") ?? .recommended
        for p in [plain, c.a.mnt] { XCTAssertEqual(chmod(p, 0o777), 0) }
        let smb = try SambaServer(shares: [("plain", plain), ("pacs", c.a.mnt)], profile: profile)
        addTeardownBlock { smb.stop() }
        for round in 1...2 {
            let p = smb.torture(share: "plain", ["smb2.dir"])
            let before = scrapeMetrics(port)
            let t = smb.torture(share: "pacs", ["smb2.dir"])
            let after = scrapeMetrics(port)
            print(String(format: "smb2.dir round %d (%@): plain %.1f s, pair %.1f s, ratio %.2fx; failed plain %@ pair %@",
                         round, profile.rawValue, p.seconds, t.seconds, t.seconds / p.seconds,
                         p.failed.sorted().description, t.failed.sorted().description))
            print(Self.operations(before, after))
        }
    }

    /// Per FUSE operation: how many the run made and their total time, busiest first.
    static func operations(_ before: [String: Double], _ after: [String: Double]) -> String {
        let prefix = "twinfs_operation_duration_seconds_count{op=\""
        var rows: [(String, Double, Double)] = []
        for (k, v) in after where k.hasPrefix(prefix) {
            let op = String(k.dropFirst(prefix.count).dropLast(2))
            let sumKey = "twinfs_operation_duration_seconds_sum{op=\"\(op)\"}"
            let n = v - (before[k] ?? 0), s = (after[sumKey] ?? 0) - (before[sumKey] ?? 0)
            if n > 0 { rows.append((op, n, s)) }
        }
        return rows.sorted { $0.2 > $1.2 }
            .map { String(format: "  %@: %.0f ops, %.2f s (%.3f ms each)", $0.0, $0.1, $0.2, $0.2 * 1000 / $0.1) }
            .joined(separator: "\n")
    }
}
