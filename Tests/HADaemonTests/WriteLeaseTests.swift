import Foundation
import Logging
import TwinCore
import XCTest
@testable import HADaemon

/// Issue 14, witness-gated writes: the write lease's state machine, the witness's claims of one
/// node's two askers, and the lease client over an in-memory witness with a fake clock.
final class WriteLeaseTests: XCTestCase {
    let t0 = ContinuousClock.now
    func ms(_ n: Int) -> Duration { .milliseconds(n) }

    // MARK: - The state machine

    func testAGrantCountsFromWhenTheRequestWasSent() {
        var s = WriteLeaseState(lease: ms(300))
        XCTAssertFalse(s.valid(at: t0))
        XCTAssertEqual(s.standing, .unasked)
        s.sent(nonce: 7, at: t0)
        XCTAssertTrue(s.received(WitnessReply(granted: true, holder: "a", remainingMs: 300, nonce: 7)))
        XCTAssertEqual(s.standing, .held(until: t0 + ms(300)))
        XCTAssertTrue(s.valid(at: t0 + ms(299)))
        XCTAssertFalse(s.valid(at: t0 + ms(300)), "valid past sent + lease (the witness counts from receipt)")
        XCTAssertFalse(s.wantsRenewal(at: t0 + ms(50)))
        XCTAssertTrue(s.wantsRenewal(at: t0 + ms(100)), "a third of the lease gone: renew")
        XCTAssertNil(s.refusal(at: t0 + ms(10), witness: "w"))
        XCTAssertNotNil(s.refusal(at: t0 + ms(300), witness: "w"))
    }

    func testARefusalNamesTheHolderAndStrayRepliesAreIgnored() {
        var s = WriteLeaseState(lease: ms(300))
        s.sent(nonce: 1, at: t0)
        XCTAssertFalse(s.received(WitnessReply(granted: true, holder: "b", remainingMs: 300, nonce: 99)), "a reply to no request of ours")
        XCTAssertEqual(s.standing, .unasked)
        XCTAssertTrue(s.received(WitnessReply(granted: false, holder: "b", remainingMs: 250, nonce: 1)))
        XCTAssertEqual(s.standing, .refused(holder: "b"))
        XCTAssertFalse(s.valid(at: t0))
        XCTAssertEqual(s.refusal(at: t0, witness: "w"), "cut off from the peer, and the witness gave the lease to b")
        XCTAssertFalse(s.received(WitnessReply(granted: true, holder: "a", remainingMs: 300, nonce: 1)), "answered twice")
    }

    func testAnUnansweredRenewalKeepsARunningLeaseAndThenTheWitnessIsSilent() {
        var s = WriteLeaseState(lease: ms(300))
        s.sent(nonce: 1, at: t0)
        s.received(WitnessReply(granted: true, holder: "a", remainingMs: 300, nonce: 1))
        s.sent(nonce: 2, at: t0 + ms(100))
        s.timedOut(at: t0 + ms(250))
        XCTAssertTrue(s.valid(at: t0 + ms(250)), "a lost renewal cut a lease that still runs")
        s.sent(nonce: 3, at: t0 + ms(280))
        s.timedOut(at: t0 + ms(430))
        XCTAssertEqual(s.standing, .unanswered)
        XCTAssertEqual(s.refusal(at: t0 + ms(430), witness: "10.0.0.13:7796"), "cut off from the peer, and the witness at 10.0.0.13:7796 does not answer")
    }

    func testALateGrantNeverShortensTheLease() {
        var s = WriteLeaseState(lease: ms(300))
        s.sent(nonce: 1, at: t0 + ms(100))
        s.received(WitnessReply(granted: true, holder: "a", remainingMs: 300, nonce: 1))
        XCTAssertEqual(s.standing, .held(until: t0 + ms(400)))
        // An older request's grant (sent earlier) cannot arrive as the pending one, but a
        // grant counted from an earlier send must not move the end back either.
        s.sent(nonce: 2, at: t0 + ms(50))
        s.received(WitnessReply(granted: true, holder: "a", remainingMs: 300, nonce: 2))
        XCTAssertEqual(s.standing, .held(until: t0 + ms(400)))
    }

    // MARK: - The witness: one node, two askers

    func testTheNodesTwoAskersHoldOneLeaseAndAReleaseEndsOnlyItsOwnClaim() {
        var t = LeaseTable(lease: ms(300), quietUntil: t0)
        func ask(_ who: String, _ at: Int, _ op: WitnessRequest.Op = .acquire) -> WitnessReply {
            t.handle(WitnessRequest(op: op, node: who, nonce: 1), now: t0 + ms(at))
        }
        XCTAssertTrue(ask("a", 0).granted, "twinfs-ha of a")
        XCTAssertTrue(ask("a/fs", 100).granted, "the twinfs node of a: the same holder")
        XCTAssertFalse(ask("b/fs", 150).granted)
        XCTAssertEqual(ask("b", 160).holder, "a")
        // a's twinfs-ha stops cleanly (release): a's node still counts on its own claim.
        _ = ask("a", 200, .release)
        let r = ask("b", 210)
        XCTAssertFalse(r.granted, "a release by twinfs-ha voided the lease a's node still holds")
        XCTAssertEqual(r.holder, "a")
        XCTAssertEqual(r.remainingMs, 190)
        // a's node stops renewing: the lease runs out with its claim, then b gets it.
        XCTAssertFalse(ask("b/fs", 399).granted)
        XCTAssertTrue(ask("b/fs", 400).granted)
        XCTAssertTrue(ask("b", 410).granted)
        XCTAssertFalse(ask("a/fs", 420).granted)
        XCTAssertEqual(LeaseTable.node(of: "a/fs"), "a")
        XCTAssertEqual(LeaseTable.node(of: "node-1.x"), "node-1.x")
    }

    func testANodeNameOf64BytesStillFitsWithItsAskerSuffix() {
        let name = String(repeating: "n", count: 64)
        let secret = Array("0123456789abcdef0123456789abcdef".utf8)
        let p = Packets.encode(WitnessRequest(op: .acquire, node: name + "/fs", nonce: 5), secret: secret)
        XCTAssertEqual(Packets.decodeRequest(p, secret: secret)?.node, name + "/fs")
    }

    // MARK: - The client over an in-memory witness

    func testOnlyOneSideOfAPartitionMayAcknowledgeWritesAtAnyTime() {
        let clock = FakeClock(t0)
        let witness = FakeWitness(lease: ms(300), clock: clock)
        let a = WriteLease(asker: "a/fs", witness: "w", lease: ms(300), transport: witness.transport(), logger: Logger(label: "a"), clock: clock.now)
        let b = WriteLease(asker: "b/fs", witness: "w", lease: ms(300), transport: witness.transport(), logger: Logger(label: "b"), clock: clock.now)
        // a's twinfs-ha holds the address (and the lease) when the link is cut.
        XCTAssertTrue(witness.ask("a"))
        XCTAssertTrue(a.permit())
        XCTAssertFalse(b.permit(), "both sides acknowledged writes")
        XCTAssertEqual(b.refusal(), "cut off from the peer, and the witness gave the lease to a")
        // a keeps renewing for 3 s: b never gets it; never both valid at one moment.
        for _ in 0..<30 {
            clock.advance(ms(100))
            if a.current.wantsRenewal(at: clock.now()) { a.exchange() }
            _ = witness.ask("a")
            XCTAssertTrue(a.permit())
            XCTAssertFalse(b.permit())
        }
        // a's side goes silent (its node and daemon stop renewing): b gets the lease once
        // a's last claim ran out, and by then a no longer counts on it.
        var t = 0
        while !b.permit() {
            clock.advance(ms(10))
            t += 10
            XCTAssertFalse(a.current.valid(at: clock.now()) && b.current.valid(at: clock.now()), "two lease holders at +\(t) ms")
            XCTAssertLessThanOrEqual(t, 400, "b never got a lease nobody renewed")
            if t > 400 { break }
        }
        XCTAssertFalse(a.current.valid(at: clock.now()))
        XCTAssertFalse(a.permit(), "a took the lease back from b")
    }

    func testASilentWitnessRefusesWrites() {
        let clock = FakeClock(t0)
        let witness = FakeWitness(lease: ms(300), clock: clock)
        let a = WriteLease(asker: "a/fs", witness: "10.0.0.13:7796", lease: ms(300), transport: witness.transport(), logger: Logger(label: "a"), clock: clock.now)
        XCTAssertTrue(a.permit())
        witness.silent.with { $0 = true }
        clock.advance(ms(299))
        XCTAssertTrue(a.permit())
        clock.advance(ms(1))
        XCTAssertFalse(a.permit())
        XCTAssertEqual(a.refusal(), "cut off from the peer, and the witness at 10.0.0.13:7796 does not answer")
    }

    func testTheRenewerAsksOnlyWhileNeeded() {
        let witness = FakeWitness(lease: ms(150), clock: FakeClock(ContinuousClock.now))
        let needed = Locked(false)
        let a = WriteLease(asker: "a/fs", witness: "w", lease: ms(150), transport: witness.transport(), logger: Logger(label: "a"))
        a.start { needed.with { $0 } }
        usleep(200_000)
        XCTAssertEqual(witness.requests.with { $0 }, 0, "asked the witness while the peer was reachable")
        needed.with { $0 = true }
        usleep(300_000)
        a.stop()
        XCTAssertGreaterThanOrEqual(witness.requests.with { $0 }, 2, "no renewals while cut off")
    }
}

/// A clock the test moves.
final class FakeClock: Sendable {
    let t: Locked<ContinuousClock.Instant>
    init(_ start: ContinuousClock.Instant) { t = Locked(start) }
    @Sendable func now() -> ContinuousClock.Instant { t.with { $0 } }
    func advance(_ d: Duration) { t.with { $0 += d } }
}

/// The witness's lease table behind an in-memory transport (answers at once, or never).
final class FakeWitness: Sendable {
    let table: Locked<LeaseTable>
    let clock: FakeClock
    let silent = Locked(false)
    let requests = Locked(0)

    init(lease: Duration, clock: FakeClock) {
        self.clock = clock
        table = Locked(LeaseTable(lease: lease, quietUntil: clock.now()))
    }

    /// twinfs-ha's own acquire, by node name.
    func ask(_ node: String) -> Bool {
        table.with { $0.handle(WitnessRequest(op: .acquire, node: node, nonce: 1), now: clock.now()) }.granted
    }

    func transport() -> any WitnessTransport { Transport(witness: self) }

    struct Transport: WitnessTransport {
        let witness: FakeWitness
        let inbox = Locked<[WitnessReply]>([])
        func send(_ request: WitnessRequest) {
            witness.requests.with { $0 += 1 }
            guard !witness.silent.with({ $0 }) else { return }
            let r = witness.table.with { $0.handle(request, now: witness.clock.now()) }
            inbox.with { $0.append(r) }
        }
        func receive(until deadline: ContinuousClock.Instant) -> WitnessReply? {
            inbox.with { $0.isEmpty ? nil : $0.removeFirst() }
        }
    }
}

/// Issue 14, failback follows the data: a preferred node that is healthy but still catching up
/// (its monitor's `healthyFor` stays 0) does not take the addresses back, whatever the delay.
final class FailbackRuleTests: XCTestCase {
    func testThePreferredNodeTakesBackOnlyOnceCaughtUpForTheDelay() {
        for delay in [0.0, 10] {
            let a = Arbiter(me: "a", peer: "b", preferred: "a", failbackDelay: delay, hasWitness: false)
            let holdingB = Arbiter.Peer(alive: true, healthy: true, holds: true, choice: "b", healthyFor: 100)
            XCTAssertEqual(a.choice(healthy: true, healthyFor: 0, holding: false, peer: holdingB), "b", "failback to a node still catching up (delay \(delay))")
            XCTAssertEqual(a.choice(healthy: true, healthyFor: delay + 0.1, holding: false, peer: holdingB), "a", "no failback once caught up (delay \(delay))")
        }
    }
}

/// Issue 14: a monitor script's exit 75 is "healthy, but not caught up", for `monitor` only.
final class NotCurrentExitTests: XCTestCase {
    func testMonitorExit75IsHealthyButNotCurrentAndElsewhereAFailure() throws {
        let d = NSTemporaryDirectory() + "twinfs-events-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        for (name, body) in [("10.ok", "exit 0"), ("50.twinfs", "exit 75")] {
            try ("#!/bin/sh\n" + body + "\n").write(toFile: d + "/" + name, atomically: true, encoding: .utf8)
            chmod(d + "/" + name, 0o755)
        }
        let r = EventRunner(dir: d, timeout: 5, environment: [:], logPath: d + "/events.log")
        XCTAssertEqual(r.run("monitor"), .init(ok: true, failures: [], notCurrent: ["50.twinfs"]))
        XCTAssertEqual(r.run("takeip", ["eth0", "10.0.0.50", "24"]), .init(ok: false, failures: ["50.twinfs: exit 75"]))
    }
}
