import Foundation
import Glibc
import Journal
import PeerProtocol
import Replication
import ReplicationTesting
import TwinCore
import XCTest

/// Split brains found by the receiving side of a change (it answers EBADE and records the
/// entry) must be listed on the sender too, even when that answer never reaches it.
class OneSidedSplitTestCase: InProcessPairTestCase {}

/// Seeds 2628 and 3485: apart, b rewrote f (3485: renamed it) and a deleted it. Back in step,
/// b refused a's replayed unlink and recorded the split brain, but the answer was lost; b's
/// client then deleted its own f (its copy in split brain), so a's second replay found nothing
/// (ENOENT, done). b listed f, a never did: the split had been told to a by the answer only.
final class RefusedReplayAnswerLostTests: OneSidedSplitTestCase {
    func testAGuardedReplayRefusedWhoseAnswerIsLostIsListedOnBothNodes() throws {
        try write(a, "f", payload(3000, seed: 1))
        let x = try XCTUnwrap(a.local.brick.readID(rel: "f"))
        link.setPartitioned(true)
        try write(b, "f", payload(5000, seed: 2))
        try a.volume.unlink(parent: .root, name: "f")
        // a's replayed unlink reaches b; b's answer is lost (b handles it, a never hears it).
        let unlink = PeerMessage.guarded(expect: [EntryExpectation(path: "f", stableID: x, xxh128: [])],
                                         change: .unlink(parentPath: "", name: "f"))
        guard case let .reply(_, errno, _) = b.service.handleBlocking(unlink, requestID: 0) else { return XCTFail("no reply") }
        XCTAssertEqual(errno, 52, "b refuses the unlink of the f it rewrote apart")
        XCTAssertTrue(b.volume.isSplit(x))
        try b.volume.unlink(parent: .root, name: "f")
        link.setPartitioned(false)
        waitSettled()
        XCTAssertFalse(rows(b).isEmpty)
        assertListedOnBoth()
    }
}

/// Seed 1601's shape: b changed f apart and refused a's whole-file send of it ("the peer sent
/// its copy, but this node changed the file too"), recording it; the answer was lost, and a's
/// file was no longer owed (or no longer there) when it would have sent it again: listed on b
/// only.
final class RefusedSendAnswerLostTests: OneSidedSplitTestCase {
    func testARefusedSendWhoseAnswerIsLostIsListedOnBothNodes() throws {
        try write(a, "f", payload(3000, seed: 1))
        let x = try XCTUnwrap(a.local.brick.readID(rel: "f"))
        link.setPartitioned(true)
        try write(b, "f", payload(5000, seed: 2))
        let stage = PeerMessage.stageWhole(parentPath: "", name: "f", mode: 0o100644, uid: 0, gid: 0, stableID: x, size: 3000)
        guard case let .reply(_, errno, _) = b.service.handleBlocking(stage, requestID: 0) else { return XCTFail("no reply") }
        XCTAssertEqual(errno, 52, "b refuses a's copy of the f it changed apart")
        XCTAssertTrue(b.volume.isSplit(x))
        link.setPartitioned(false)
        waitSettled()
        assertListedOnBoth()
        XCTAssertTrue(a.volume.isSplit(x), "a lists f too")
    }
}
