import Foundation
import Glibc
import TestSupport
import XCTest

/// Fast checks of the netns harness, probe.py and the shipped interface event script
/// (needs root and `ip netns`; skipped otherwise). No twinfs-ha binary is needed.
final class HarnessSelfTests: XCTestCase {
    func testTopologyComesUpAndNodesReachEachOther() throws {
        let t = try makeTopology(secondLink: true, witness: true)
        let names = Set(NetnsTopology.listNamespaces())
        for n in NetnsTopology.Node.allCases {
            XCTAssertTrue(names.contains(t.namespace(n)), "namespace \(t.namespace(n)) missing")
            XCTAssertLessThanOrEqual(t.namespace(n).count, 15)
        }
        XCTAssertTrue(t.ping(from: .a, t.address(.b)), "a -> b on eth0")
        XCTAssertTrue(t.ping(from: .a, t.address(.client)), "a -> client")
        XCTAssertTrue(t.ping(from: .b, t.address(.witness)), "b -> witness")
        XCTAssertTrue(t.ping(from: .client, t.address(.a)), "client -> a")
        XCTAssertTrue(t.ping(from: .a, t.address(.b, link: 1)), "a -> b on eth1")
        XCTAssertFalse(t.ping(from: .client, t.address(.b, link: 1), timeout: 0.3), "the client is not on the heartbeat link")
        XCTAssertEqual(t.nodeMACs[.a], t.mac(.a))
        XCTAssertEqual(t.nodeMACs[.b], t.mac(.b))
        XCTAssertEqual(t.holders(address: t.address(.a)), ["a"])
        XCTAssertEqual(t.holders(address: t.publicAddress), [])
        // The client resolved a by ARP while answering the ping above.
        XCTAssertEqual(t.clientNeighborNode(address: t.address(.a)), .a)
        XCTAssertNil(t.clientNeighbor(address: t.publicAddress))
    }

    func testPartitionIsolatesNodesButNotClientOrWitness() throws {
        let t = try makeTopology(secondLink: true, witness: true)
        XCTAssertTrue(t.ping(from: .a, t.address(.b)))
        try t.partition()
        XCTAssertFalse(t.ping(from: .a, t.address(.b), timeout: 0.5), "a -> b on eth0 during the partition")
        XCTAssertFalse(t.ping(from: .b, t.address(.a), timeout: 0.5), "b -> a on eth0 during the partition")
        XCTAssertFalse(t.ping(from: .a, t.address(.b, link: 1), timeout: 0.5), "a -> b on eth1 during the partition")
        for n in [NetnsTopology.Node.a, .b] {
            XCTAssertTrue(t.ping(from: n, t.address(.client)), "\(n) -> client during the partition")
            XCTAssertTrue(t.ping(from: n, t.address(.witness)), "\(n) -> witness during the partition")
            XCTAssertTrue(t.ping(from: .client, t.address(n)), "client -> \(n) during the partition")
            XCTAssertTrue(t.carrier(n), "a partition keeps carrier")
        }
        // A cut and heal of a during the partition must not end the partition.
        try t.cutLink(node: .a, mode: .silent)
        try t.heal(node: .a)
        XCTAssertFalse(t.ping(from: .a, t.address(.b), timeout: 0.5), "heal re-applies the partition")
        try t.unpartition()
        XCTAssertTrue(t.ping(from: .a, t.address(.b)), "a -> b after unpartition")
        XCTAssertTrue(t.ping(from: .b, t.address(.a, link: 1)), "b -> a on eth1 after unpartition")
    }

    func testCutLinkModesAndHeal() throws {
        let t = try makeTopology(secondLink: true)
        for mode in [NetnsTopology.CutMode.carrier, .silent, .portDisabled] {
            try t.cutLink(node: .a, mode: mode)
            XCTAssertEqual(t.carrier(.a), mode != .carrier, "\(mode): carrier of eth0")
            XCTAssertEqual(t.carrier(.a, link: 1), mode != .carrier, "\(mode): carrier of eth1")
            XCTAssertFalse(t.ping(from: .client, t.address(.a), timeout: 0.5), "\(mode): client -> a while cut")
            XCTAssertFalse(t.ping(from: .b, t.address(.a, link: 1), timeout: 0.5), "\(mode): b -> a on eth1 while cut")
            XCTAssertTrue(t.ping(from: .client, t.address(.b)), "\(mode): b unaffected")
            try t.heal(node: .a)
            XCTAssertTrue(t.carrier(.a), "\(mode): carrier after heal")
            XCTAssertTrue(waitUntil(3) { t.ping(from: .client, t.address(.a), timeout: 0.5) }, "\(mode): client -> a after heal")
            XCTAssertTrue(t.ping(from: .b, t.address(.a, link: 1)), "\(mode): b -> a on eth1 after heal")
        }
        // Only the heartbeat link: the public one stays.
        try t.cutLink(node: .b, mode: .carrier, link: 1)
        XCTAssertTrue(t.carrier(.b))
        XCTAssertFalse(t.carrier(.b, link: 1))
        XCTAssertTrue(t.ping(from: .a, t.address(.b)))
        try t.heal(node: .b)
        XCTAssertTrue(t.carrier(.b, link: 1))
    }

    func testProbeFollowsTheAddressAcrossNamespaces() throws {
        let t = try makeTopology()
        _ = try t.startProbeServer(on: .a)
        _ = try t.startProbeServer(on: .b)
        let vip = t.publicAddress
        XCTAssertTrue(t.exec(.a, ["ip", "addr", "add", "\(vip)/24", "dev", "eth0"]).ok)
        XCTAssertEqual(t.holders(address: vip), ["a"])

        let first = try t.runProbe(target: vip, duration: 1)
        XCTAssertGreaterThanOrEqual(first.summary.probes, 18)
        XCTAssertEqual(first.summary.failed, 0, "\(first.outages)")
        XCTAssertEqual(first.answers(from: "node-a"), first.summary.probes)
        XCTAssertEqual(t.clientNeighborNode(address: vip), .a)

        // Move the address by hand while probing (new connections and one long-lived one).
        let events = t.workDir + "/events.txt"
        let (probe, probeJSON) = try t.startProbe(target: vip, duration: 3, events: events)
        let (hold, holdJSON) = try t.startProbe(.hold, target: vip, duration: 3)
        usleep(1_200_000)
        t.markEvent("move-to-b", file: events)
        let moved = Date()
        XCTAssertTrue(t.exec(.a, ["ip", "addr", "del", "\(vip)/24", "dev", "eth0"]).ok)
        XCTAssertTrue(t.exec(.b, ["ip", "addr", "add", "\(vip)/24", "dev", "eth0"]).ok)
        XCTAssertTrue(t.sendGratuitousARP(from: .b, address: vip, count: 1).ok)
        XCTAssertEqual(t.holders(address: vip), ["b"])
        XCTAssertTrue(waitUntil(2) { t.clientNeighborNode(address: vip) == .b }, "the client follows the gratuitous ARP")
        XCTAssertNotNil(probe.wait(timeout: 10))
        XCTAssertNotNil(hold.wait(timeout: 10))

        let r = try ProbeReport.load(probeJSON)
        XCTAssertEqual(r.summary.firstNode, "node-a")
        XCTAssertEqual(r.summary.lastNode, "node-b")
        XCTAssertEqual(r.switches.count, 1, "\(r.switches)")
        XCTAssertEqual(r.switches.first?.from, "node-a")
        XCTAssertEqual(r.switches.first?.to, "node-b")
        let toB = try XCTUnwrap(r.timeToOtherNode(after: moved))
        XCTAssertLessThan(toB, 1000, "the client reached b within 1 s of the move")
        XCTAssertLessThan(r.maxOutageMs, 1000, "\(r.outages)")
        XCTAssertEqual(r.events.first?.label, "move-to-b")
        XCTAssertEqual(r.events.first?.otherNode, "node-b")

        // The long-lived connection broke (b answers its next segment with a RST) and
        // reconnected to b.
        let h = try ProbeReport.load(holdJSON)
        XCTAssertEqual(h.mode, "hold")
        let breaks = try XCTUnwrap(h.breaks)
        XCTAssertEqual(breaks.count, 1, "\(breaks)")
        XCTAssertEqual(breaks.first?.node, "node-a")
        XCTAssertEqual(h.connections?.last?.node, "node-b")
        XCTAssertEqual(h.summary.lastNode, "node-b")
        XCTAssertEqual(h.switches.count, 1)
        if let b = breaks.first { XCTAssertLessThan(b.t - moved.timeIntervalSince1970, 1.0, "break noticed within 1 s") }
    }

    /// The shipped ctdb-like/events/10.interface in a real namespace (arp announce stubbed
    /// with probe.py garp).
    func testInterfaceEventScript() throws {
        let t = try makeTopology()
        let script = HATools.eventsDir + "/10.interface"
        guard access(script, X_OK) == 0 else { throw XCTSkip("\(script) not found") }
        _ = try t.startProbeServer(on: .a)
        _ = try t.startProbeServer(on: .b)
        let stub = t.workDir + "/twinfs-ha-stub"
        let stubLog = t.workDir + "/stub.log"
        try """
        #!/bin/sh
        # twinfs-ha stand-in: logs its arguments; `arp announce` sends real gratuitous ARP.
        echo "$TWINFS_HA_NODE $*" >> \(stubLog)
        [ "$1 $2" = "arp announce" ] || exit 0
        exec \(HATools.python3) \(HATools.probeScript) garp --interface "$4" --address "$6" --count 1
        """.write(toFile: stub, atomically: true, encoding: .utf8)
        chmod(stub, 0o755)
        let vip = t.publicAddress
        func run(_ n: NetnsTopology.Node, _ args: [String], held: String = "", extra: [String: String] = [:]) -> CommandResult {
            var env = ["TWINFS_HA_BIN": stub, "TWINFS_HA_NODE": n.displayName, "TWINFS_HA_HELD": held,
                       "TWINFS_HA_STATE_DIR": t.workDir]
            env.merge(extra) { $1 }
            return t.exec(n, [script] + args, timeout: 10, environment: env)
        }
        XCTAssertEqual(run(.a, ["takeip", "eth0", vip, "24"]).status, 0)
        XCTAssertEqual(run(.a, ["takeip", "eth0", vip, "24"]).status, 0, "takeip is idempotent")
        XCTAssertEqual(t.holders(address: vip), ["a"])
        XCTAssertEqual(t.clientNeighborNode(address: vip), .a, "takeip announced a's MAC")
        XCTAssertEqual(try t.runProbe(target: vip, duration: 0.5).summary.lastNode, "node-a")
        XCTAssertEqual(run(.a, ["monitor"], held: "\(vip)/24@eth0").status, 0)

        // releaseip aborts the long-lived connection at once (RST from ss -K).
        let (hold, holdJSON) = try t.startProbe(.hold, target: vip, duration: 1.5)
        usleep(500_000)
        let released = Date()
        XCTAssertEqual(run(.a, ["releaseip", "eth0", vip, "24"]).status, 0)
        XCTAssertEqual(run(.a, ["releaseip", "eth0", vip, "24"]).status, 0, "releaseip is idempotent")
        XCTAssertEqual(t.holders(address: vip), [])
        XCTAssertNotNil(hold.wait(timeout: 10))
        let h = try ProbeReport.load(holdJSON)
        let br = try XCTUnwrap(h.breaks?.first, "the connection was not broken by releaseip")
        XCTAssertEqual(br.reason, "reset")
        XCTAssertLessThan(br.t - released.timeIntervalSince1970, 0.5)

        XCTAssertEqual(run(.b, ["takeip", "eth0", vip, "24"]).status, 0)
        XCTAssertEqual(t.clientNeighborNode(address: vip), .b, "the client follows b's announcement")
        XCTAssertEqual(try t.runProbe(target: vip, duration: 0.5).summary.lastNode, "node-b")
        XCTAssertEqual(run(.b, ["ipreallocated"], held: "\(vip)/24@eth0").status, 0)
        let log = (try? String(contentsOfFile: stubLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("node-b arp announce --interface eth0 --address \(vip) --count 3"), log)

        // monitor: carrier loss makes it fail; TWINFS_HA_INTERFACES covers a node holding nothing.
        try t.cutLink(node: .b, mode: .carrier)
        XCTAssertEqual(run(.b, ["monitor"], held: "\(vip)/24@eth0").status, 1)
        XCTAssertEqual(run(.a, ["monitor"], extra: ["TWINFS_HA_INTERFACES": "eth0"]).status, 0)
        XCTAssertEqual(run(.a, ["monitor"], extra: ["TWINFS_HA_INTERFACES": "eth7"]).status, 1)
        try t.heal(node: .b)
        XCTAssertEqual(run(.b, ["monitor"], held: "\(vip)/24@eth0").status, 0)
        XCTAssertEqual(run(.b, ["someday-event", "x"]).status, 0, "unknown events exit 0")
        XCTAssertNotEqual(run(.b, ["takeip", "eth0"]).status, 0, "takeip without enough arguments fails")
    }

    func testDestroyLeavesNothingBehind() throws {
        let t = try makeTopology(secondLink: true, witness: true)
        let sleeper = try t.spawn(.a, ["sleep", "600"], log: "sleep.log")
        // A grandchild in its own session, like a daemonized smbd: found by `ip netns pids`.
        _ = t.exec(.b, ["setsid", "-f", "sleep", "600"])
        let bPids = t.pids(.b)
        XCTAssertFalse(bPids.isEmpty)
        XCTAssertTrue(sleeper.isRunning)
        t.destroy()
        XCTAssertFalse(sleeper.isRunning)
        for p in bPids { XCTAssertFalse(NetnsTopology.isAlive(p), "pid \(p) survived destroy") }
        let left = NetnsTopology.listNamespaces().filter { $0.hasPrefix(t.prefix + "-") }
        XCTAssertEqual(left, [])
        t.destroy()  // idempotent
        XCTAssertFalse(FileManager.default.fileExists(atPath: t.workDir) && ProcessInfo.processInfo.environment["TWINFS_HA_KEEP"] != "1")
    }

    func testSweepDeletesOnlyTheHarnessFamily() throws {
        if let why = HATools.unavailableReason() { throw XCTSkip(why) }
        XCTAssertTrue(NetnsTopology.isHarnessNamespace("th3fa9-a"))
        XCTAssertTrue(NetnsTopology.isHarnessNamespace("th0000-sw"))
        XCTAssertFalse(NetnsTopology.isHarnessNamespace("ha-node-a"))
        XCTAssertFalse(NetnsTopology.isHarnessNamespace("th3fa9-x"))
        XCTAssertFalse(NetnsTopology.isHarnessNamespace("thzzzz-a"))
        // A leftover of a "crashed run": not destroyed, only swept. (Its own family "tz", so
        // this test never sweeps the topologies of a concurrent run.)
        let name = "tz" + String(format: "%04x", UInt32.random(in: 0...0xffff)) + "-c"
        XCTAssertTrue(runCommand([HATools.ip, "netns", "add", name]).ok)
        addTeardownBlock { runCommand([HATools.ip, "netns", "del", name]) }
        XCTAssertFalse(NetnsTopology.sweep(minimumAge: 3600, family: "tz").contains(name), "too young to sweep")
        XCTAssertTrue(NetnsTopology.sweep(family: "tz").contains(name))
        XCTAssertFalse(NetnsTopology.listNamespaces().contains(name))
    }
}
