import Foundation
import TOMLKit
import TwinCore

/// One node's configuration, read from a TOML file (see docs/twinfs.example.toml).
/// Key names are part of the admin interface and stay stable.
public struct NodeConfig: Sendable, Equatable {
    public struct Peer: Sendable, Equatable {
        public var node: String
        public var address: String
        public var secretFile: String
        /// Seconds without an answer after which the peer is declared down (`peer.timeout`).
        public var timeout: Double = 2.5
        public init(node: String, address: String, secretFile: String, timeout: Double = 2.5) {
            self.node = node
            self.address = address
            self.secretFile = secretFile
            self.timeout = timeout
        }
    }

    public var volume: String
    public var node: String
    public var brick: String
    public var journal: String
    public var mountpoint: String
    public var controlSocket: String
    public var listen: String
    public var peer: Peer?
    /// Kernel attribute/entry cache lifetime in seconds.
    public var attrTimeout: Double = 1.0
    /// FUSE worker threads at most.
    public var maxThreads: Int = 16
    /// `seal_commits`: a content commit seals the brick file (size and XXH3-128 in an xattr,
    /// a seal marker) and costs one device flush instead of two (file and journal). Off by
    /// default: on the project's VM it did not pay (docs/ARCHITECTURE.md, "File content").
    public var sealCommits = false
    /// The HA daemon's config on this machine (`ha_config`): `twinfs status` adds its view.
    public var haConfig: String?
    /// [heal]: bytes per second the healer may move (0: unlimited) and files received at once.
    public var healRate: Int64 = 0
    public var healConcurrency: Int = 4
    /// [scrub]: bytes per second the scrubber reads, and seconds between scheduled scrubs (nil: off).
    public var scrubRate: Int64 = 50_000_000
    public var scrubInterval: Double? = 30 * 86400
    /// `metrics_listen`: where the Prometheus endpoint listens (nil: no endpoint).
    public var metricsListen: String?
    /// [tier]: the S3 archive tier (nil: no tier, every file stays on the bricks).
    public var tier: TierConfig?
    /// Where this config was read from (absolute).
    public var path: String = "<string>"

    public var identity: VolumeIdentity { VolumeIdentity(volume: volume, node: node) }

    /// The node's ordinal in stable ids: 1 for the name that sorts first, 2 for the other.
    public var nodeOrdinal: UInt8 {
        guard let p = peer else { return 1 }
        return node < p.node ? 1 : 2
    }

    public static let knownKeys: Set<String> = ["volume", "node", "brick", "journal", "mountpoint", "control_socket",
                                                "listen", "peer", "attr_timeout", "max_threads", "ha_config", "heal", "scrub",
                                                "metrics_listen", "seal_commits", "tier"]

    public static func load(path: String) throws(AdminError) -> NodeConfig {
        let abs = URL(fileURLWithPath: path).standardizedFileURL.path
        guard let data = FileManager.default.contents(atPath: abs) else {
            throw AdminError(problem: "cannot read config file \(abs)",
                             fix: "check the path given with --config and that the file is readable")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw AdminError(problem: "config file \(abs) is not UTF-8 text", fix: "save it as UTF-8")
        }
        return try parse(text, path: abs)
    }

    public static func parse(_ text: String, path: String = "<string>") throws(AdminError) -> NodeConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw AdminError(problem: "config \(path) line \(e.source.begin.line): \(e.description)",
                             fix: "correct the TOML syntax (see docs/twinfs.example.toml)")
        } catch {
            throw AdminError(problem: "config \(path) is not valid TOML: \(error)",
                             fix: "correct the TOML syntax (see docs/twinfs.example.toml)")
        }
        let r = ConfigReader(table: table, path: path)
        for key in table.keys.sorted() where !knownKeys.contains(key) {
            throw AdminError(problem: "config \(path): unknown key '\(key)'",
                             fix: "remove it or correct its spelling (known keys: \(knownKeys.sorted().joined(separator: ", ")))")
        }
        var cfg = NodeConfig(volume: try r.name("volume"), node: try r.name("node"),
                             brick: try r.absolutePath("brick"), journal: try r.absolutePath("journal"),
                             mountpoint: try r.absolutePath("mountpoint"),
                             controlSocket: try r.absolutePath("control_socket"),
                             listen: try r.hostPort("listen"), peer: nil, path: path)
        if let d = try r.number("attr_timeout", range: 0...3600) { cfg.attrTimeout = d }
        if let n = try r.number("max_threads", range: 1...256) { cfg.maxThreads = Int(n) }
        if let b = try r.flag("seal_commits") { cfg.sealCommits = b }
        if table["ha_config"] != nil { cfg.haConfig = try r.absolutePath("ha_config") }
        if table["metrics_listen"] != nil { cfg.metricsListen = try r.hostPort("metrics_listen") }
        if let h = table["heal"] {
            let hr = try ConfigReader.section(h, "heal", keys: ["rate_mb", "concurrency"], path: path)
            if let v = try hr.number("rate_mb", range: 0...100_000) { cfg.healRate = Int64(v * 1_000_000) }
            if let v = try hr.number("concurrency", range: 1...64) { cfg.healConcurrency = Int(v) }
        }
        if let sc = table["scrub"] {
            let sr = try ConfigReader.section(sc, "scrub", keys: ["rate_mb", "schedule"], path: path)
            if let v = try sr.number("rate_mb", range: 0...100_000) { cfg.scrubRate = Int64(v * 1_000_000) }
            if sr.table["schedule"] != nil {
                let sched = try sr.string("schedule")
                switch sched {
                case "off": cfg.scrubInterval = nil
                case "daily": cfg.scrubInterval = 86400
                case "weekly": cfg.scrubInterval = 7 * 86400
                case "monthly": cfg.scrubInterval = 30 * 86400
                default:
                    guard sched.hasSuffix("d"), let days = Double(sched.dropLast()), days > 0, days <= 3650 else {
                        throw AdminError(problem: "config \(path): scrub.schedule = '\(sched)' is not a schedule",
                                         fix: "use off, daily, weekly, monthly or a number of days such as \"14d\"")
                    }
                    cfg.scrubInterval = days * 86400
                }
            }
        }
        if let t = table["tier"] { cfg.tier = try TierConfig.parse(t, path: path, volume: cfg.volume) }
        if let p = table["peer"] {
            guard let pt = p.table else {
                throw AdminError(problem: "config \(path): 'peer' must be a table",
                                 fix: "write it as a [peer] section with node, address and secret_file")
            }
            for key in pt.keys.sorted() where !["node", "address", "secret_file", "timeout"].contains(key) {
                throw AdminError(problem: "config \(path): unknown key 'peer.\(key)'",
                                 fix: "the [peer] section takes node, address, secret_file and timeout")
            }
            let pr = ConfigReader(table: pt, path: path, section: "peer")
            var peer = Peer(node: try pr.name("node"), address: try pr.hostPort("address"),
                            secretFile: try pr.absolutePath("secret_file"))
            if let t = try pr.number("timeout", range: 0.2...30) { peer.timeout = t }
            guard peer.node != cfg.node else {
                throw AdminError(problem: "config \(path): peer.node is '\(peer.node)', the same as this node",
                                 fix: "name the other node of the pair in [peer]")
            }
            cfg.peer = peer
        }
        try cfg.checkLayout()
        return cfg
    }

    /// Paths must not nest into each other: a journal inside the mount or the brick would
    /// replicate or hide itself, a brick inside the mount would recurse.
    public func checkLayout() throws(AdminError) {
        func inside(_ a: String, _ b: String) -> Bool { a == b || a.hasPrefix(b.hasSuffix("/") ? b : b + "/") }
        if inside(journal, mountpoint) || inside(journal, brick) {
            throw AdminError(problem: "config \(path): journal \(journal) lies inside the \(inside(journal, mountpoint) ? "mount point" : "brick")",
                             fix: "put the journal on the node's local disk outside the brick and the mount point, e.g. /var/lib/twinfs/\(volume).journal")
        }
        if inside(brick, mountpoint) || inside(mountpoint, brick) {
            throw AdminError(problem: "config \(path): brick \(brick) and mount point \(mountpoint) overlap",
                             fix: "use separate directories, e.g. brick = /srv/twinfs/brick and mountpoint = /mnt/pacs")
        }
        if inside(controlSocket, mountpoint) || inside(controlSocket, brick) {
            throw AdminError(problem: "config \(path): control_socket lies inside the brick or the mount point",
                             fix: "use e.g. /run/twinfs/\(volume).sock")
        }
        if let creds = tier?.credentialsFile, inside(creds, mountpoint) || inside(creds, brick) {
            throw AdminError(problem: "config \(path): tier.credentials_file lies inside the brick or the mount point, where the volume's users could read it",
                             fix: "keep it with the node's config, e.g. /etc/twinfs/\(volume).tier-credentials (mode 0600)")
        }
    }

    /// "host:port" or "[v6]:port".
    public static func parseHostPort(_ s: String) -> (host: String, port: Int)? {
        let host: Substring
        let portPart: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return nil }
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portPart = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            portPart = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portPart), (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// A config file text for the given values (used by `twinfs demo` and tests).
    public static func render(volume: String, node: String, brick: String, journal: String, mountpoint: String,
                              controlSocket: String, listen: String,
                              peer: Peer? = nil) -> String {
        var s = """
        # TwinFS node configuration (see docs/twinfs.example.toml for every key)
        volume = "\(volume)"
        node = "\(node)"
        brick = "\(brick)"
        journal = "\(journal)"
        mountpoint = "\(mountpoint)"
        control_socket = "\(controlSocket)"
        listen = "\(listen)"

        """
        if let p = peer {
            s += """

            [peer]
            node = "\(p.node)"
            address = "\(p.address)"
            secret_file = "\(p.secretFile)"
            timeout = \(p.timeout)

            """
        }
        return s
    }
}

/// Typed access to one TOML table with admin-readable errors (node and HA daemon configs).
public struct ConfigReader {
    public let table: TOMLTable
    public let path: String
    public var section = ""

    /// The reader of section `[name]`, refusing keys it does not know.
    public static func section(_ value: any TOMLValueConvertible, _ name: String, keys: Set<String>, path: String) throws(AdminError) -> ConfigReader {
        guard let t = value.table else {
            throw AdminError(problem: "config \(path): '\(name)' must be a table", fix: "write it as a [\(name)] section")
        }
        for key in t.keys.sorted() where !keys.contains(key) {
            throw AdminError(problem: "config \(path): unknown key '\(name).\(key)'",
                             fix: "the [\(name)] section takes \(keys.sorted().joined(separator: ", "))")
        }
        return ConfigReader(table: t, path: path, section: name)
    }

    public init(table: TOMLTable, path: String, section: String = "") {
        self.table = table
        self.path = path
        self.section = section
    }

    public func label(_ key: String) -> String { section.isEmpty ? key : "\(section).\(key)" }

    public func string(_ key: String) throws(AdminError) -> String {
        guard let v = table[key] else {
            throw AdminError(problem: "config \(path): required key '\(label(key))' is missing",
                             fix: "add \(key) = \"...\"\(section.isEmpty ? "" : " under [\(section)]") (see docs/twinfs.example.toml)")
        }
        guard let s = v.string else {
            throw AdminError(problem: "config \(path): '\(label(key))' must be a string",
                             fix: "write it in double quotes, e.g. \(key) = \"...\"")
        }
        guard !s.isEmpty else {
            throw AdminError(problem: "config \(path): '\(label(key))' is empty", fix: "give it a value")
        }
        return s
    }

    public func name(_ key: String) throws(AdminError) -> String {
        let s = try string(key)
        let ok = s.utf8.count <= 64 && s.allSatisfy {
            $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".")
        }
        guard ok else {
            throw AdminError(problem: "config \(path): '\(label(key))' = '\(s)' is not a valid name",
                             fix: "use up to 64 letters, digits, '-', '_' or '.'")
        }
        return s
    }

    public func absolutePath(_ key: String) throws(AdminError) -> String {
        let s = try string(key)
        guard s.hasPrefix("/") else {
            throw AdminError(problem: "config \(path): '\(label(key))' must be an absolute path, got '\(s)'",
                             fix: "write the full path starting with /")
        }
        return URL(fileURLWithPath: s).standardizedFileURL.path
    }

    public func hostPort(_ key: String) throws(AdminError) -> String {
        let s = try string(key)
        guard NodeConfig.parseHostPort(s) != nil else {
            throw AdminError(problem: "config \(path): \(label(key)) = '\(s)' is not host:port",
                             fix: "write it as \"192.0.2.10:7780\" or \"[2001:db8::10]:7780\"")
        }
        return s
    }

    public func flag(_ key: String) throws(AdminError) -> Bool? {
        guard let v = table[key] else { return nil }
        guard let b = v.bool else {
            throw AdminError(problem: "config \(path): '\(label(key))' must be true or false", fix: "e.g. \(key) = false")
        }
        return b
    }

    public func number(_ key: String, range: ClosedRange<Double>) throws(AdminError) -> Double? {
        guard let v = table[key] else { return nil }
        guard let d = v.double ?? v.int.map(Double.init), range.contains(d) else {
            throw AdminError(problem: "config \(path): '\(label(key))' must be a number from \(range.lowerBound) to \(range.upperBound)",
                             fix: "e.g. \(key) = \(range.lowerBound)")
        }
        return d
    }
}
