import Foundation
import Glibc
import Logging
import XCTest
@testable import HADaemon
import TwinCore

/// The HA daemon's pure parts: the arbiter's rules, the packet formats, the config, the event
/// runner and the witness's lease.
final class ArbiterTests: XCTestCase {
    let a = Arbiter(me: "a", peer: "b", preferred: "a", failbackDelay: 10, hasWitness: false)
    let b = Arbiter(me: "b", peer: "a", preferred: "a", failbackDelay: 10, hasWitness: false)

    func testConnectedNodesAgreeOnThePreferredNodeAndOnlyItTakes() {
        // Nobody holds; both healthy: a is chosen by both; b never takes.
        let peerOfA = Arbiter.Peer(alive: true, healthy: true, choice: "a", healthyFor: 100)
        XCTAssertEqual(a.decide(healthy: true, healthyFor: 100, holding: false, peer: peerOfA, leaseValid: false), .take)
        let peerOfB = Arbiter.Peer(alive: true, healthy: true, choice: "a", healthyFor: 100)
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 100, holding: false, peer: peerOfB, leaseValid: false), .none)
        // a does not take while b still says it holds.
        let holdingB = Arbiter.Peer(alive: true, healthy: true, holds: true, choice: "a", healthyFor: 100)
        XCTAssertEqual(a.decide(healthy: true, healthyFor: 100, holding: false, peer: holdingB, leaseValid: false), .none)
    }

    func testWhenBothHoldAfterARestartThePreferredNodeKeepsTheAddresses() {
        let bothA = Arbiter.Peer(alive: true, healthy: true, holds: true, choice: "a", healthyFor: 100)
        XCTAssertEqual(a.decide(healthy: true, healthyFor: 0.1, holding: true, peer: bothA, leaseValid: false), .none)
        guard case .release = b.decide(healthy: true, healthyFor: 100, holding: true, peer: .init(alive: true, healthy: true, holds: true, choice: "a", healthyFor: 0.1), leaseValid: false) else {
            return XCTFail("two holders stayed")
        }
    }

    func testFailbackWaitsForTheDelay() {
        // b holds; a came back healthy 3 s ago: b keeps the addresses.
        let aRecent = Arbiter.Peer(alive: true, healthy: true, choice: "b", healthyFor: 3)
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 100, holding: true, peer: aRecent, leaseValid: false), .none)
        // After the failback delay: b releases, then a takes.
        let aLong = Arbiter.Peer(alive: true, healthy: true, choice: "a", healthyFor: 11)
        guard case .release = b.decide(healthy: true, healthyFor: 100, holding: true, peer: aLong, leaseValid: false) else {
            return XCTFail("b did not give the addresses back")
        }
        XCTAssertEqual(a.choice(healthy: true, healthyFor: 11, holding: false, peer: .init(alive: true, healthy: true, holds: true, choice: "b", healthyFor: 100)), "a")
    }

    func testAnUnhealthyHolderReleasesAndTheOtherTakes() {
        let sick = Arbiter.Peer(alive: true, healthy: false, holds: false, choice: "b")
        guard case .release = a.decide(healthy: false, healthyFor: 0, holding: true, peer: .init(alive: true, healthy: true, choice: "b", healthyFor: 50), leaseValid: false) else {
            return XCTFail("an unhealthy holder kept the addresses")
        }
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 50, holding: false, peer: sick, leaseValid: false), .take)
    }

    func testASilentPeerIsTakenOverOnlyAfterAnARPProbeEvenWhenItsDaemonIsGone() {
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 9, holding: false, peer: .init(alive: false), leaseValid: false), .takeIfUnused)
        // A killed daemon's kernel may still answer for the address (its fence killed too, or
        // not done yet): probe first (issue 14 case 4).
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 9, holding: false, peer: .init(alive: false, daemonGone: true), leaseValid: false), .takeIfUnused)
        XCTAssertEqual(b.decide(healthy: false, healthyFor: 0, holding: false, peer: .init(alive: false, daemonGone: true), leaseValid: false), .none)
        // A clean stop of the peer hands over at once, once its beat says it holds nothing.
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 9, holding: false, peer: .init(alive: true, leaving: true), leaseValid: false), .take)
        XCTAssertEqual(b.decide(healthy: true, healthyFor: 9, holding: false, peer: .init(alive: true, holds: true, leaving: true), leaseValid: false), .takeIfUnused)
    }

    func testTheNodeThatKeepsTheAddressesThroughADisputeAnnouncesThemOnceThePeerLetGo() {
        let both = Arbiter.Peer(alive: true, healthy: true, holds: true, choice: "a", healthyFor: 5)
        let peerLetGo = Arbiter.Peer(alive: true, healthy: true, holds: false, choice: "a", healthyFor: 5)
        var c = Arbiter.Claim.undisputed
        XCTAssertEqual(a.nextClaim(c, holding: true, peer: peerLetGo).announce, false)
        var announce = false
        (c, announce) = a.nextClaim(c, holding: true, peer: both)
        XCTAssertEqual(c, .disputed)
        XCTAssertFalse(announce)
        (c, announce) = a.nextClaim(c, holding: true, peer: both)
        XCTAssertFalse(announce, "announced while the peer still claims")
        (c, announce) = a.nextClaim(c, holding: true, peer: peerLetGo)
        XCTAssertEqual(c, .undisputed)
        XCTAssertTrue(announce, "kept the addresses after a dispute without announcing them")
        // The node that let go announces nothing; a peer falling silent ends the dispute too.
        XCTAssertEqual(b.nextClaim(.disputed, holding: false, peer: peerLetGo).announce, false)
        XCTAssertEqual(a.nextClaim(.disputed, holding: true, peer: .init(alive: false)).announce, true)
    }

    func testWithAWitnessACutOffNodeHoldsOnlyWithTheLease() {
        let wa = Arbiter(me: "a", peer: "b", preferred: "a", failbackDelay: 10, hasWitness: true)
        let wb = Arbiter(me: "b", peer: "a", preferred: "a", failbackDelay: 10, hasWitness: true)
        let silent = Arbiter.Peer(alive: false)
        XCTAssertEqual(wa.decide(healthy: true, healthyFor: 50, holding: true, peer: silent, leaseValid: true), .none)
        guard case .release = wa.decide(healthy: true, healthyFor: 50, holding: true, peer: silent, leaseValid: false) else {
            return XCTFail("kept the addresses without the lease while cut off")
        }
        XCTAssertEqual(wb.decide(healthy: true, healthyFor: 50, holding: false, peer: silent, leaseValid: false), .none)
        XCTAssertEqual(wb.decide(healthy: true, healthyFor: 50, holding: false, peer: silent, leaseValid: true), .takeIfUnused,
                       "took with the lease without checking that the old holder's kernel let the address go")
        XCTAssertTrue(wb.wantsLease(healthy: true, healthyFor: 50, holding: false, peer: silent))
        XCTAssertFalse(wb.wantsLease(healthy: true, healthyFor: 50, holding: false, peer: .init(alive: true, healthy: true, holds: true, choice: "a", healthyFor: 50)))
    }
}

final class PacketTests: XCTestCase {
    let secret = Array("0123456789abcdef0123456789abcdef".utf8)

    func testBeatRoundTripsAndATamperedOrForeignBeatIsRefused() {
        let beat = Beat(node: "a", incarnation: 7, seq: 42, sentMs: 1_700_000_000_000, healthy: true, holds: true, leaving: false,
                        choice: "a", healthyForMs: 1234,
                        connections: [ClientConnection(publicIP: 0x3207_D50A, publicPort: 445, clientIP: 0x6407_D50A, clientPort: 50000)])
        let p = Packets.encode(beat, secret: secret)
        XCTAssertEqual(Packets.decodeBeat(p, secret: secret), beat)
        XCTAssertNil(Packets.decodeBeat(p, secret: Array("another secret of 32 bytes......".utf8)))
        for i in [0, 5, p.count / 2, p.count - 1] {
            var bad = p
            bad[i] ^= 0x01
            XCTAssertNil(Packets.decodeBeat(bad, secret: secret), "flipped byte \(i) accepted")
        }
        XCTAssertNil(Packets.decodeBeat(Array(p.prefix(20)), secret: secret))
    }

    func testRandomPacketsNeverDecode() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            let n = Int.random(in: 0...600, using: &rng)
            var p = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n > 5 && Bool.random(using: &rng) { p.replaceSubrange(0..<5, with: Array("TWHB".utf8) + [1]) }
            XCTAssertNil(Packets.decodeBeat(p, secret: secret))
            XCTAssertNil(Packets.decodeRequest(p, secret: secret))
            XCTAssertNil(Packets.decodeReply(p, secret: secret))
        }
    }

    func testWitnessGrantsOneHolderAtATimeAndWaitsOutItsOwnRestart() throws {
        let w = try WitnessServer(listen: "127.0.0.1:\(Int.random(in: 40000...60000))", secret: secret, lease: 0.2, logger: Logger(label: "t"))
        let t0 = ContinuousClock.now
        XCTAssertFalse(w.handle(WitnessRequest(op: .acquire, node: "a", nonce: 1), now: t0).granted, "granted during its start-up quiet period")
        let t1 = t0 + .milliseconds(250)
        XCTAssertTrue(w.handle(WitnessRequest(op: .acquire, node: "a", nonce: 2), now: t1).granted)
        let r = w.handle(WitnessRequest(op: .acquire, node: "b", nonce: 3), now: t1 + .milliseconds(100))
        XCTAssertFalse(r.granted)
        XCTAssertEqual(r.holder, "a")
        XCTAssertEqual(r.nonce, 3)
        XCTAssertTrue(w.handle(WitnessRequest(op: .acquire, node: "a", nonce: 4), now: t1 + .milliseconds(150)).granted, "renewal refused")
        XCTAssertTrue(w.handle(WitnessRequest(op: .acquire, node: "b", nonce: 5), now: t1 + .milliseconds(400)).granted, "an expired lease was not given to the other node")
        _ = w.handle(WitnessRequest(op: .release, node: "b", nonce: 6), now: t1 + .milliseconds(410))
        XCTAssertTrue(w.handle(WitnessRequest(op: .acquire, node: "a", nonce: 7), now: t1 + .milliseconds(420)).granted)
    }
}

final class HAConfigAndEventTests: XCTestCase {
    func dir() throws -> String {
        let d = NSTemporaryDirectory() + "twinfs-ha-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    static let good = """
    node = "a"
    secret_file = "/etc/twinfs/pacs.secret"
    control_socket = "/run/twinfs/ha.sock"
    state_dir = "/var/lib/twinfs-ha"
    failback_delay = 5
    [nodes.a]
    heartbeat = ["10.0.0.11:7795", "10.1.0.11:7795"]
    [nodes.b]
    heartbeat = ["10.0.0.12:7795", "10.1.0.12:7795"]
    [[public]]
    address = "10.213.7.50/24"
    interface = "eth0"
    [witness]
    address = "10.0.0.13:7796"
    [events]
    dir = "/etc/twinfs/ha/events"
    [events.env]
    TWINFS_CONFIG = "/etc/twinfs/pacs.toml"
    """

    func testConfigParsesWithDefaults() throws {
        let c = try HAConfig.parse(Self.good)
        XCTAssertEqual(c.peer, "b")
        XCTAssertEqual(c.preferred, "a")
        XCTAssertEqual(c.peerHeartbeat, ["10.0.0.12:7795", "10.1.0.12:7795"])
        XCTAssertEqual(c.publicAddresses.first?.cidr, "10.213.7.50/24")
        XCTAssertEqual(c.beatInterval, 0.1)
        XCTAssertEqual(c.deadInterval, 0.30000000000000004, accuracy: 1e-9)
        XCTAssertEqual(c.witness?.address, "10.0.0.13:7796")
        XCTAssertEqual(c.eventEnv["TWINFS_CONFIG"], "/etc/twinfs/pacs.toml")
    }

    func testBadConfigsAreRefusedWithTheKeyNamed() {
        let cases: [(String, String)] = [
            (Self.good.replacingOccurrences(of: "failback_delay = 5", with: "failback_dealy = 5"), "failback_dealy"),
            (Self.good.replacingOccurrences(of: "10.213.7.50/24", with: "10.213.7.50"), "public address"),
            (Self.good.replacingOccurrences(of: "[\"10.0.0.12:7795\", \"10.1.0.12:7795\"]", with: "[\"10.0.0.12:7795\"]"), "same number"),
            (Self.good.replacingOccurrences(of: "node = \"a\"", with: "node = \"c\""), "exactly two"),
            (Self.good.replacingOccurrences(of: "failback_delay = 5", with: "preferred = \"z\""), "preferred"),
            (Self.good.replacingOccurrences(of: "10.0.0.13:7796", with: "witness.example:7796"), "witness.address"),
        ]
        for (text, needle) in cases {
            XCTAssertThrowsError(try HAConfig.parse(text)) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(e) does not mention \(needle)")
            }
        }
    }

    func testEventsRunInOrderAndAHangingScriptIsKilled() throws {
        let d = try dir()
        let log = d + "/events.log"
        func script(_ name: String, _ body: String) throws {
            try ("#!/bin/sh\n" + body + "\n").write(toFile: d + "/" + name, atomically: true, encoding: .utf8)
            chmod(d + "/" + name, 0o755)
        }
        try script("10.first", "echo \"first $1 $2 $TWINFS_X\" >> \(d)/order")
        try script("20.second", "echo \"second $1\" >> \(d)/order; [ \"$1\" = monitor ] && exit 3; exit 0")
        try script("30.hang", "[ \"$1\" = takeip ] && { sleep 30 & sleep 30; }; exit 0")
        try script("README", "exit 1")  // not NN.name: never run
        try "x".write(toFile: d + "/40.notexec", atomically: true, encoding: .utf8)
        let r = EventRunner(dir: d, timeout: 0.5, environment: ["TWINFS_X": "env"], logPath: log)
        XCTAssertEqual(r.scripts(), ["10.first", "20.second", "30.hang"])
        XCTAssertEqual(r.run("startup"), .init(ok: true, failures: []))
        let m = r.run("monitor")
        XCTAssertFalse(m.ok)
        XCTAssertEqual(m.failures, ["20.second: exit 3"])
        let t = Date()
        let h = r.run("takeip", ["eth0", "10.0.0.50", "24"])
        XCTAssertLessThan(Date().timeIntervalSince(t), 5, "a hanging script blocked the runner")
        XCTAssertEqual(h.failures.count, 1)
        XCTAssertTrue(h.failures[0].hasPrefix("30.hang: timed out"), "\(h.failures)")
        let order = try String(contentsOfFile: d + "/order", encoding: .utf8)
        XCTAssertEqual(order, "first startup  env\nsecond startup\nfirst monitor  env\nsecond monitor\nfirst takeip eth0 env\nsecond takeip\n")
    }
}

/// TwinCore's MonotonicCondition: timed waits on CLOCK_MONOTONIC (issue 14 case 5).
final class MonotonicConditionTests: XCTestCase {
    func testATimedWaitEndsAtItsDeadlineAndASignalEndsItEarly() {
        let c = MonotonicCondition()
        let t0 = ContinuousClock.now
        c.lock()
        let woke = c.wait(until: t0 + .milliseconds(100))
        c.unlock()
        let took = ContinuousClock.now - t0
        XCTAssertFalse(woke)
        XCTAssertGreaterThanOrEqual(took, .milliseconds(100))
        XCTAssertLessThan(took, .seconds(5))
        // A deadline already past returns at once.
        XCTAssertFalse(c.withLock { c.wait(until: t0) })
        // A broadcast from another thread ends a long wait.
        let flag = Locked(false)
        Thread {
            usleep(50_000)
            c.withLock { flag.with { $0 = true }; c.broadcast() }
        }.start()
        let t1 = ContinuousClock.now
        c.lock()
        while !flag.with({ $0 }) { c.wait(until: t1 + .seconds(30)) }
        c.unlock()
        XCTAssertLessThan(ContinuousClock.now - t1, .seconds(10))
    }
}
