import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// An unlink or rename made on one node while the nodes were apart reaches the other node late
/// (after many other owed changes), after that node's client rewrote the same file and the
/// rewrite already travelled back. The replay must never delete or move a version its sender
/// did not see: the rewrite survives, and the pair either ends identical or says SPLIT-BRAIN
/// on both nodes (never HEALTHY with different bricks).
final class LateReplayTests: XCTestCase {
    /// Cuts the link and waits until both nodes serve alone.
    func partition(_ c: TestCluster) {
        c.cut(.reset)
        waitUntil("both nodes degraded", timeout: 30) {
            replication(c.a)["mode"] as? String == "degraded" && replication(c.b)["mode"] as? String == "degraded"
        }
    }

    /// Lets the pair meet again and waits until both have settled (nothing owed either way,
    /// or a split brain reported).
    func heal(_ c: TestCluster) {
        c.restore()
        waitUntil("both nodes settled", timeout: 120) {
            let s = [state(c.a), state(c.b)]
            let owed = [c.a, c.b].map { n -> Int in
                let r = replication(n)
                return (r["pending_changes"] as? Int ?? 1) + (r["pending_files"] as? Int ?? 1)
            }
            return s.allSatisfy { $0 == "HEALTHY" } || (s.allSatisfy { $0 == "SPLIT-BRAIN" } && owed == [0, 0])
        }
    }

    /// Many owed changes on a, so that its own replay comes after b's rewrite reached a.
    func oweManyChanges(on n: TestNode) {
        for i in 0..<150 { XCTAssertEqual(mkdir(n.mnt + "/filler-\(i)", 0o755), 0) }
    }

    func assertNoSilentDifference(_ c: TestCluster, file: StaticString = #filePath, line: UInt = #line) throws {
        let s = [state(c.a), state(c.b)]
        if s == ["HEALTHY", "HEALTHY"] {
            try assertReplicasIdentical(c, file: file, line: line)
        } else {
            XCTAssertEqual(s, ["SPLIT-BRAIN", "SPLIT-BRAIN"], "a node that differs says so", file: file, line: line)
        }
    }

    /// st/NAME at v1 on both; apart, a owes many changes and then makes `change`; b's client
    /// writes v2 over st/NAME; the pair meets again. Returns the pair and v2.
    func lateReplay(of name: String, seed: UInt64, change: (TestCluster) -> Void) throws -> (TestCluster, [UInt8]) {
        let c = try cluster(timeout: 1.0)
        XCTAssertEqual(mkdir(c.a.mnt + "/st", 0o755), 0)
        let v1 = pseudoRandomBytes(50_000, seed: seed), v2 = pseudoRandomBytes(60_000, seed: seed + 1)
        try put(c.a.mnt + "/st/" + name, v1)
        waitUntil("\(name) on b", timeout: 30) { (try? readFile(c.b.brick + "/st/" + name)) == v1 }
        partition(c)
        oweManyChanges(on: c.a)
        change(c)
        try put(c.b.mnt + "/st/" + name, v2)
        heal(c)
        return (c, v2)
    }

    func testALateReplayedUnlinkNeverDeletesARewriteItsSenderDidNotSee() throws {
        let (c, v2) = try lateReplay(of: "P.dcm", seed: 1) { c in XCTAssertEqual(unlink(c.a.mnt + "/st/P.dcm"), 0) }
        XCTAssertEqual(try? readFile(c.b.brick + "/st/P.dcm"), v2, "b's client's rewrite was deleted by a's late replay")
        try assertNoSilentDifference(c)
    }

    func testALateReplayedRenameNeverMovesARewriteItsSenderDidNotSee() throws {
        let (c, v2) = try lateReplay(of: "Q.dcm", seed: 3) { c in
            XCTAssertEqual(rename(c.a.mnt + "/st/Q.dcm", c.a.mnt + "/st/Q-final.dcm"), 0)
        }
        XCTAssertEqual(try? readFile(c.b.brick + "/st/Q.dcm"), v2, "b's client's rewrite stays where its client put it")
        try assertNoSilentDifference(c)
    }
}
