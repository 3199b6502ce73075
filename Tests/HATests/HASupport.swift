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
