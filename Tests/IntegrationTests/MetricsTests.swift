import Foundation
import Glibc
import TestSupport
import XCTest

/// The Prometheus endpoint of a real node: every operation counted and timed, the gauges
/// following the node's state (here: its peer stopped, what it owes growing).
final class MetricsTests: XCTestCase {
    func testPrometheusEndpointAndThePairOnOneScreen() throws {
        let c = try TestCluster(peerExtra: "timeout = 1.0\n")
        addTeardownBlock { c.destroy() }
        let port = try exportMetrics(c) // only node a
        try c.start()
        waitHealthy(c)
        for i in 0..<10 { try put(c.a.mnt + "/img\(i).dcm", pseudoRandomBytes(100_000, seed: UInt64(i))) }
        var m = scrapeMetrics(port)
        XCTAssertGreaterThanOrEqual(m["twinfs_operations_total{op=\"create\"}"] ?? 0, 10, "\(m.keys.sorted().prefix(40))")
        XCTAssertGreaterThanOrEqual(m["twinfs_written_bytes_total"] ?? 0, 1_000_000)
        XCTAssertGreaterThanOrEqual(m["twinfs_operation_duration_seconds_count{op=\"release\"}"] ?? 0, 10)
        XCTAssertNotNil(m["twinfs_operation_duration_seconds_bucket{op=\"write\",le=\"0.001\"}"], "latency histogram buckets")
        XCTAssertEqual(m["twinfs_state{state=\"HEALTHY\"}"], 1)
        XCTAssertEqual(m["twinfs_peer_link_up"], 1)
        XCTAssertEqual(m["twinfs_files"], 10)
        // The pair on one screen: `twinfs status` on a shows b as b reports itself.
        let text = c.a.twinfs(["status", "--config", c.a.configPath]).stdout
        XCTAssertTrue(text.contains("Node b (peer)  state HEALTHY"), text)
        XCTAssertTrue(text.contains("files       10 ("), text)
        let doc = (try? JSONSerialization.jsonObject(with: Data(c.a.twinfs(["status", "--config", c.a.configPath, "--json", "--cluster"]).stdout.utf8))) as? [String: Any]
        XCTAssertEqual((doc?["peer_view"] as? [String: Any])?["state"] as? String, "HEALTHY")
        XCTAssertEqual((doc?["peer_view"] as? [String: Any])?["files"] as? Int, 10)
        XCTAssertGreaterThan((doc?["peer_view"] as? [String: Any])?["brick_free_bytes"] as? Int ?? 0, 0)
        // The peer's brick and journal, where an admin finds them on that machine.
        let peerBlock = text.components(separatedBy: "Node b (peer)").last ?? ""
        XCTAssertTrue(peerBlock.contains("brick       \(c.b.brick)  ("), text)
        XCTAssertTrue(peerBlock.contains("journal     \(c.b.journalPath) ("), text)
        XCTAssertEqual((doc?["peer_view"] as? [String: Any])?["journal_path"] as? String, c.b.journalPath)
        XCTAssertGreaterThan((doc?["peer_view"] as? [String: Any])?["journal_bytes"] as? Int ?? 0, 0)

        // The peer goes away: DEGRADED, the link down, and what a owes it grows.
        XCTAssertEqual(c.b.stop(), 0)
        for i in 10..<15 { try put(c.a.mnt + "/img\(i).dcm", pseudoRandomBytes(50_000, seed: UInt64(i))) }
        m = scrapeMetrics(port)
        XCTAssertEqual(m["twinfs_state{state=\"DEGRADED\"}"], 1)
        XCTAssertEqual(m["twinfs_state{state=\"HEALTHY\"}"], 0)
        XCTAssertEqual(m["twinfs_peer_link_up"], 0)
        XCTAssertGreaterThanOrEqual(m["twinfs_pending_files"] ?? 0, 5)
        XCTAssertGreaterThanOrEqual(m["twinfs_pending_bytes"] ?? 0, 250_000)
        XCTAssertEqual(runCommand(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"]).stdout, "404")
        XCTAssertTrue(c.a.twinfs(["status", "--config", c.a.configPath]).stdout.contains("Node b (peer)  not reachable"))
        // The unreachable peer, as the admin reads it: cause and fix in one line.
        // (Between reconnect attempts; during one the link reads "connecting".)
        var link = ""
        waitUntil("the link reads as unreachable", timeout: 10) {
            link = replication(c.a)["link"] as? String ?? ""
            return link.contains("peer unreachable at")
        }
        XCTAssertTrue(link.contains("check that the peer node runs") && !link.contains("\n"), link)
        try c.b.start()
        waitHealthy(c)
        XCTAssertEqual(scrapeMetrics(port)["twinfs_pending_files"], 0)
        try assertReplicasIdentical(c)
    }
}
