import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// Issue 14, twinfs-ha follows the data: the address fails back to the preferred node only once
/// that node is caught up (HEALTHY, nothing owed either way), not as soon as it is alive. The
/// shipped `50.twinfs` monitor watches the real TwinFS nodes.
final class FailbackTests: HATestCase {
    func testNoFailbackWhileThePreferredNodeIsCatchingUp() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/tc") else { throw XCTSkip("tc is not installed (iproute2)") }
        var nodes: [FSNode] = []
        var startNode: (Int) throws -> Void = { _ in }
        let script = try String(contentsOfFile: Self.repoRoot + "/ctdb-like/events/50.twinfs", encoding: .utf8)
        // Heartbeats on a network of their own: only the peer link (eth0) is slowed below.
        let p = try startPair(failback: 2, heartbeatLink: 1, extraScripts: ["50.twinfs": script], eventTimeout: 4) { p in
            (nodes, startNode) = try self.twinfsPair(p)
            return [.a: ["TWINFS_CONFIG": nodes[0].config, "TWINFS_BIN": Self.twinfs],
                    .b: ["TWINFS_CONFIG": nodes[1].config, "TWINFS_BIN": Self.twinfs]]
        }
        let image = try takeOverAndStoreWhatAMisses(p, nodes)
        // The peer link towards a runs at 8 Mbit/s: a's catch-up of 24 MB takes ~25 s.
        let sw = p.topo.namespace(.sw), port = p.topo.port(.a)
        XCTAssertEqual(runCommand(["ip", "netns", "exec", sw, "tc", "qdisc", "add", "dev", port, "root", "tbf",
                                   "rate", "8mbit", "burst", "32kb", "latency", "100ms"]).status, 0)
        addTeardownBlock { _ = runCommand(["ip", "netns", "exec", sw, "tc", "qdisc", "del", "dev", port, "root"]) }
        try startNode(0)
        XCTAssertTrue(waitUntil(30) { self.fsStatus(nodes[0])["state"] != nil }, "a's node did not start")
        try p.startDaemon(.a)
        let (sawCatchingUp, failedBackEarly) = watchCatchUp(p, nodes[0], seconds: 15)
        XCTAssertTrue(sawCatchingUp, "a was never seen catching up (the test proves nothing)")
        XCTAssertNil(failedBackEarly, (failedBackEarly ?? "") + "\n" + p.topo.readLog("ha-a.log").suffix(1500))
        XCTAssertTrue("\(p.status(.a)["transitions"] ?? "")".contains("catching-up"), "a's twinfs-ha did not note it is catching up: \(p.status(.a))")
        // Full speed again: a catches up, and only then the address fails back.
        _ = runCommand(["ip", "netns", "exec", sw, "tc", "qdisc", "del", "dev", port, "root"])
        XCTAssertTrue(waitUntil(120) { nodes.allSatisfy { self.state($0) == "HEALTHY" } }, "not HEALTHY: \(nodes.map { state($0) })")
        XCTAssertTrue(waitUntil(20) { p.holders() == [.a] }, "no failback to a once it was caught up; holders \(p.holders())\n" + p.topo.readLog("ha-a.log").suffix(1500))
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1)
        for i in 0..<24 {
            XCTAssertEqual(FileManager.default.contents(atPath: nodes[0].brick + "/study/im\(i).dcm").map { [UInt8]($0) }, image, "im\(i).dcm on a")
        }
    }

    func fsStatus(_ n: FSNode) -> [String: Any] {
        let r = runCommand([Self.twinfs, "status", "--config", n.config, "--json"], timeout: 10)
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    /// Machine a goes down (its twinfs-ha stops, its TwinFS node dies): b takes the address and
    /// stores 24 MB that a misses. Returns the image stored. (a's twinfs-ha restarts with its
    /// node: `ip netns exec` gives the daemon a mount namespace of its own, which would keep
    /// seeing a's dead mount.)
    private func takeOverAndStoreWhatAMisses(_ p: Pair, _ nodes: [FSNode]) throws -> [UInt8] {
        let pidA = try XCTUnwrap(fsStatus(nodes[0])["pid"] as? Int)
        p.daemons[.a]?.signal(SIGTERM)
        XCTAssertNotNil(p.daemons[.a]?.wait(timeout: 30), "a's twinfs-ha did not stop")
        kill(pid_t(pidA), SIGKILL)
        XCTAssertTrue(waitUntil(20) { p.holders() == [.b] },
                      "b did not take over from a dead node; holders \(p.holders())\n" + p.topo.readLog("b/state/events.log").suffix(2000))
        try FileManager.default.createDirectory(atPath: nodes[1].mnt + "/study", withIntermediateDirectories: true)
        let image = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        for i in 0..<24 {
            XCTAssertTrue(FileManager.default.createFile(atPath: nodes[1].mnt + "/study/im\(i).dcm", contents: Data(image)))
        }
        XCTAssertEqual(p.holders(), [.b])
        return image
    }

    /// Watches a for up to `seconds` while it catches up (alive, its monitor's checks pass
    /// within seconds, far less than the catch-up). Returns whether a was seen catching up,
    /// and what went wrong if the address moved to a before a was caught up.
    private func watchCatchUp(_ p: Pair, _ a: FSNode, seconds: Double) -> (Bool, String?) {
        let start = Date()
        var sawCatchingUp = false
        while Date().timeIntervalSince(start) < seconds {
            let s = fsStatus(a)
            let repl = s["replication"] as? [String: Any] ?? [:]
            let owed = (repl["peer_pending_changes"] as? Int ?? 0) + (repl["peer_pending_files"] as? Int ?? 0)
            let caughtUp = (s["state"] as? String) == "HEALTHY" && owed == 0
            if !caughtUp && s["state"] != nil { sawCatchingUp = true }
            if caughtUp { break }
            if p.holders() == [.a] {
                return (sawCatchingUp, "a took the address back while \(s["state"] ?? "?") with \(owed) changes or files still owed to it")
            }
            usleep(200_000)
        }
        return (sawCatchingUp, nil)
    }
}
