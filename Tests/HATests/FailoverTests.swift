import Foundation
import Glibc
import TestSupport
import XCTest

/// twinfs-ha in network namespaces made by the test: nodes a and b, a client (and a witness),
/// joined by a bridge. The client probes a TCP service on the floating address every 50 ms and
/// records which node answered; a watcher samples every 20 ms which nodes hold the address.
final class FailoverTests: HATestCase {
    // MARK: - Scenarios

    func testKill9OfTheOwnersDaemonMovesTheAddress() throws {
        let p = try startPair()
        let (r, t) = try probe(p) { p.daemons[.a]?.signal(SIGKILL) }
        let took = try XCTUnwrap(r.timeToOtherNode(after: t), "node-b never answered")
        XCTAssertLessThan(took, 3000, "took \(took) ms")
        XCTAssertEqual(p.holders(), [.b])
        XCTAssertEqual(r.probes.last?.node, "node-b")
        // The killed daemon's address dies with its kernel lifetime: no stale ARP answers.
        XCTAssertTrue(waitUntil(8) { !p.topo.addresses(.a).contains { $0.address.hasPrefix(p.vip + "/") } }, "a kept the address")
        print("HA kill9: node-b answered \(Int(took)) ms after the kill; outage \(Int(r.maxOutageMs)) ms")
    }

    func testKillingEverythingInTheOwnersNamespaceMovesTheAddress() throws {
        let p = try startPair()
        // Nothing is left on a to drop the address (the daemon and its fence are killed): b
        // takes it once a's kernel stops answering ARP for it, when its lifetime runs out.
        let (r, t) = try probe(p, duration: 9) { for pid in p.topo.pids(.a) { kill(pid, SIGKILL) } }
        XCTAssertNotNil(r.timeToOtherNode(after: t), "node-b never answered")
        XCTAssertEqual(r.probes.last?.node, "node-b")
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two kernels held the address")
    }

    func testLinkDownOnTheOwnerMovesTheAddressAndFailbackWaitsForTheDelay() throws {
        let p = try startPair(failback: 2)
        let (r, t) = try probe(p) { try p.topo.cutLink(node: .a, mode: .carrier) }
        let took = try XCTUnwrap(r.timeToOtherNode(after: t), "node-b never answered")
        XCTAssertLessThan(took, 3000)
        // a sees no carrier: it drops the address at once, before b can take it.
        XCTAssertEqual(p.holders(), [.b])
        try p.topo.heal(node: .a)
        // Failback only after a was healthy for 2 s; then exactly a.
        usleep(1_000_000)
        XCTAssertEqual(p.holders(), [.b], "failed back before the failback delay")
        XCTAssertTrue(waitUntil(10) { p.holders() == [.a] }, "never failed back; holders \(p.holders())")
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two nodes held the address at once")
        print("HA linkdown: node-b answered \(Int(took)) ms after the cut; outage \(Int(r.maxOutageMs)) ms")
    }

    func testHeartbeatCutWithAWitnessNeverLeavesTwoOwners() throws {
        let p = try startPair(witness: true)
        let (r, _) = try probe(p, duration: 8) {
            try p.topo.partition()
            usleep(4_000_000)
            try p.topo.unpartition()
        }
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two owners during the partition")
        XCTAssertEqual(p.holders(), [.a])
        // The client still reaches the address, and its ARP entry points at the holder.
        XCTAssertEqual(r.probes.last?.node, "node-a")
        XCTAssertEqual(p.topo.clientNeighborNode(address: p.vip), .a)
        XCTAssertEqual(r.answers(from: "node-b"), 0, "node-b answered for the address while cut off")
    }

    /// Without a witness, the ARP probe guards a cut heartbeat network: the holder still
    /// answers for the address on the public LAN, so the other node does not take it.
    /// (A partition of the public LAN itself needs the witness: see the test above.)
    func testHeartbeatCutWithoutAWitnessDoesNotTakeAnAddressThatStillAnswers() throws {
        let p = try startPair(heartbeatLink: 1)
        try p.topo.cutLink(node: .a, mode: .silent, link: 1)
        XCTAssertTrue(waitUntil(5) { (p.status(.b)["peer_alive"] as? Bool) == false }, "b still hears a")
        usleep(2_000_000)
        XCTAssertEqual(p.holders(), [.a], "b took an address a still holds")
        try p.topo.heal(node: .a, link: 1)
        XCTAssertTrue(waitUntil(5) { (p.status(.b)["peer_alive"] as? Bool) == true })
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1)
    }

    func testAFailingMonitoredServiceMovesTheAddressAndItComesBack() throws {
        let p = try startPair(failback: 2)
        let (r, t) = try probe(p, duration: 9) {
            _ = FileManager.default.createFile(atPath: p.dir(.a) + "/sick", contents: nil)
            XCTAssertTrue(waitUntil(5) { p.holders() == [.b] }, "the unhealthy owner kept the address")
            try FileManager.default.removeItem(atPath: p.dir(.a) + "/sick")
        }
        XCTAssertNotNil(r.timeToOtherNode(after: t))
        XCTAssertTrue(waitUntil(10) { p.holders() == [.a] }, "no failback after recovery")
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1)
        let history = (p.status(.a)["transitions"] as? [[String: Any]] ?? []).compactMap { $0["event"] as? String }
        XCTAssertTrue(history.contains("unhealthy") && history.contains("releaseip"), "\(history)")
    }

    func testAHangingEventScriptIsKilledAndTheDaemonKeepsBeating() throws {
        // a's monitor hangs: each run is killed after the 1 s timeout and counts as a failure.
        let p = try startPair(extraScripts: ["40.hang": "#!/bin/sh\n[ \"$1\" = monitor ] && [ -e \"$TWINFS_HA_STATE_DIR/../hang\" ] && sleep 60\nexit 0\n"])
        _ = FileManager.default.createFile(atPath: p.dir(.a) + "/hang", contents: nil)
        XCTAssertTrue(waitUntil(10) { p.holders() == [.b] }, "a stayed owner with a hanging monitor")
        let s = p.status(.a)
        XCTAssertEqual(s["healthy"] as? Bool, false)
        XCTAssertTrue((s["last_monitor_error"] as? String ?? "").contains("timed out"), "\(s)")
        XCTAssertEqual(s["peer_alive"] as? Bool, true, "a's heartbeats stopped while a script hung")
        // The killed script's children went with its process group. (While the hang file
        // exists every monitor run starts a new one, so follow the ones running now.)
        var hung: [pid_t] = []
        XCTAssertTrue(waitUntil(3) {
            hung = runCommand(["pgrep", "-xf", "sleep 60"], timeout: 10).stdout.split(separator: "\n").compactMap { pid_t($0) }
            return !hung.isEmpty
        }, "no hung script child to follow")
        XCTAssertTrue(waitUntil(3) { hung.allSatisfy { !NetnsTopology.isAlive($0) } }, "a hung script's child survived")
        try FileManager.default.removeItem(atPath: p.dir(.a) + "/hang")
        XCTAssertTrue(waitUntil(10) { p.holders() == [.a] })
    }

    func testALongLivedClientConnectionIsResetAtTakeover() throws {
        let p = try startPair()
        // A client holding one connection, idle, waiting for the server: only a tickle ACK
        // from the new owner tells it that its connection is dead.
        let script = """
        import socket, sys, time
        s = socket.create_connection(("\(p.vip)", 7000), timeout=2)
        s.sendall(b"hello\\n"); s.recv(100)
        print("connected", flush=True)
        s.settimeout(20)
        t = time.time()
        try:
            d = s.recv(100)
            print("eof" if not d else "data", flush=True)
        except ConnectionResetError:
            print("reset", flush=True)
        except socket.timeout:
            print("timeout", flush=True)
        print("after %.3f" % (time.time() - t), flush=True)
        """
        let path = p.topo.workDir + "/idle.py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        let c = try p.topo.spawn(.client, ["python3", "-u", path], log: "idle.log")
        XCTAssertTrue(waitUntil(5) { p.topo.readLog("idle.log").contains("connected") })
        usleep(500_000)   // a's beats carry the connection to b
        p.daemons[.a]?.signal(SIGKILL)
        // a's service keeps the connection open: without the tickle the client waits 20 s.
        XCTAssertNotNil(c.wait(timeout: 25))
        let out = p.topo.readLog("idle.log")
        XCTAssertTrue(out.contains("reset"), out)
        let after = Double(out.split(separator: "\n").first { $0.hasPrefix("after") }?.split(separator: " ").last ?? "99") ?? 99
        XCTAssertLessThan(after, 5, out)
    }

    func testACleanStopHandsOverAtOnceAndARestartedDaemonFindsItsAddress() throws {
        let p = try startPair(failback: 1)
        // SIGTERM: releaseip runs, a says it is leaving, b takes over without waiting.
        let t = Date()
        XCTAssertEqual(p.daemons[.a]?.stop(signal: SIGTERM, timeout: 10), 0)
        XCTAssertTrue(waitUntil(5) { p.holders() == [.b] }, "holders \(p.holders())")
        XCTAssertLessThan(Date().timeIntervalSince(t), 3)
        XCTAssertTrue(p.topo.readLog("ha-a.log").contains("released"), p.topo.readLog("ha-a.log"))
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "b took the address before a had released it")
        // Restarted, a is preferred again: it takes the address back after the failback delay.
        try p.startDaemon(.a)
        XCTAssertTrue(waitUntil(10) { p.holders() == [.a] })
        // kill -9 and an immediate restart: the fence drops the address at once, b takes it,
        // and the restarted a takes it back after the failback delay; one holder remains.
        p.daemons[.a]?.signal(SIGKILL)
        _ = p.daemons[.a]?.wait(timeout: 5)
        try p.startDaemon(.a)
        XCTAssertTrue(waitUntil(10) { p.holders() == [.a] && (p.status(.a)["state"] as? String) == "HOLDING" },
                      "holders \(p.holders()), a \(p.status(.a)), b \(p.status(.b))")
        XCTAssertTrue(waitUntil(5) { (p.status(.b)["holds"] as? [String])?.isEmpty == true })
    }

    func testFuzzedPacketsToALiveDaemonAreDroppedAndCounted() throws {
        let p = try startPair()
        let before = p.status(.a)["packets_dropped"] as? Int ?? 0
        // Random, truncated and forged heartbeats to a's heartbeat port. The daemon's socket is
        // connected to the peer's heartbeat address, so the kernel drops datagrams from anyone
        // else before the daemon sees them; the fuzzer therefore sends from b's own address and
        // port (an attacker on the heartbeat network spoofing b), where only the MAC stops it.
        let script = """
        import os, random, socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("\(p.topo.address(.b))", 7795))
        for i in range(3000):
            n = random.randint(0, 1400)
            b = os.urandom(n)
            if i % 3 == 0: b = b"TWHB\\x01" + b
            if i % 7 == 0: b = b"TWHB\\x01\\x01b" + b[:40]
            s.sendto(b, ("\(p.topo.address(.a)):7795".split(":")[0], 7795))
            if i % 50 == 0: time.sleep(0.01)
        print("sent", flush=True)
        """
        let path = p.topo.workDir + "/fuzz.py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        let r = p.topo.exec(.b, ["python3", path], timeout: 60)
        XCTAssertTrue(r.stdout.contains("sent"), r.stderr)
        usleep(500_000)
        XCTAssertTrue(p.daemons[.a]?.isRunning ?? false, "the daemon died:\n\(p.topo.readLog("ha-a.log"))")
        let s = p.status(.a)
        XCTAssertGreaterThan(s["packets_dropped"] as? Int ?? 0, before + 1500, "\(s)")
        XCTAssertEqual(s["peer_alive"] as? Bool, true)
        XCTAssertEqual(p.holders(), [.a])
    }
}
