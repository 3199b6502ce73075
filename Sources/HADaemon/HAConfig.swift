import Foundation
import TOMLKit
import TwinConfig
import TwinCore

/// The HA daemon's configuration (see ctdb-like/twinfs-ha.example.toml). Unknown keys are
/// refused, like the node's config: a typo must not silently change failover behaviour.
public struct HAConfig: Sendable, Equatable {
    public struct PublicAddress: Sendable, Equatable {
        /// Dotted IPv4 address.
        public var address: String
        public var prefix: Int
        public var interface: String
        public var cidr: String { "\(address)/\(prefix)" }
        public init(address: String, prefix: Int, interface: String) {
            self.address = address; self.prefix = prefix; self.interface = interface
        }
    }

    public struct Witness: Sendable, Equatable {
        public var address: String
        /// Seconds a grant lasts; the holder renews every beat.
        public var lease: Double
    }

    public var node: String
    public var peer: String
    public var secretFile: String
    public var controlSocket: String
    public var stateDir: String
    public var preferred: String
    public var failbackDelay: Double = 10
    public var beatInterval: Double = 0.1
    public var deadAfter: Int = 3
    /// Heartbeat addresses ("ip:port"), one per link, for this node and the peer (same order).
    public var heartbeat: [String]
    public var peerHeartbeat: [String]
    public var publicAddresses: [PublicAddress]
    public var witness: Witness?
    public var eventsDir: String
    public var eventTimeout: Double = 5
    public var monitorInterval: Double = 0.5
    public var monitorFailures: Int = 3
    /// Seconds a held address lives in the kernel unless the daemon refreshes it: a daemon
    /// killed with -9 cannot leave its address behind for longer.
    public var addressLifetime: Int = 4
    public var eventEnv: [String: String] = [:]
    public var path = "<string>"

    /// Silence after which the peer is dead.
    public var deadInterval: Double { beatInterval * Double(deadAfter) }

    static let topKeys: Set<String> = ["node", "secret_file", "control_socket", "state_dir", "preferred", "failback_delay",
                                       "beat_interval", "dead_after", "address_lifetime", "nodes", "public", "witness", "events"]

    public static func load(path: String) throws(AdminError) -> HAConfig {
        let abs = URL(fileURLWithPath: path).standardizedFileURL.path
        guard let data = FileManager.default.contents(atPath: abs), let text = String(data: data, encoding: .utf8) else {
            throw AdminError(problem: "cannot read HA config file \(abs)", fix: "check the path given with --config")
        }
        return try parse(text, path: abs)
    }

    public static func parse(_ text: String, path: String = "<string>") throws(AdminError) -> HAConfig {
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch {
            throw AdminError(problem: "config \(path) is not valid TOML: \(error)", fix: "fix the syntax at the line named")
        }
        func unknown(_ t: TOMLTable, _ allowed: Set<String>, _ section: String) throws(AdminError) {
            for k in t.keys.sorted() where !allowed.contains(k) {
                throw AdminError(problem: "config \(path): unknown key '\(section.isEmpty ? k : section + "." + k)'",
                                 fix: "see ctdb-like/twinfs-ha.example.toml for the keys")
            }
        }
        try unknown(table, topKeys, "")
        let r = ConfigReader(table: table, path: path)
        let node = try r.name("node")
        guard let nodes = table["nodes"]?.table, nodes.keys.count == 2, nodes.keys.contains(node) else {
            throw AdminError(problem: "config \(path): [nodes] must have exactly two tables, this node '\(node)' and its peer",
                             fix: "write [nodes.\(node)] and [nodes.<peer>], each with heartbeat = [\"ip:port\"]")
        }
        let peer = nodes.keys.first { $0 != node }!
        func beats(_ n: String) throws(AdminError) -> [String] {
            guard let t = nodes[n]?.table else {
                throw AdminError(problem: "config \(path): nodes.\(n) must be a table", fix: "write [nodes.\(n)]")
            }
            try unknown(t, ["heartbeat"], "nodes.\(n)")
            let list = t["heartbeat"]?.array?.compactMap { $0.string } ?? []
            guard (1...2).contains(list.count), list.allSatisfy({ Self.splitHostPort($0) != nil }) else {
                throw AdminError(problem: "config \(path): nodes.\(n).heartbeat must list one or two \"ipv4:port\" addresses",
                                 fix: "e.g. heartbeat = [\"10.0.0.11:7795\", \"10.1.0.11:7795\"] (one per heartbeat link)")
            }
            return list
        }
        let mine = try beats(node), theirs = try beats(peer)
        guard mine.count == theirs.count else {
            throw AdminError(problem: "config \(path): both nodes must list the same number of heartbeat links",
                             fix: "give nodes.\(node) and nodes.\(peer) one address per link, in the same order")
        }
        var publics: [PublicAddress] = []
        for (i, p) in (table["public"]?.array ?? TOMLArray()).enumerated() {
            guard let t = p.table else {
                throw AdminError(problem: "config \(path): public must be [[public]] tables", fix: "write [[public]] address/interface")
            }
            try unknown(t, ["address", "interface"], "public")
            let pr = ConfigReader(table: t, path: path, section: "public[\(i)]")
            let cidr = try pr.string("address")
            guard let (a, len) = Self.splitCIDR(cidr) else {
                throw AdminError(problem: "config \(path): public address '\(cidr)' is not ipv4/prefix", fix: "e.g. address = \"10.213.7.50/24\"")
            }
            let iface = try pr.string("interface")
            guard iface.utf8.count < 16, !iface.contains("/") else {
                throw AdminError(problem: "config \(path): interface '\(iface)' is not a network interface name", fix: "e.g. interface = \"eth0\"")
            }
            publics.append(PublicAddress(address: a, prefix: len, interface: iface))
        }
        guard !publics.isEmpty else {
            throw AdminError(problem: "config \(path): no [[public]] address", fix: "add the floating address clients use, e.g. [[public]] address = \"10.213.7.50/24\" interface = \"eth0\"")
        }
        var cfg = HAConfig(node: node, peer: peer, secretFile: try r.absolutePath("secret_file"),
                           controlSocket: try r.absolutePath("control_socket"), stateDir: try r.absolutePath("state_dir"),
                           preferred: node, heartbeat: mine, peerHeartbeat: theirs, publicAddresses: publics,
                           eventsDir: "", path: path)
        if table["preferred"] != nil {
            cfg.preferred = try r.name("preferred")
            guard cfg.preferred == node || cfg.preferred == peer else {
                throw AdminError(problem: "config \(path): preferred = '\(cfg.preferred)' is neither '\(node)' nor '\(peer)'", fix: "name one of the two nodes")
            }
        } else {
            cfg.preferred = min(node, peer)
        }
        if let v = try r.number("failback_delay", range: 0...86400) { cfg.failbackDelay = v }
        if let v = try r.number("beat_interval", range: 0.02...5) { cfg.beatInterval = v }
        if let v = try r.number("dead_after", range: 2...100) { cfg.deadAfter = Int(v) }
        if let v = try r.number("address_lifetime", range: 2...3600) { cfg.addressLifetime = Int(v) }
        if let w = table["witness"] {
            guard let t = w.table else { throw AdminError(problem: "config \(path): witness must be a table", fix: "write [witness]") }
            try unknown(t, ["address", "lease"], "witness")
            let wr = ConfigReader(table: t, path: path, section: "witness")
            let a = try wr.string("address")
            guard Self.splitHostPort(a) != nil else {
                throw AdminError(problem: "config \(path): witness.address '\(a)' is not ipv4:port", fix: "e.g. address = \"10.0.0.13:7796\"")
            }
            cfg.witness = Witness(address: a, lease: try wr.number("lease", range: 0.1...60) ?? cfg.deadInterval + 0.05)
        }
        guard let ev = table["events"]?.table else {
            throw AdminError(problem: "config \(path): [events] is missing", fix: "add [events] dir = \"/etc/twinfs/ha/events\"")
        }
        try unknown(ev, ["dir", "timeout", "monitor_interval", "monitor_failures", "env"], "events")
        let er = ConfigReader(table: ev, path: path, section: "events")
        cfg.eventsDir = try er.absolutePath("dir")
        if let v = try er.number("timeout", range: 0.1...600) { cfg.eventTimeout = v }
        if let v = try er.number("monitor_interval", range: 0.05...600) { cfg.monitorInterval = v }
        if let v = try er.number("monitor_failures", range: 1...1000) { cfg.monitorFailures = Int(v) }
        if let env = ev["env"] {
            guard let t = env.table else { throw AdminError(problem: "config \(path): events.env must be a table", fix: "write [events.env]") }
            for k in t.keys {
                guard let v = t[k]?.string else {
                    throw AdminError(problem: "config \(path): events.env.\(k) must be a string", fix: "quote it")
                }
                cfg.eventEnv[k] = v
            }
        }
        return cfg
    }

    public static func splitHostPort(_ s: String) -> (String, UInt16)? {
        guard let i = s.lastIndex(of: ":"), let port = UInt16(s[s.index(after: i)...]), port > 0 else { return nil }
        let host = String(s[..<i])
        return inet_addr(host) == INADDR_NONE ? nil : (host, port)
    }

    public static func splitCIDR(_ s: String) -> (String, Int)? {
        let parts = s.split(separator: "/")
        guard parts.count == 2, let len = Int(parts[1]), (1...32).contains(len), inet_addr(String(parts[0])) != INADDR_NONE else { return nil }
        return (String(parts[0]), len)
    }
}
