import BrickStore
import Foundation
import Glibc
import Journal
import NIOCore
import PeerProtocol
import TwinCore
import Volume
import XCTest
@testable import Replication

/// The pieces of the replicating layer that need no peer: name locks, the mode gate, the
/// owed-change encoding, the crash check of tentative rows and the journal's peer tables.
final class ReplicationLogicTests: XCTestCase {
    func testNameLocksExcludeAndLapseAfterTheirLease() {
        let locks = NameLocks()
        XCTAssertTrue(locks.acquire(["1/a", "1/b"], token: 1, lease: .seconds(30), wait: .zero))
        // One shared key is enough to wait: all or none.
        XCTAssertFalse(locks.acquire(["1/b", "1/c"], token: 2, lease: .seconds(30), wait: .milliseconds(30)))
        XCTAssertTrue(locks.acquire(["1/c"], token: 2, lease: .seconds(30), wait: .zero))
        locks.release(1)
        XCTAssertTrue(locks.acquire(["1/b"], token: 3, lease: .milliseconds(50), wait: .zero))
        // A holder that never releases (a peer that died) blocks only until its lease ends.
        let start = ContinuousClock.now
        XCTAssertTrue(locks.acquire(["1/b"], token: 4, lease: .seconds(30), wait: .seconds(5)))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(4))
        locks.release(2); locks.release(4)
        XCTAssertEqual(locks.heldCount, 0)
    }

    func testNameLocksSerialiseRacingHolders() {
        let locks = NameLocks()
        let inside = Locked(0)
        let maxInside = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            for _ in 0..<20 {
                let token = locks.newToken()
                XCTAssertTrue(locks.acquire(["1/target"], token: token, lease: .seconds(10), wait: .seconds(10)))
                let n = inside.with { $0 += 1; return $0 }
                maxInside.with { $0 = max($0, n) }
                usleep(100)
                inside.with { $0 -= 1 }
                locks.release(token)
            }
        }
        XCTAssertEqual(maxInside.with { $0 }, 1)
    }

    func testGateSwitchesToLiveOnlyWithNothingInFlight() {
        let gate = ModeGate()
        XCTAssertEqual(gate.enter(), .degraded)
        gate.setCatchingUp()
        let switched = Locked(false)
        let t = Thread {
            let ok = gate.switchToLive { true }
            switched.with { $0 = ok }
        }
        t.start()
        usleep(50_000)
        XCTAssertFalse(switched.with { $0 }, "switched while a change was inside the gate")
        gate.leave()
        while !switched.with({ $0 }) { usleep(1000) }
        XCTAssertEqual(gate.mode, .live)
        XCTAssertTrue(gate.setDegraded())
        XCTAssertFalse(gate.setDegraded())
        // From degraded, the catch-up thread must pass through catching-up first.
        XCTAssertFalse(gate.switchToLive { true })
    }

    func testOwedChangesRoundTripThroughTheirJournalEncoding() throws {
        let messages: [PeerMessage] = [
            .mkdir(parentPath: "", name: "study", mode: 0o40755, uid: 1, gid: 2, stableID: 77),
            .rename(fromParent: "a", fromName: "Röntgen.dcm", toParent: "b", toName: "x", flags: 1),
            .setattr(path: "a/x", changes: AttrUpdate(mode: 0o600, size: 9, mtimeNs: 5)),
            .setxattr(path: "a", name: "user.k", value: [1, 2, 3], flags: 0),
        ]
        for m in messages {
            XCTAssertEqual(try ReplicatedVolume.decodeOp(ReplicatedVolume.encodeOp(m)), m)
        }
        XCTAssertThrowsError(try ReplicatedVolume.decodeOp([0xFF, 0xFF, 1]))
        XCTAssertThrowsError(try ReplicatedVolume.decodeOp(Array(ReplicatedVolume.encodeOp(messages[0]).dropLast())))
    }

    /// Where an open file's path goes when it or a directory above it is renamed.
    func testAnOpenFilesPathFollowsARenameOfItOrOfADirectoryAbove() {
        func r(_ p: String, _ from: String, _ to: String, exchange: Bool = false) -> String? {
            ReplicatedVolume.renamed(p, from: from, to: to, exchange: exchange)
        }
        XCTAssertEqual(r("in/x.tmp", "in/x.tmp", "in/IM1.dcm"), "in/IM1.dcm")
        XCTAssertEqual(r("in/s1/x.dcm", "in", "study"), "study/s1/x.dcm")
        XCTAssertNil(r("inbox/x.dcm", "in", "study"), "a sibling whose name starts the same")
        XCTAssertNil(r("in", "in/x", "y"))
        XCTAssertNil(r("a/b", "a/b2", "c"))
        // RENAME_EXCHANGE: both sides move.
        XCTAssertEqual(r("b/f", "a", "b", exchange: true), "a/f")
        XCTAssertEqual(r("a/f", "a", "b", exchange: true), "b/f")
        XCTAssertNil(r("b/f", "a", "b"), "without exchange the target's old entries are gone, not moved")
        // Bytes, not Unicode equivalence: "é" precomposed and decomposed are two names on Linux.
        XCTAssertNil(r("caf\u{E9}/x", "cafe\u{301}", "other"))
        XCTAssertEqual(r("cafe\u{301}/x", "cafe\u{301}", "other"), "other/x")
    }

    func testATentativeChangeCountsAsAppliedOnlyIfTheBrickShowsIt() throws {
        let dir = try tempDir(self)
        let (v, j) = try makeVolume(dir, node: "a", ordinal: 1)
        defer { j.close(cleanShutdown: true) }
        let id = try v.allocateID()
        _ = try v.mkdir(parent: .root, name: "d", mode: 0o755, ctx: .root, id: id)
        let b = v.brick
        XCTAssertTrue(ReplicatedVolume.locallyApplied(.mkdir(parentPath: "", name: "d", mode: 0o755, uid: 0, gid: 0, stableID: id), brick: b))
        XCTAssertFalse(ReplicatedVolume.locallyApplied(.mkdir(parentPath: "", name: "d", mode: 0o755, uid: 0, gid: 0, stableID: id + 1), brick: b))
        XCTAssertFalse(ReplicatedVolume.locallyApplied(.mkdir(parentPath: "", name: "never", mode: 0o755, uid: 0, gid: 0, stableID: id + 2), brick: b))
        XCTAssertTrue(ReplicatedVolume.locallyApplied(.rmdir(parentPath: "", name: "gone"), brick: b))
        XCTAssertFalse(ReplicatedVolume.locallyApplied(.rmdir(parentPath: "", name: "d"), brick: b))
        XCTAssertTrue(ReplicatedVolume.locallyApplied(.rename(fromParent: "", fromName: "x", toParent: "", toName: "d", flags: 0), brick: b))
        XCTAssertFalse(ReplicatedVolume.locallyApplied(.rename(fromParent: "", fromName: "d", toParent: "", toName: "y", flags: 0), brick: b))
    }

    func testPeerTablesKeepANewerMarkAndCountOwedBytes() throws {
        let dir = try tempDir(self)
        let (v, j) = try makeVolume(dir, node: "a", ordinal: 1)
        defer { j.close(cleanShutdown: true) }
        let (st, h) = try v.create(parent: .root, name: "f", mode: 0o644, flags: O_RDWR, ctx: .root)
        let bytes = [UInt8](repeating: 7, count: 1000)
        _ = try bytes.withUnsafeBytes { b throws(FSError) in try v.write(handle: h, offset: 0, data: b) }
        try v.release(handle: h)
        let id = UInt64(st.st_ino)
        try j.submit([.peerFile(id: id, owed: false)], wait: .written)
        XCTAssertEqual(try j.peerBacklog().files, 0, "a streaming mark is not owed yet")
        try j.submit([.peerFile(id: id, owed: true)], wait: .written)
        let row = try XCTUnwrap(try j.peerFile(id))
        XCTAssertTrue(row.owed)
        XCTAssertEqual(try j.peerBacklog().files, 1)
        XCTAssertEqual(try j.peerBacklog().bytes, 1000)
        // Marked again while being sent: dropping the older generation keeps the row.
        try j.submit([.peerFile(id: id, owed: false)], wait: .written)
        try j.submit([.dropPeerFile(id: id, generation: row.generation)], wait: .written)
        XCTAssertNotNil(try j.peerFile(id))
        XCTAssertTrue(try XCTUnwrap(try j.peerFile(id)).owed, "a newer streaming mark never downgrades an owed file")
        try j.submit([.dropPeerFile(id: id, generation: .max)], wait: .written)
        XCTAssertNil(try j.peerFile(id))

        let seq = j.nextPeerSeq()
        try j.submit([.peerOp(seq: seq, message: [1, 2], applied: false), .peerOpApplied(seq: seq)], wait: .written)
        XCTAssertEqual(try j.peerOps(after: 0, limit: 10).first?.uncertain, false)
        // Sent, answer lost: a replay must tolerate that the peer already has it.
        let lost = j.nextPeerSeq()
        try j.submit([.peerOp(seq: lost, message: [3], applied: true), .peerOpUncertain(seq: lost)], wait: .written)
        XCTAssertEqual(try j.peerOps(after: seq, limit: 10).map { [$0.applied, $0.uncertain] }, [[true, true]])
        try j.submit([.dropPeerOp(seq: lost)], wait: .written)
        let rows = try j.peerOps(after: 0, limit: 10)
        XCTAssertEqual(rows.map(\.seq), [seq]); XCTAssertEqual(rows.first?.message, [1, 2]); XCTAssertEqual(rows.first?.applied, true)
        try j.submit([.splitBrain(key: "id:\(id)", id: id, path: "f", reason: "r")], wait: .written)
        let b = try j.peerBacklog()
        XCTAssertEqual([b.ops, b.files, b.bytes, b.splitBrain], [1, 0, 0, 1])
        XCTAssertEqual(try j.splitBrainIDs(), [id])
        // The row keeps the first reason: the later changes that meet the same conflict say
        // less about how it began (an admin reads the first).
        try j.submit([.splitBrain(key: "id:\(id)", id: id, path: "f", reason: "later")], wait: .written)
        XCTAssertEqual(try j.splitBrains().map(\.reason), ["r"])
    }

    /// Every queued job gets a thread even when jobs arrive faster than idle threads wake: with
    /// k idle threads, k+1 jobs where each waits for the next must all run at once (a lock
    /// request and the unlock that frees it, arriving together, must not starve each other).
    func testBlockingPoolRunsEveryQueuedJobAtOnce() {
        let pool = BlockingPool(name: "test-pool", limit: 64)
        for n in 1...6 {
            // After round n-1 the pool has n-1 threads, all idle now.
            usleep(50_000)
            let signals = (0..<n).map { _ in DispatchSemaphore(value: 0) }
            let finished = DispatchGroup()
            for k in 0..<n {
                finished.enter()
                pool.run {
                    if k < n - 1 { signals[k + 1].wait() }
                    signals[k].signal()
                    finished.leave()
                }
            }
            XCTAssertEqual(finished.wait(timeout: .now() + 10), .success, "\(n) chained jobs with \(n - 1) idle threads: one starved")
        }
    }

    /// Who serves after a start that did not reach the peer: only a node that cannot have
    /// missed an acknowledged change (it owes the peer, so it served alone last; or it never
    /// met a peer). A brick being rebuilt from the peer never serves alone.
    func testANodeStartingAloneServesOnlyIfItCannotHaveMissedAnything() {
        XCTAssertEqual(DataCurrency.atLonelyStart(peerSeen: true, owesPeer: false, rebuilding: false), .outdated)
        XCTAssertEqual(DataCurrency.atLonelyStart(peerSeen: true, owesPeer: true, rebuilding: false), .current)
        XCTAssertEqual(DataCurrency.atLonelyStart(peerSeen: false, owesPeer: false, rebuilding: false), .current)
        XCTAssertEqual(DataCurrency.atLonelyStart(peerSeen: false, owesPeer: false, rebuilding: true), .outdated)
        XCTAssertEqual(DataCurrency.atLonelyStart(peerSeen: true, owesPeer: true, rebuilding: true), .outdated)
        XCTAssertFalse(DataCurrency.outdated.serves)
        XCTAssertTrue(DataCurrency.forced.serves)
    }
}
