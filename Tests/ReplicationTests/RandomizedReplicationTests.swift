import Fixity
import Foundation
import Glibc
import XCTest

/// Jepsen-style: two in-process nodes under random operations and random faults (partitions,
/// lost requests and replies, delays, a peer disk that refuses, crashes of either node), then
/// the link restored and both bricks, both journals and every acknowledged write checked.
///
/// TWINFS_SEED=K runs seed K alone (and prints its history); TWINFS_SEEDS=N runs seeds 1...N
/// (TWINFS_SEED_BASE moves the start); TWINFS_STEPS sets the steps per seed. Needs root
/// (trusted.* xattrs). Debugging: TWINFS_WATCH=path notes each node's entry at path after every
/// step; TWINFS_LOG_INFO=1 keeps info lines too, TWINFS_LOG_LINES=N the last N (400).
/// Between steps the pair is left to finish its background work (`Simulation.quiesce`), which
/// makes a seed's run much more reproducible; TWINFS_RACY=1 races the steps against it instead.
final class RandomizedReplicationTests: XCTestCase {
    /// Where it stands (2026-12-08): at d7b462d, 69 of seeds 1...1000 failed in one run; at
    /// b071445, 7 of seeds 1...4000 (506 s in 10 processes while three builds ran beside it).
    /// The causes found on the way, each with a test in RandomizedFindingsTests (or the file
    /// named there) that fails without its fix, are in the commits of that day; the model's own
    /// errors were: a split brain is concurrent when both nodes changed the same file by id
    /// whatever its names (287), a change inside a directory counts for the directory (111),
    /// split brains that follow from a justified one are justified (`unjustified`,
    /// `withCascades`: 263, 544, 814), and a write that moved with its file by the other
    /// node's rename is not lost (2471). What was left at b071445: bricks that differ with
    /// nothing listed (1109, 3532, 3621), a split brain listed on one node only (2628, 3485),
    /// a pair that does not settle (2958), all fixed in the merges after it
    /// (DivergenceFindingsTests, OneSidedSplitFindingsTests, SettleFindingsTests). At 5b6f71d:
    /// 1 of seeds 1...4000 (1719, "f1 only on b", not analysed; 482 s in 10 processes).
    /// A process leaks about 23 descriptors per seed (each node's journal, lock, intent log and
    /// brick root stay open after the seed: its objects are never freed), so one process stops
    /// near seed 870 under a 20,000 descriptor limit ("unable to open database file"): run more
    /// seeds in several processes (`.ci/seeds`), which also uses both cores.
    /// CI runs seeds 1...150 (all passed the runs of 1...2000 at 3eff25c and 1...4000 at
    /// b071445) and the seeds the day's fixes were found by. A seed on this list that fails is
    /// run once more and fails the test only if it fails again; either way its history and log
    /// are printed, a finding to rerun with TWINFS_SEED, not noise.
    /// TWINFS_SEEDS=N runs 1...N.
    static let ciSeeds: [UInt64] = Array(1...150) + [
        // Seeds a fix of this stop was found by (each failed before its fix).
        287, 325, 137, 478, 544, 702, 814, 984, 1100, 1324, 1521, 2471
    ]

    func testRandomOperationsUnderFaultsLoseNoAcknowledgedWrite() throws {
        guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
        let env = ProcessInfo.processInfo.environment
        var settings = Simulation.Settings()
        if let s = env["TWINFS_STEPS"].flatMap(Int.init) { settings.steps = s }
        // TWINFS_FAULTS_OFF: a comma list of the faults to leave out ("partitions", "crashes").
        let without = Set((env["TWINFS_FAULTS_OFF"] ?? "").split(separator: ",").map(String.init))
        settings.partitions = !without.contains("partitions")
        settings.crashes = !without.contains("crashes")
        if env["TWINFS_RACY"] == "1" { settings.quiesce = false }
        let seeds: [UInt64]
        let single = env["TWINFS_SEED"].flatMap(UInt64.init)
        if let single {
            seeds = [single]
        } else if let count = env["TWINFS_SEEDS"].flatMap(UInt64.init) {
            let base = env["TWINFS_SEED_BASE"].flatMap(UInt64.init) ?? 1
            seeds = Array(base..<base + count)
        } else {
            seeds = Self.ciSeeds
        }
        // tmpfs when there is one: the run is fsync-bound, and the seeds are many.
        let root = (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()) + "/twinfs-jepsen-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let started = ContinuousClock.now
        var failed: [UInt64] = []
        var flaky: [UInt64] = []
        let usesCIList = single == nil && env["TWINFS_SEEDS"] == nil
        for seed in seeds {
            let sim = try Simulation(seed: seed, settings: settings, root: root)
            let problems = try sim.run()
            // TWINFS_DIGEST=1: one line per seed naming its history, to compare two runs.
            if env["TWINFS_DIGEST"] == "1" {
                let digest = XXH128Hasher.hash(Array(sim.history.joined(separator: "\n").utf8)).hex.prefix(16)
                print("seed \(seed) history \(digest) \(problems.isEmpty ? "passed" : "FAILED")")
            }
            if single != nil || !problems.isEmpty {
                print("seed \(seed): \(problems.isEmpty ? "passed" : "FAILED") (\(sim.link.stats))")
                sim.history.forEach { print("  \($0)") }
            }
            guard !problems.isEmpty else { continue }
            print("  node log (last lines):")
            sim.log.all.forEach { print("    \($0)") }
            // CI's list: a seed runs the same history on most runs, not all (threads still race
            // inside a step). One that fails and then passes is printed above as a finding to
            // replay with TWINFS_SEED, and fails CI only if it fails again.
            if usesCIList, try Simulation(seed: seed, settings: settings, root: root).run().isEmpty {
                flaky.append(seed)
                continue
            }
            failed.append(seed)
            for p in problems { XCTFail("seed \(seed) (rerun: TWINFS_SEED=\(seed)): \(p)") }
        }
        print("randomized replication: \(seeds.count) seeds, \(settings.steps) steps each, in \(ContinuousClock.now - started); failed seeds: \(failed); failed once, passed on a second run: \(flaky)")
    }
}
