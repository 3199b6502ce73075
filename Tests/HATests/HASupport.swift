import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// What the failover tests and the failover benchmark share: a running pair in namespaces.
class HATestCase: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static var binary: String {
        ProcessInfo.processInfo.environment["TWINFS_HA_BIN"] ?? repoRoot + "/.build/debug/twinfs-ha"
    }

    /// A running pair: daemons, probe servers, configs.
    final class Pair: @unchecked Sendable {
        let topo: NetnsTopology
        let vip: String
        var daemons: [NetnsTopology.Node: Child] = [:]
        var servers: [NetnsTopology.Node: Child] = [:]
        let maxHolders = Locked(0)
        let sampling = Locked(true)
        init(topo: NetnsTopology) {
            self.topo = topo
            vip = topo.address(host: 50)
        }
        func dir(_ n: NetnsTopology.Node) -> String { topo.workDir + "/" + n.rawValue }
        func config(_ n: NetnsTopology.Node) -> String { dir(n) + "/ha.toml" }
        func holders() -> [NetnsTopology.Node] { topo.holderNodes(address: vip) }

        func status(_ n: NetnsTopology.Node) -> [String: Any] {
            let r = runCommand([HATestCase.binary, "status", "--config", config(n), "--json"], timeout: 10)
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }

        /// Extra environment of a node's daemon (kept for restarts).
        var daemonEnv: [NetnsTopology.Node: [String: String]] = [:]

        func startDaemon(_ n: NetnsTopology.Node) throws {
            daemons[n] = try topo.spawn(n, [HATestCase.binary, "run", "--config", config(n)], log: "ha-\(n.rawValue).log",
                                        environment: daemonEnv[n])
        }

        /// Samples the holders every 20 ms until stopped: "never two owners" is checked over the whole run.
        func watch() {
            Thread { [self] in
                while sampling.with({ $0 }) {
                    let n = holders().count
                    maxHolders.with { $0 = max($0, n) }
                    usleep(20_000)
                }
            }.start()
        }
    }

    /// `heartbeatLink`: 0 = heartbeats on the public LAN (eth0); 1 = on a private heartbeat
    /// network of their own (eth1), as hospitals cable it.
    /// `defaults`: the daemon's default timings (the benchmark); else quicker monitor settings.
    /// `beforeDaemons`: runs once the namespaces exist, before the daemons start (services the
    /// event scripts start need their files); it returns `[events.env]` entries per node.
    func startPair(witness: Bool = false, failback: Double = 2, heartbeatLink: Int = 0, extraScripts: [String: String] = [:],
                   defaults: Bool = false, eventTimeout: Double = 1.0,
                   daemonEnv: [NetnsTopology.Node: [String: String]] = [:],
                   beforeDaemons: ((Pair) throws -> [NetnsTopology.Node: [String: String]])? = nil,
                   file: StaticString = #filePath, line: UInt = #line) throws -> Pair {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else { throw XCTSkip("twinfs-ha not built at \(Self.binary)") }
        let topo = try makeTopology(secondLink: heartbeatLink == 1, witness: witness)
        let p = Pair(topo: topo)
        p.daemonEnv = daemonEnv
        addTeardownBlock { p.sampling.with { $0 = false } }
        let secret = topo.workDir + "/secret"
        _ = FileManager.default.createFile(atPath: secret, contents: Data((0..<32).map { _ in UInt8.random(in: 0...255) }),
                                       attributes: [.posixPermissions: 0o600])
        if witness {
            _ = try topo.spawn(.witness, [Self.binary, "witness", "--listen", "\(topo.address(.witness)):7796",
                                          "--secret-file", secret, "--lease", defaults ? "0.35" : "0.5"], log: "witness.log")
        }
        let eventEnv = try beforeDaemons?(p) ?? [:]
        for n in [NetnsTopology.Node.a, .b] {
            let events = p.dir(n) + "/events"
            try FileManager.default.createDirectory(atPath: events, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: Self.repoRoot + "/ctdb-like/events/10.interface", toPath: events + "/10.interface")
            // The monitored service: healthy unless the test creates <dir>/sick.
            var scripts = ["50.service": "#!/bin/sh\n[ \"$1\" = monitor ] && [ -e \(p.dir(n))/sick ] && exit 1\nexit 0\n"]
            for (k, v) in extraScripts { scripts[k] = v }
            for (name, text) in scripts {
                try text.write(toFile: events + "/" + name, atomically: true, encoding: .utf8)
                chmod(events + "/" + name, 0o755)
            }
            let cfg = """
            node = "\(n.rawValue)"
            secret_file = "\(secret)"
            control_socket = "\(p.dir(n))/ha.sock"
            state_dir = "\(p.dir(n))/state"
            preferred = "a"
            \(defaults ? "" : "failback_delay = \(failback)")
            [nodes.a]
            heartbeat = ["\(topo.address(.a, link: heartbeatLink)):7795"]
            [nodes.b]
            heartbeat = ["\(topo.address(.b, link: heartbeatLink)):7795"]
            [[public]]
            address = "\(p.vip)/24"
            interface = "eth0"
            \(witness ? "[witness]\naddress = \"\(topo.address(.witness)):7796\"\n\(defaults ? "" : "lease = 0.5\n")" : "")
            [events]
            dir = "\(events)"
            \(defaults ? "" : "timeout = \(eventTimeout)\nmonitor_interval = 0.2\nmonitor_failures = 2")
            [events.env]
            \((eventEnv[n] ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) = \"\($0.value)\"" }.joined(separator: "\n"))
            """
            try cfg.write(toFile: p.config(n), atomically: true, encoding: .utf8)
            p.servers[n] = try topo.startProbeServer(on: n)
        }
        try p.startDaemon(.a)
        try p.startDaemon(.b)
        XCTAssertTrue(waitUntil(15) { p.holders() == [.a] }, "a (preferred) never took the address; holders \(p.holders())\n\(topo.readLog("ha-a.log"))", file: file, line: line)
        XCTAssertTrue(waitUntil(10) { (p.status(.b)["peer_alive"] as? Bool) == true }, file: file, line: line)
        p.watch()
        return p
    }

    /// Runs `inject` 1 s into a probe of `duration` s; returns the report and when it happened.
    func probe(_ p: Pair, duration: Double = 6, _ inject: () throws -> Void) throws -> (ProbeReport, Date) {
        let (child, json) = try p.topo.startProbe(target: p.vip, duration: duration)
        usleep(1_000_000)
        let t = Date()
        try inject()
        XCTAssertNotNil(child.wait(timeout: duration + 30))
        return (try ProbeReport.load(json), t)
    }

}

/// TwinFS nodes in the pair's namespaces (shared by the PACS, failback and partition tests).
extension HATestCase {
    static var twinfs: String { ProcessInfo.processInfo.environment["TWINFS_BIN"] ?? repoRoot + "/.build/debug/twinfs" }

    struct FSNode {
        let name: String
        let dir: String
        var brick: String { dir + "/brick" }
        var mnt: String { dir + "/mnt" }
        var config: String { dir + "/node.toml" }
        var log: String { dir + "/node.log" }
    }

    func mounted(_ path: String) -> Bool {
        ((try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "")
            .split(separator: "\n").contains { $0.split(separator: " ").count > 4 && $0.split(separator: " ")[4] == path }
    }

    func state(_ n: FSNode) -> String {
        let r = runCommand([Self.twinfs, "status", "--config", n.config, "--json"], timeout: 10)
        return ((try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any])?["state"] as? String ?? "?"
    }


    /// TwinFS nodes a and b in the pair's namespaces (the peer link between them), started and
    /// HEALTHY; `startNode(i)` starts node i again (after a kill). `haConfig`: each node's
    /// `ha_config` names its twinfs-ha config (with a witness there: witness-gated writes).
    func twinfsPair(_ p: Pair, haConfig: Bool = false) throws -> ([FSNode], (Int) throws -> Void) {
        let topo = p.topo
        let secret = topo.workDir + "/secret"
        let nodes = [FSNode(name: "a", dir: topo.workDir + "/fs-a"), FSNode(name: "b", dir: topo.workDir + "/fs-b")]
        let children = Locked<[String: Child]>([:])
        addTeardownBlock {
            for c in children.with({ Array($0.values) }) where c.isRunning { _ = c.stop(signal: SIGKILL, timeout: 5) }
            for n in nodes where self.mounted(n.mnt) { _ = runCommand(["umount", "-l", n.mnt]) }
        }
        for (i, n) in nodes.enumerated() {
            let me: NetnsTopology.Node = i == 0 ? .a : .b, other: NetnsTopology.Node = i == 0 ? .b : .a
            for d in [n.brick, n.mnt, n.dir + "/state"] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
            try """
            volume = "pacs"
            node = "\(n.name)"
            brick = "\(n.brick)"
            journal = "\(n.dir)/state/journal.db"
            mountpoint = "\(n.mnt)"
            control_socket = "\(n.dir)/state/control.sock"
            listen = "\(topo.address(me)):7780"
            \(haConfig ? "ha_config = \"\(p.config(me))\"" : "")
            [peer]
            node = "\(i == 0 ? "b" : "a")"
            address = "\(topo.address(other)):7780"
            secret_file = "\(secret)"
            timeout = 2.0
            """.write(toFile: n.config, atomically: true, encoding: .utf8)
        }
        // The node enters only the namespace's network: its FUSE mount stays visible to all.
        let startNode = { (i: Int) throws in
            let n = nodes[i], ns = topo.namespace(i == 0 ? .a : .b)
            let c = try Child(["nsenter", "--net=/var/run/netns/\(ns)", Self.twinfs, "node", "--config", n.config],
                              stdout: n.log, stderr: n.log)
            children.with { $0[n.name] = c }
        }
        try startNode(0)
        try startNode(1)
        XCTAssertTrue(waitUntil(60) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "pair not HEALTHY: \(nodes.map { state($0) })\n" + ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? ""))
        return (nodes, startNode)
    }
}
