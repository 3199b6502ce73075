import Foundation
import Glibc
import Journal
import Replication
import ReplicationTesting
import TwinCore
import Volume
import XCTest

/// Two in-process nodes over temp dirs, live when each test starts. Needs root (trusted.* xattrs).
class InProcessPairTestCase: XCTestCase {
    var link: InProcessLink!
    var a: SimNode!
    var b: SimNode!
    let ctx = RequestContext(uid: 0, gid: 0, pid: 0)

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
        let dir = try tempDir(self)
        let log = RunLog()
        link = InProcessLink(seed: 1)
        a = try SimNode(.a, dir: dir + "/a", link: link, log: log)
        b = try SimNode(.b, dir: dir + "/b", link: link, log: log)
        // A node starts degraded; catch-up switches it live once the peer answered.
        waitSettled()
    }

    override func tearDown() {
        a?.stop(clean: true)
        b?.stop(clean: true)
    }

    func rows(_ n: SimNode) -> [SplitBrainRow] { (try? n.journal.splitBrains()) ?? [] }

    func listed(_ r: SplitBrainRow, on n: SimNode) -> Bool {
        rows(n).contains { $0.id != 0 && $0.id == r.id || $0.path == r.path }
    }

    /// Every row on either node is listed on the other (the note may still be on its way).
    func assertListedOnBoth(file: StaticString = #filePath, line: UInt = #line) {
        let deadline = ContinuousClock.now + .seconds(5)
        while (rows(a).contains { !listed($0, on: b) } || rows(b).contains { !listed($0, on: a) }) && ContinuousClock.now < deadline {
            usleep(10_000)
        }
        for r in rows(a) { XCTAssertTrue(listed(r, on: b), "listed on a only: \(r.path) (id \(r.id)): \(r.reason)", file: file, line: line) }
        for r in rows(b) { XCTAssertTrue(listed(r, on: a), "listed on b only: \(r.path) (id \(r.id)): \(r.reason)", file: file, line: line) }
    }

    /// Apart, a renames `name` to `onA` and b to `onB`; back in step: that entry in split
    /// brain on both nodes, each holding its copy under its own name.
    func renamedApart(_ name: String, onA: String, onB: String) throws {
        link.setPartitioned(true)
        try a.volume.rename(parent: .root, name: name, newParent: .root, newName: onA, flags: 0)
        try b.volume.rename(parent: .root, name: name, newParent: .root, newName: onB, flags: 0)
        link.setPartitioned(false)
        waitSettled()
    }

    func mkdir(_ n: SimNode, _ name: String) throws {
        _ = try n.volume.mkdir(parent: .root, name: name, mode: 0o755, ctx: ctx)
    }

    /// A client's whole-file write of `path` on `n` in 1 MiB writes: created if missing, else
    /// opened with O_TRUNC; flushed and released (the close replicates it).
    func write(_ n: SimNode, _ path: String, _ bytes: [UInt8]) throws {
        let (p, name) = ReplicatedVolume.split(path)
        let parent = try XCTUnwrap(n.ref(p))
        let h: UInt64
        if let id = n.local.brick.readID(rel: path) {
            h = try n.volume.open(NodeRef(id: id, path: path), flags: O_WRONLY | O_TRUNC)
        } else {
            h = try n.volume.create(parent: parent, name: name, mode: 0o644, flags: O_WRONLY | O_CREAT, ctx: ctx).1
        }
        var off = 0
        while off < bytes.count {
            let end = min(bytes.count, off + (1 << 20))
            let r = bytes[off..<end].withUnsafeBytes { b in Result { () throws(FSError) -> Int in try n.volume.write(handle: h, offset: Int64(off), data: b) } }
            off += try r.get()
        }
        try n.volume.flush(handle: h)
        try n.volume.release(handle: h)
    }

    func waitSettled(file: StaticString = #filePath, line: UInt = #line) {
        let deadline = ContinuousClock.now + .seconds(10)
        while !(a.settled && b.settled) && ContinuousClock.now < deadline { usleep(10_000) }
        XCTAssertTrue(a.settled && b.settled, "the pair settles", file: file, line: line)
    }
}

/// The in-process link itself: it carries changes to the peer, and each fault does what it
/// says (a partition and a lost request leave the peer without the change, a lost reply
/// leaves it with it, a refusing disk leaves it without and answers the errno), after which
/// catch-up brings the pair back in step.
final class InProcessLinkTests: InProcessPairTestCase {
    func testALiveChangeReachesThePeerAndTheLinkDescribesItself() throws {
        XCTAssertTrue(a.volume.channel.isUp)
        XCTAssertEqual(a.volume.channel.linkDescription, "in-process a->b: up")
        let before = link.stats.delivered
        try mkdir(a, "Study")
        XCTAssertEqual(b.kind("Study"), .directory)
        XCTAssertEqual(b.local.brick.readID(rel: "Study"), a.local.brick.readID(rel: "Study"), "same stable id on both bricks")
        XCTAssertEqual(a.volume.mode, .live)
        XCTAssertGreaterThanOrEqual(link.stats.delivered, before + 1)
    }

    func testAPartitionLeavesThePeerWithoutTheChangeUntilCatchUp() throws {
        link.setPartitioned(true)
        XCTAssertFalse(a.volume.channel.isUp)
        XCTAssertEqual(a.volume.channel.linkDescription, "in-process a->b: partitioned")
        try mkdir(a, "Apart")
        XCTAssertNil(b.kind("Apart"))
        XCTAssertEqual(a.volume.mode, .degraded)
        link.setPartitioned(false)
        waitSettled()
        XCTAssertEqual(b.kind("Apart"), .directory)
    }

    func testALostRequestIsNotAppliedAndALostReplyIsAppliedBothEndInStep() throws {
        // The link stays down after the loss: catch-up cannot replay the change before we look.
        link.script(.cut, towards: .b) { $0.type == .mkdir }
        try mkdir(a, "Dropped")
        XCTAssertNil(b.kind("Dropped"), "a lost request never reaches the peer")
        XCTAssertEqual(a.volume.mode, .degraded, "no answer: the peer is treated as down")
        link.setPartitioned(false)
        waitSettled()
        link.script(.loseReply, towards: .b) { $0.type == .mkdir }
        try mkdir(a, "Unanswered")
        XCTAssertEqual(b.kind("Unanswered"), .directory, "the peer applied it; only the answer was lost")
        waitSettled()
        XCTAssertEqual(b.kind("Dropped"), .directory)
        XCTAssertEqual(link.stats.dropped, 1)
        XCTAssertEqual(link.stats.lostReplies, 1)
    }

    func testARefusingDiskAnswersItsErrnoWithoutApplyingAndTheChangeStaysOwed() throws {
        link.setDiskRefusal(ENOSPC, on: .b)
        try mkdir(a, "Full")
        XCTAssertNil(b.kind("Full"), "a refusing disk applies nothing")
        XCTAssertEqual(try a.journal.peerBacklog().ops, 1, "owed, not a split brain")
        XCTAssertEqual(try a.journal.splitBrains(), [])
        link.setDiskRefusal(nil, on: .b)
        waitSettled()
        XCTAssertEqual(b.kind("Full"), .directory)
        XCTAssertGreaterThanOrEqual(link.stats.refused, 1)
    }

    func testTheSameSeedMakesTheSameFaultDecisions() {
        func decisions(_ seed: UInt64) -> [UInt64] {
            var g = SeededGenerator(seed: seed)
            return (0..<4).map { _ in g.next() }
        }
        XCTAssertEqual(decisions(7), decisions(7))
        XCTAssertNotEqual(decisions(7), decisions(8))
    }
}
