import Healer
import PeerProtocol
import XCTest

/// The healer's decisions, without disks or peers: which copy a full heal trusts, which
/// split-brain copy a policy picks, and how the throttle paces.
final class HealLogicTests: XCTestCase {
    let good = [UInt8](repeating: 1, count: 16), other = [UInt8](repeating: 2, count: 16), rot = [UInt8](repeating: 3, count: 16)

    func state(journal: [UInt8], bytes: [UInt8], busy: Bool = false) -> FileStateReport {
        FileStateReport(exists: true, size: 10, journalHash: journal, bytesHash: bytes, busy: busy)
    }

    func decide(_ lh: [UInt8]?, _ lb: [UInt8]?, peer ps: FileStateReport?, localBusy: Bool = false, peerBusy: Bool = false,
                peerHash: [UInt8]? = nil) -> FileVerdict {
        FileVerdict.decide(localHash: lh, localSize: 10, localBusy: localBusy, peerHash: peerHash ?? ps?.journalHash ?? [],
                           peerSize: 10, peerBusy: peerBusy, localBytes: lb, peerState: ps)
    }

    func testEqualRecordsNeedNothing() {
        XCTAssertEqual(decide(good, nil, peer: nil, peerHash: good), .same)
    }

    func testAnythingInFlightIsLeftToReplication() {
        XCTAssertEqual(decide(good, good, peer: state(journal: other, bytes: other), localBusy: true), .skip)
        XCTAssertEqual(decide(good, good, peer: state(journal: other, bytes: other), peerBusy: true), .skip)
        XCTAssertEqual(decide(good, good, peer: state(journal: other, bytes: other, busy: true)), .skip)
        // Records differ but the bytes were not read yet: decide nothing.
        XCTAssertEqual(decide(good, nil, peer: nil, peerHash: other), .skip)
    }

    func testTheCopyWhoseBytesMatchItsJournalWins() {
        // Local bytes rotted: take the peer's.
        XCTAssertEqual(decide(good, rot, peer: state(journal: good, bytes: good), peerHash: other), .pull)
        // The peer's bytes rotted: send ours.
        XCTAssertEqual(decide(good, good, peer: state(journal: other, bytes: rot)), .push)
    }

    func testTwoConsistentButDifferentCopiesAreSplitBrainAndTwoBadOnesAreOnlyReported() {
        XCTAssertEqual(decide(good, good, peer: state(journal: other, bytes: other)), .splitBrain)
        XCTAssertEqual(decide(good, rot, peer: state(journal: other, bytes: rot)), .badOnBoth)
        // No clean record here and rot there: nothing is trusted.
        XCTAssertEqual(decide(nil, good, peer: state(journal: other, bytes: rot)), .badOnBoth)
        XCTAssertEqual(decide(good, good, peer: state(journal: [], bytes: other)), .push)
    }

    func testSplitPoliciesPickTheRightSideAndRefuseTies() {
        let older = FileStateReport(exists: true, size: 100, mtimeNs: 1)
        let newerSmaller = FileStateReport(exists: true, size: 50, mtimeNs: 2)
        XCTAssertEqual(Healer.localWins(.source("a"), node: "a", peer: "b", local: older, remote: newerSmaller).0, true)
        XCTAssertEqual(Healer.localWins(.source("b"), node: "a", peer: "b", local: older, remote: newerSmaller).0, false)
        XCTAssertNil(Healer.localWins(.source("c"), node: "a", peer: "b", local: older, remote: newerSmaller).0)
        XCTAssertEqual(Healer.localWins(.latestMtime, node: "a", peer: "b", local: older, remote: newerSmaller).0, false)
        XCTAssertEqual(Healer.localWins(.biggerFile, node: "a", peer: "b", local: older, remote: newerSmaller).0, true)
        XCTAssertNil(Healer.localWins(.latestMtime, node: "a", peer: "b", local: older, remote: older).0)
        XCTAssertNil(Healer.localWins(.biggerFile, node: "a", peer: "b", local: older, remote: older).0)
        XCTAssertNil(SplitPolicy(name: "source", source: nil))
        XCTAssertNil(SplitPolicy(name: "newest", source: nil))
        XCTAssertEqual(SplitPolicy(name: "bigger-file", source: nil), .biggerFile)
    }

    func testThrottlePacesToItsRateAndZeroIsUnlimited() {
        let t = Throttle(bytesPerSecond: 10_000_000)
        let start = ContinuousClock.now
        // The first second's credit is there at once; beyond it, the wait grows with the debt.
        XCTAssertEqual(t.reserve(10_000_000, now: start), .zero)
        let wait = t.reserve(5_000_000, now: start)
        XCTAssertEqual(Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18, 0.5, accuracy: 0.01)
        // Half a second later the debt is paid.
        XCTAssertEqual(t.reserve(0, now: start + .milliseconds(500)), .zero)
        let free = Throttle(bytesPerSecond: 0)
        XCTAssertEqual(free.reserve(1 << 40, now: start), .zero)
    }
}
