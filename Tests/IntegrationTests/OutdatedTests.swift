import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// A node that starts without its peer and may lack acknowledged changes never serves them as
/// current (issue 14, case 1): it is OUTDATED until the peer is reachable or an admin forces it.
final class OutdatedTests: XCTestCase {
    /// v1 on both; b stops; a stores v2 and a new file; a dies; b starts alone. Before, b served
    /// v1 and ENOENT for the new file (both acknowledged to a PACS). Now b answers EIO and says
    /// OUTDATED; once a is back, b catches up and serves v2 and the new file.
    func testANodeStartingWithoutItsPeerAfterMissingChangesServesNothingUntilItCatchesUp() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        let v1 = pseudoRandomBytes(30_000, seed: 1), v2 = pseudoRandomBytes(40_000, seed: 2), n = pseudoRandomBytes(5_000, seed: 3)
        try put(c.a.mnt + "/r.dcm", v1)
        waitUntil("r.dcm on b", timeout: 30) { (try? readFile(c.b.brick + "/r.dcm")) == v1 }
        XCTAssertEqual(c.b.stop(), 0)
        try put(c.a.mnt + "/r.dcm", v2)
        try put(c.a.mnt + "/new.dcm", n)
        c.a.kill9()
        try c.b.start()
        XCTAssertEqual(state(c.b), "OUTDATED")
        XCTAssertThrowsError(try readFile(c.b.mnt + "/r.dcm"), "an outdated node serves nothing")
        var st = stat()
        XCTAssertEqual(stat(c.b.mnt + "/new.dcm", &st), -1)
        XCTAssertEqual(errno, EIO, "not ENOENT: the node cannot tell")
        XCTAssertEqual(mkdir(c.b.mnt + "/x", 0o755), -1, "no writes either")
        let human = c.b.twinfs(["status", "--config", c.b.configPath]).stdout
        XCTAssertTrue(human.contains("twinfs promote --force"), human)
        // The shipped HA monitor keeps the address off an outdated node.
        let outdated = monitor(c.b)
        XCTAssertEqual(outdated.status, 1, outdated.stderr)
        XCTAssertTrue(outdated.stderr.contains("OUTDATED"), outdated.stderr)

        try c.a.start()
        waitHealthy(c)
        XCTAssertEqual(try readFile(c.b.mnt + "/r.dcm"), v2)
        XCTAssertEqual(try readFile(c.b.mnt + "/new.dcm"), n)
        XCTAssertEqual(monitor(c.b).status, 0, "caught up: b may hold the address again")
        try assertReplicasIdentical(c)
    }

    /// ctdb-like/events/50.twinfs monitor, as twinfs-ha runs it, against node `n`.
    func monitor(_ n: TestNode) -> CommandResult {
        let script = TestEnv.repoRoot + "/ctdb-like/events/50.twinfs"
        return runCommand(["/bin/sh", script, "monitor"], timeout: 30,
                          environment: ["TWINFS_CONFIG": n.configPath, "TWINFS_BIN": TestEnv.binary, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                        "TWINFS_HA_NODE": n.name])
    }

    /// The survivor (it served alone and owes its peer) restarts alone and serves; an outdated
    /// node serves once an admin runs `twinfs promote --force`, and refuses without --force.
    func testTheSurvivorServesAloneAndAnAdminCanForceAnOutdatedNode() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        try put(c.a.mnt + "/before.dcm", pseudoRandomBytes(1000, seed: 4))
        waitUntil("before.dcm on b", timeout: 30) { FileManager.default.fileExists(atPath: c.b.brick + "/before.dcm") }
        c.b.kill9()
        try put(c.a.mnt + "/alone.dcm", pseudoRandomBytes(2000, seed: 5))
        XCTAssertEqual(c.a.stop(), 0)
        try c.a.start()
        XCTAssertEqual(state(c.a), "DEGRADED", "a owes b its changes: it was the one serving alone")
        XCTAssertEqual(try readFile(c.a.mnt + "/alone.dcm"), pseudoRandomBytes(2000, seed: 5))
        XCTAssertEqual(c.a.stop(), 0)

        try c.b.start()
        XCTAssertEqual(state(c.b), "OUTDATED")
        let refused = c.b.twinfs(["promote", "--config", c.b.configPath])
        XCTAssertNotEqual(refused.status, 0, "promote without --force changes nothing")
        XCTAssertEqual(state(c.b), "OUTDATED")
        let forced = c.b.twinfs(["promote", "--force", "--config", c.b.configPath])
        XCTAssertEqual(forced.status, 0, forced.stderr)
        XCTAssertEqual(try readFile(c.b.mnt + "/before.dcm"), pseudoRandomBytes(1000, seed: 4), "forced: b serves what it has")
        XCTAssertNotEqual(state(c.b), "OUTDATED")
        try c.a.start()
        waitHealthy(c)
        XCTAssertEqual(try readFile(c.b.mnt + "/alone.dcm"), pseudoRandomBytes(2000, seed: 5))
        try assertReplicasIdentical(c)
    }
}
