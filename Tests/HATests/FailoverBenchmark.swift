import Foundation
import Glibc
import TestSupport
import XCTest

/// The failover benchmark (not a timed test): runs only with TWINFS_HA_BENCH=1, prints the
/// table README quotes and writes it to bench/out/ha-<time>.md. Default daemon settings.
/// TWINFS_HA_BENCH_REPS (default 5), TWINFS_HA_BENCH_SOAK seconds of the false-takeover run
/// under CPU and disk load (default 600).
final class FailoverBenchmark: HATestCase {
    override func setUpWithError() throws {
        guard ProcessInfo.processInfo.environment["TWINFS_HA_BENCH"] == "1" else { throw XCTSkip("benchmark: set TWINFS_HA_BENCH=1") }
    }

    static var reps: Int { Int(ProcessInfo.processInfo.environment["TWINFS_HA_BENCH_REPS"] ?? "") ?? 5 }
    static var soak: Double { Double(ProcessInfo.processInfo.environment["TWINFS_HA_BENCH_SOAK"] ?? "") ?? 600 }

    func row(_ name: String, _ outages: [Double], _ switches: [Double], _ note: String = "") -> String {
        func mmm(_ v: [Double]) -> String {
            let s = v.sorted()
            guard !s.isEmpty else { return "-" }
            return "\(Int(s.first!)) / **\(Int(s[s.count / 2]))** / \(Int(s.last!))"
        }
        return "| \(name) | \(outages.count) | \(mmm(outages)) | \(mmm(switches)) | \(note) |"
    }

    func testFailoverBenchmark() throws {
        var rows: [String] = []
        func freeze(_ seconds: Double) -> (Pair) throws -> Void {
            { p in
                p.daemons[.a]?.signal(SIGSTOP)
                usleep(UInt32(seconds * 1_000_000))
                p.daemons[.a]?.signal(SIGCONT)
            }
        }
        for (name, witness, duration, inject) in [
            ("kill -9 of the owner's daemon and service", false, 5.0, { (p: Pair) throws in
                p.daemons[.a]?.signal(SIGKILL); p.servers[.a]?.signal(SIGKILL) }),
            ("link down on the owner (carrier)", false, 5.0, { (p: Pair) throws in try p.topo.cutLink(node: .a, mode: .carrier) }),
            ("kill -9 of the owner, with a witness", true, 5.0, { (p: Pair) throws in
                p.daemons[.a]?.signal(SIGKILL); p.servers[.a]?.signal(SIGKILL) }),
            ("link down on the owner, with a witness", true, 5.0, { (p: Pair) throws in try p.topo.cutLink(node: .a, mode: .carrier) }),
            ("kill -STOP of the owner's daemon for 5 s, then -CONT", false, 9.0, freeze(5)),
            ("kill -STOP of the owner's daemon for 2 s, then -CONT, with a witness", true, 6.0, freeze(2)),
        ] as [(String, Bool, Double, (Pair) throws -> Void)] {
            var outages: [Double] = [], switches: [Double] = []
            var holders = 0
            for _ in 0..<Self.reps {
                let p = try startPair(witness: witness, defaults: true)
                let (r, t) = try probe(p, duration: duration) { try inject(p) }
                outages.append(r.maxOutageMs)
                switches.append(r.timeToOtherNode(after: t) ?? -1)
                p.sampling.with { $0 = false }
                holders = max(holders, p.maxHolders.with { $0 })
                p.topo.destroy()
            }
            rows.append(row(name, outages, switches, "most kernels holding the address at once: \(holders)"))
        }
        // Partition with a witness: never two owners, and the client is never stranded.
        var maxHolders = 0
        var outages: [Double] = []
        for _ in 0..<Self.reps {
            let p = try startPair(witness: true, defaults: true)
            let (r, _) = try probe(p, duration: 9) {
                try p.topo.partition(); usleep(4_000_000); try p.topo.unpartition()
            }
            maxHolders = max(maxHolders, p.maxHolders.with { $0 })
            outages.append(r.maxOutageMs)
            p.sampling.with { $0 = false }
            p.topo.destroy()
        }
        rows.append(row("heartbeat cut 4 s with a witness (client side)", outages, [], "most holders at once: \(maxHolders)"))
        // False takeovers: a quiet pair under CPU and disk load for the soak time.
        if Self.soak > 0 {
        let p = try startPair(defaults: true)
        let load = (0..<3).compactMap { i in
            try? p.topo.spawn(.client, ["sh", "-c", i < 2 ? "while :; do :; done" : "while :; do dd if=/dev/zero of=\(p.topo.workDir)/load bs=1M count=256 conv=fsync 2>/dev/null; done"], log: "load\(i).log")
        }
        let (c, json) = try p.topo.startProbe(target: p.vip, duration: Self.soak)
        XCTAssertNotNil(c.wait(timeout: Self.soak + 60))
        for l in load { l.stop(signal: SIGKILL) }
        let r = try ProbeReport.load(json)
        let sa = p.status(.a), sb = p.status(.b)
        let transitions = (sa["transitions"] as? [[String: Any]] ?? []).filter { ($0["event"] as? String) == "releaseip" }.count
        let fenced = (sa["fencings"] as? Int ?? 0) + (sb["fencings"] as? Int ?? 0)
        let stalls = (sa["stalls"] as? Int ?? 0) + (sb["stalls"] as? Int ?? 0)
        rows.append("| soak \(Int(Self.soak)) s under 2 busy CPU loops + fsync'd dd | 1 | \(Int(r.maxOutageMs)) | - | switches \(r.switches.count), releases \(transitions), holds dropped \(fenced), daemon stalls \(stalls), probes \(r.summary.probes), failed \(r.summary.failed), most kernels holding at once \(p.maxHolders.with { $0 }) |")
        }
        let table = (["| scenario | runs | client outage ms min / **median** / max | time to answer from the other node ms | notes |",
                      "|---|---|---|---|---|"] + rows).joined(separator: "\n")
        print(table)
        let out = HATestCase.repoRoot + "/bench/out"
        try? FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try? table.write(toFile: out + "/ha-\(Int(Date().timeIntervalSince1970)).md", atomically: true, encoding: .utf8)
    }
}
