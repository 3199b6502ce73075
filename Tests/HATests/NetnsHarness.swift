import Foundation
import Glibc
import TestSupport
import XCTest

// Test support for twinfs-ha: a two-node cluster, a client and optionally a witness, each in
// its own network namespace, joined by a bridge that lives in a namespace of its own, so
// nothing touches the host's network. Same topology and semantics as the keepalived/CTDB
// anchor measurements (/work/shared/anchors/ha.md). Every process started in a namespace is
// killed and every namespace deleted by `destroy()`, which `XCTestCase.makeTopology` pairs
// with addTeardownBlock so it runs even when a test fails.
//
// (Test targets cannot share files, so `Child` and `runCommand` are copied from
// IntegrationTests/Harness.swift; Foundation.Process hangs on this platform.)

// MARK: - Processes

/// Absolute paths of the tools the harness runs (the test runner's PATH may lack /usr/sbin).
enum HATools {
    static func find(_ name: String) -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for dir in path + ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"] {
            let p = dir + "/" + name
            if access(p, X_OK) == 0 { return p }
        }
        return name
    }
    static let ip = find("ip")
    static let bridge = find("bridge")
    static let python3 = find("python3")
    static let sysctl = find("sysctl")

    /// Tests/HATests/probe.py, next to this file.
    static let probeScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("probe.py").path
    /// The repository root (for ctdb-like/events and the built binaries).
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    /// The shipped event scripts.
    static let eventsDir = repoRoot + "/ctdb-like/events"

    /// Why netns tests cannot run here, or nil when they can (root, `ip netns` works).
    static func unavailableReason() -> String? {
        if getuid() != 0 { return "network namespace tests need root" }
        if access(ip, X_OK) != 0 { return "iproute2 `ip` not found" }
        let r = runCommand([ip, "netns", "list"], timeout: 10)
        if r.status != 0 { return "`ip netns` is not available: \(r.stderr)" }
        if access(python3, X_OK) != 0 { return "python3 not found (probe.py)" }
        return nil
    }
}

/// Polls `condition` every `interval` seconds until it is true (returns true) or `timeout`
/// seconds passed (returns false).
@discardableResult
func waitUntil(_ timeout: TimeInterval, interval: TimeInterval = 0.05, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if condition() { return true }
        if Date() > deadline { return false }
        usleep(useconds_t(interval * 1_000_000))
    }
}

// MARK: - Topology

/// Namespaces `<p>-sw` (bridges br0 [and br1]), `<p>-a`, `<p>-b` (the nodes), `<p>-c` (the
/// client) and optionally `<p>-w` (the witness). Each of a, b, c, w has `eth0` on br0 with
/// address `10.231.X.{11,12,100,13}/24`; with `secondLink`, a and b also have `eth1` on br1
/// with `10.232.X.{11,12}/24`. Bridge-side ports are `p<node><link>` in `<p>-sw`
/// (e.g. `pa0`, `pb1`). MACs are fixed: `02:e7:XX:0L:00:HH` (XX = X in hex, L = link, HH =
/// host byte in hex), so a client's ARP entry maps to a node at a glance.
final class NetnsTopology: @unchecked Sendable {
    enum Node: String, CaseIterable, Sendable {
        case a = "a", b = "b", client = "c", witness = "w", sw = "sw"
        /// Last byte of the node's addresses.
        var host: Int {
            switch self {
            case .a: return 11
            case .b: return 12
            case .witness: return 13
            case .client: return 100
            case .sw: return 0
            }
        }
        /// The name probe servers and tests use for the node ("node-a", "node-b", ...).
        var displayName: String {
            switch self {
            case .a: return "node-a"
            case .b: return "node-b"
            case .client: return "client"
            case .witness: return "witness"
            case .sw: return "switch"
            }
        }
    }

    enum CutMode: Sendable {
        /// The bridge-side veth is set down: the node sees NO-CARRIER (cable pull).
        case carrier
        /// The bridge-side veth is detached from the bridge: the node keeps carrier, every
        /// frame in both directions is lost (a black hole; deterministic).
        case silent
        /// The bridge port state is set to disabled (`bridge link set dev X state 0`), the
        /// method of the anchor measurements (ha.md quirk 10: once looked racy there).
        case portDisabled
    }

    /// Namespace family prefix shared by every topology (for `sweep`).
    static let family = "th"

    /// e.g. "th3fa9": namespaces are "th3fa9-a" etc.
    let prefix: String
    /// X of 10.231.X.0/24 (eth0 network) and 10.232.X.0/24 (eth1 network).
    let subnet: Int
    let secondLink: Bool
    let witness: Bool
    let clientArpAccept: Bool
    /// Logs and probe output of this topology (removed by destroy unless TWINFS_HA_KEEP=1).
    let workDir: String

    private let lock = NSLock()
    private var children: [Child] = []
    private var destroyed = false
    private var partitioned = false
    private var created: [Node] = []

    /// The nodes present in this topology (sw excluded).
    var nodes: [Node] { [.a, .b, .client] + (witness ? [.witness] : []) }

    /// Creates the namespaces, bridges, veths and addresses. On failure everything created
    /// so far is deleted and the error thrown.
    init(secondLink: Bool = false, witness: Bool = false, clientArpAccept: Bool = true) throws {
        self.secondLink = secondLink
        self.witness = witness
        self.clientArpAccept = clientArpAccept
        let existing = Set(Self.listNamespaces())
        var p = ""
        repeat {
            p = Self.family + String(format: "%04x", UInt32.random(in: 0...0xffff))
        } while existing.contains { $0.hasPrefix(p + "-") }
        prefix = p
        subnet = Int.random(in: 1...254)
        workDir = "/tmp/twinfs-ha-test/\(p)"
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
        do {
            try build()
        } catch {
            destroy()
            throw error
        }
    }

    deinit {
        // A topology that was never destroyed must not outlive its test.
        if !destroyed { destroy() }
    }

    // MARK: names and addresses

    func namespace(_ node: Node) -> String { "\(prefix)-\(node.rawValue)" }

    /// The node's address on link 0 (eth0, 10.231.X.H) or link 1 (eth1, 10.232.X.H).
    func address(_ node: Node, link: Int = 0) -> String { address(host: node.host, link: link) }

    /// Any host address on link 0 or 1, e.g. `address(host: 50)` for a public address.
    func address(host: Int, link: Int = 0) -> String { "10.\(231 + link).\(subnet).\(host)" }

    /// The public (floating) address tests use by default: 10.231.X.50.
    var publicAddress: String { address(host: 50) }
    var prefixLength: Int { 24 }

    /// The node's interface name on link 0 or 1.
    func interface(link: Int = 0) -> String { "eth\(link)" }

    /// The fixed MAC of the node's eth<link>.
    func mac(_ node: Node, link: Int = 0) -> String {
        String(format: "02:e7:%02x:%02x:00:%02x", subnet, link, node.host)
    }

    /// The bridge-side port of the node's link.
    func port(_ node: Node, link: Int = 0) -> String { "p\(node.rawValue)\(link)" }

    /// The node whose eth0/eth1 has this MAC.
    func node(forMAC mac: String) -> Node? {
        let m = mac.lowercased()
        for n in nodes { for l in 0...1 where self.mac(n, link: l) == m { return n } }
        return nil
    }

    // MARK: commands

    /// Runs a command inside the node's namespace (`ip netns exec`) and waits for it.
    @discardableResult
    func exec(_ node: Node, _ args: [String], timeout: Int = 30, environment: [String: String]? = nil) -> CommandResult {
        runCommand([HATools.ip, "netns", "exec", namespace(node)] + args, timeout: timeout, environment: environment)
    }

    /// Starts a long-running process inside the node's namespace; stdout and stderr go to
    /// `log` (relative paths are under `workDir`). destroy() kills it.
    func spawn(_ node: Node, _ args: [String], log: String, environment: [String: String]? = nil) throws -> Child {
        let path = logPath(log)
        let c = try Child([HATools.ip, "netns", "exec", namespace(node)] + args, stdout: path, stderr: path,
                          environment: environment)
        lock.lock()
        children.append(c)
        lock.unlock()
        return c
    }

    func logPath(_ log: String) -> String { log.hasPrefix("/") ? log : workDir + "/" + log }

    /// The contents of a log written by `spawn` (for failure messages).
    func readLog(_ log: String) -> String { (try? String(contentsOfFile: logPath(log), encoding: .utf8)) ?? "" }

    @discardableResult
    private func must(_ args: [String], _ what: String) throws -> CommandResult {
        let r = runCommand(args, timeout: 20)
        if r.status != 0 {
            throw SpawnError(description: "\(what): `\(args.joined(separator: " "))` exited \(r.status): \(r.stderr)")
        }
        return r
    }

    private func ipIn(_ node: Node, _ args: [String]) -> [String] { [HATools.ip, "-n", namespace(node)] + args }

    // MARK: building

    private func build() throws {
        let all: [Node] = [.sw] + nodes
        for n in all {
            try must([HATools.ip, "netns", "add", namespace(n)], "create namespace")
            lock.lock(); created.append(n); lock.unlock()
            try must(ipIn(n, ["link", "set", "lo", "up"]), "lo up")
        }
        let links = secondLink ? [0, 1] : [0]
        for l in links {
            try must(ipIn(.sw, ["link", "add", "br\(l)", "type", "bridge", "stp_state", "0", "forward_delay", "0",
                                "mcast_snooping", "0"]), "bridge")
            try must(ipIn(.sw, ["link", "set", "br\(l)", "up"]), "bridge up")
            for n in nodes where l == 0 || n == .a || n == .b {
                try must([HATools.ip, "link", "add", "eth\(l)", "netns", namespace(n), "address", mac(n, link: l),
                          "type", "veth", "peer", "name", port(n, link: l), "netns", namespace(.sw)], "veth")
                try must(ipIn(.sw, ["link", "set", port(n, link: l), "master", "br\(l)", "up"]), "port up")
                try must(ipIn(n, ["addr", "add", "\(address(n, link: l))/24", "dev", "eth\(l)"]), "address")
                try must(ipIn(n, ["link", "set", "eth\(l)", "up"]), "eth up")
            }
        }
        if clientArpAccept {
            // Gratuitous ARP may then create a neighbour entry, not only update one (ha.md).
            for key in ["all", "default", "eth0"] {
                try must([HATools.ip, "netns", "exec", namespace(.client), HATools.sysctl, "-q", "-w",
                          "net.ipv4.conf.\(key).arp_accept=1"], "arp_accept")
            }
        }
        let up = waitUntil(5) {
            self.nodes.allSatisfy { n in (n == .a || n == .b ? links : [0]).allSatisfy { self.carrier(n, link: $0) } }
        }
        if !up { throw SpawnError(description: "links of \(prefix) did not come up within 5 s") }
    }

    // MARK: state

    /// True when the node's eth<link> has carrier (LOWER_UP).
    func carrier(_ node: Node, link: Int = 0) -> Bool {
        let r = runCommand(ipIn(node, ["-o", "link", "show", "dev", "eth\(link)"]), timeout: 10)
        guard r.status == 0, let open = r.stdout.firstIndex(of: "<"), let close = r.stdout.firstIndex(of: ">") else {
            return false
        }
        return r.stdout[r.stdout.index(after: open)..<close].split(separator: ",").contains("LOWER_UP")
    }

    /// Addresses ("10.231.X.50/24") configured on the node, per interface.
    func addresses(_ node: Node) -> [(interface: String, address: String)] {
        let r = runCommand(ipIn(node, ["-o", "addr", "show"]), timeout: 10)
        var out: [(String, String)] = []
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count > 3, let i = f.firstIndex(where: { $0 == "inet" || $0 == "inet6" }), i + 1 < f.count else { continue }
            out.append((String(f[1]), String(f[i + 1])))
        }
        return out
    }

    /// Which nodes ("a", "b", "c", "w": Node raw values) have `address` configured, in that
    /// order. Parses `ip -o addr` in Swift (no `| grep -q` under pipefail: ha.md quirk 9).
    func holders(address: String) -> [String] {
        holderNodes(address: address).map(\.rawValue)
    }

    func holderNodes(address: String) -> [Node] {
        nodes.filter { n in addresses(n).contains { $0.address.split(separator: "/").first.map(String.init) == address } }
    }

    /// The MAC the client's neighbour table has for `address` (nil: no entry, or not
    /// resolved: INCOMPLETE/FAILED). Map it with `node(forMAC:)` or `clientNeighborNode`.
    func clientNeighbor(address: String) -> String? {
        let r = runCommand(ipIn(.client, ["neigh", "show", "to", address, "dev", "eth0"]), timeout: 10)
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.first == address, let i = f.firstIndex(of: "lladdr"), i + 1 < f.count else { continue }
            if f.contains("FAILED") || f.contains("INCOMPLETE") { return nil }
            return f[i + 1].lowercased()
        }
        return nil
    }

    /// The node the client's neighbour entry for `address` points to.
    func clientNeighborNode(address: String) -> Node? { clientNeighbor(address: address).flatMap { node(forMAC: $0) } }

    /// The MACs of a's and b's eth0 (as the kernel reports them).
    var nodeMACs: [Node: String] {
        var out: [Node: String] = [:]
        for n in [Node.a, .b] {
            let r = runCommand(ipIn(n, ["-o", "link", "show", "dev", "eth0"]), timeout: 10)
            let f = r.stdout.split(whereSeparator: { $0 == " " || $0 == "\\" }).map(String.init)
            if let i = f.firstIndex(of: "link/ether"), i + 1 < f.count { out[n] = f[i + 1].lowercased() }
        }
        return out
    }

    /// Forgets the client's neighbour entry for `address` (or all entries), so the next
    /// packet re-resolves it by ARP.
    func flushClientNeighbor(address: String? = nil) {
        runCommand(ipIn(.client, ["neigh", "flush", "dev", "eth0"] + (address.map { ["to", $0] } ?? [])), timeout: 10)
    }

    // MARK: failures

    private func linksOf(_ node: Node, _ link: Int?) -> [Int] {
        if let l = link { return [l] }
        return secondLink && (node == .a || node == .b) ? [0, 1] : [0]
    }

    /// Cuts the node off the network at the switch: every link of the node (default) or
    /// only `link` (0 = eth0, 1 = eth1).
    func cutLink(node: Node, mode: CutMode = .carrier, link: Int? = nil) throws {
        for l in linksOf(node, link) {
            let p = port(node, link: l)
            switch mode {
            case .carrier:
                try must(ipIn(.sw, ["link", "set", p, "down"]), "cut (carrier)")
            case .silent:
                try must(ipIn(.sw, ["link", "set", p, "nomaster"]), "cut (silent)")
            case .portDisabled:
                try must([HATools.ip, "netns", "exec", namespace(.sw), HATools.bridge, "link", "set", "dev", p,
                          "state", "0"], "cut (port disabled)")
            }
        }
    }

    /// Undoes every kind of cut on the node's links (all links by default), re-applying the
    /// partition if one is in force, and waits (≤ 5 s) for carrier.
    func heal(node: Node, link: Int? = nil) throws {
        let ls = linksOf(node, link)
        for l in ls {
            let p = port(node, link: l)
            try must(ipIn(.sw, ["link", "set", p, "master", "br\(l)"]), "heal: attach")
            try must(ipIn(.sw, ["link", "set", p, "up"]), "heal: up")
            try must([HATools.ip, "netns", "exec", namespace(.sw), HATools.bridge, "link", "set", "dev", p,
                      "state", "3"], "heal: forwarding")
        }
        lock.lock(); let part = partitioned; lock.unlock()
        if part && (node == .a || node == .b) { try setIsolation(true) }
        if !waitUntil(5, { ls.allSatisfy { self.carrier(node, link: $0) } }) {
            throw SpawnError(description: "heal: \(node) has no carrier after 5 s")
        }
    }

    private func setIsolation(_ on: Bool) throws {
        for l in secondLink ? [0, 1] : [0] {
            for n in [Node.a, .b] {
                try must([HATools.ip, "netns", "exec", namespace(.sw), HATools.bridge, "link", "set", "dev",
                          port(n, link: l), "isolated", on ? "on" : "off"], "isolation")
            }
        }
    }

    /// Split brain: a and b cannot reach each other (on eth0 and eth1), both still reach
    /// the client and the witness. Bridge port isolation on a's and b's ports only.
    func partition() throws {
        try setIsolation(true)
        lock.lock(); partitioned = true; lock.unlock()
    }

    func unpartition() throws {
        try setIsolation(false)
        lock.lock(); partitioned = false; lock.unlock()
    }

    // MARK: probes

    /// ICMP echo from `from` to `address` (probe.py ping; no ping binary needed).
    func ping(from: Node, _ address: String, timeout: Double = 1) -> Bool {
        exec(from, [HATools.python3, HATools.probeScript, "ping", "--target", address, "--timeout", "\(timeout)"],
             timeout: Int(timeout) + 10).status == 0
    }

    /// Starts `probe.py server --name <node-x>` on 0.0.0.0:port in the node and waits (≤ 5 s)
    /// until it listens.
    func startProbeServer(on node: Node, name: String? = nil, port: Int = 7000) throws -> Child {
        let log = "server-\(node.rawValue)-\(port).log"
        let c = try spawn(node, [HATools.python3, "-u", HATools.probeScript, "server", "--name", name ?? node.displayName,
                                 "--port", "\(port)"], log: log)
        let ok = waitUntil(5) {
            !c.isRunning || self.exec(node, ["ss", "-Hltn", "sport", "=", ":\(port)"], timeout: 10).stdout.contains(":\(port)")
        }
        if !ok || !c.isRunning {
            throw SpawnError(description: "probe server in \(node) did not start: \(readLog(log))")
        }
        return c
    }

    enum ProbeMode: String, Sendable { case probe, hold }

    /// Starts probe.py in the client against `target` for `duration` seconds; returns the
    /// child and the JSON path. Load the report with `ProbeReport.load(json)` after
    /// `child.wait()`. `events` (a path) is where `markEvent` appends injected events.
    func startProbe(_ mode: ProbeMode = .probe, target: String, port: Int = 7000, duration: Double,
                    interval: Double = 0.05, timeout: Double = 1.0, name: String? = nil,
                    events: String? = nil) throws -> (child: Child, json: String) {
        let n = name ?? "\(mode.rawValue)-\(UUID().uuidString.prefix(6))"
        let json = workDir + "/\(n).json"
        var args = [HATools.python3, "-u", HATools.probeScript, mode.rawValue, "--target", target, "--port", "\(port)",
                    "--interval", "\(interval)", "--duration", "\(duration)", "--timeout", "\(timeout)", "--json", json]
        if let e = events { args += ["--events", e] }
        let c = try spawn(.client, args, log: "\(n).log")
        return (c, json)
    }

    /// Runs a probe to the end and returns its report.
    func runProbe(_ mode: ProbeMode = .probe, target: String, port: Int = 7000, duration: Double,
                  interval: Double = 0.05, timeout: Double = 1.0, events: String? = nil) throws -> ProbeReport {
        let (c, json) = try startProbe(mode, target: target, port: port, duration: duration, interval: interval,
                                       timeout: timeout, events: events)
        guard c.wait(timeout: duration + timeout + 30) != nil else {
            c.stop(signal: SIGKILL)
            throw SpawnError(description: "probe did not finish")
        }
        return try ProbeReport.load(json)
    }

    /// Appends "EPOCH LABEL" to an events file read by probe.py --events.
    func markEvent(_ label: String, file: String, at date: Date = Date()) {
        let line = String(format: "%.6f %@\n", date.timeIntervalSince1970, label)
        if let h = FileHandle(forWritingAtPath: file) {
            h.seekToEndOfFile()
            h.write(Data(line.utf8))
            h.closeFile()
        } else {
            _ = FileManager.default.createFile(atPath: file, contents: Data(line.utf8))
        }
    }

    /// Gratuitous ARP (request + reply, broadcast) for `address` from the node's interface
    /// (probe.py garp; a stand-in for `twinfs-ha arp announce`).
    @discardableResult
    func sendGratuitousARP(from node: Node, address: String, interface: String = "eth0", count: Int = 1) -> CommandResult {
        exec(node, [HATools.python3, HATools.probeScript, "garp", "--interface", interface, "--address", address,
                    "--count", "\(count)"])
    }

    // MARK: teardown

    /// PIDs of every process in the node's namespace (`ip netns pids`).
    func pids(_ node: Node) -> [pid_t] {
        Self.pids(namespace: namespace(node))
    }

    /// True while `pid` exists and is not a zombie (a killed orphan may stay a zombie until
    /// init reaps it; `kill(pid, 0)` still succeeds then).
    static func isAlive(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    static func pids(namespace: String) -> [pid_t] {
        runCommand([HATools.ip, "netns", "pids", namespace], timeout: 10).stdout
            .split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) }
    }

    /// Kills every process in the namespaces (SIGKILL, by PID, repeated until none is
    /// left) and deletes the namespaces (and workDir unless TWINFS_HA_KEEP=1). Idempotent;
    /// safe to call from a teardown block after a failed test.
    func destroy() {
        lock.lock()
        if destroyed { lock.unlock(); return }
        destroyed = true
        let kids = children
        let made = created
        lock.unlock()
        for c in kids where c.isRunning { c.signal(SIGKILL) }
        for n in made { Self.killAll(namespace: namespace(n)) }
        for c in kids { _ = c.wait(timeout: 5) }
        for n in made.reversed() {
            runCommand([HATools.ip, "netns", "del", namespace(n)], timeout: 10)
        }
        if ProcessInfo.processInfo.environment["TWINFS_HA_KEEP"] != "1" {
            try? FileManager.default.removeItem(atPath: workDir)
        }
    }

    private static func killAll(namespace: String) {
        for _ in 0..<50 {
            let ps = pids(namespace: namespace).filter { $0 != getpid() }
            if ps.isEmpty { return }
            for p in ps { _ = Glibc.kill(p, SIGKILL) }
            usleep(20_000)
        }
    }

    /// Namespace names (`ip netns list`).
    static func listNamespaces() -> [String] {
        runCommand([HATools.ip, "netns", "list"], timeout: 10).stdout.split(separator: "\n")
            .compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    /// True for names of this harness's family: "th" + 4 hex digits + "-" + sw|a|b|c|w.
    static func isHarnessNamespace(_ name: String, family: String = NetnsTopology.family) -> Bool {
        let parts = name.split(separator: "-", maxSplits: 1).map(String.init)
        guard parts.count == 2, parts[0].count == family.count + 4, parts[0].hasPrefix(family),
              ["sw", "a", "b", "c", "w"].contains(parts[1]) else { return false }
        return parts[0].dropFirst(family.count).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    /// Deletes leftover namespaces of the harness family (after a crashed run; for CI),
    /// killing their processes first. Only namespaces older than `minimumAge` seconds (by
    /// /run/netns/NAME's mtime) are touched, so a concurrent run can be spared (a sweep with
    /// age 0 also deletes the topologies of test runs in progress). Returns the deleted names.
    @discardableResult
    static func sweep(minimumAge: TimeInterval = 0, family: String = NetnsTopology.family) -> [String] {
        var gone: [String] = []
        for name in listNamespaces() where isHarnessNamespace(name, family: family) {
            if minimumAge > 0 {
                var st = stat()
                if stat("/run/netns/\(name)", &st) == 0,
                   Date().timeIntervalSince1970 - Double(st.st_mtim.tv_sec) < minimumAge { continue }
            }
            killAll(namespace: name)
            if runCommand([HATools.ip, "netns", "del", name], timeout: 10).status == 0 { gone.append(name) }
        }
        return gone
    }
}

// MARK: - probe.py reports

/// The JSON written by `probe.py probe|hold --json` (times are Unix epoch seconds).
struct ProbeReport: Decodable, Sendable {
    struct Probe: Decodable, Sendable {
        var seq: Int
        var t: Double
        var node: String?
        var ms: Double?
        var error: String?
    }
    struct Outage: Decodable, Sendable {
        var start: Double
        var end: Double?
        var durationMs: Double
        var failed: Int
        var open: Bool
        var from: String?
        var to: String?
    }
    struct Switch: Decodable, Sendable {
        var t: Double
        var from: String
        var to: String
    }
    struct Summary: Decodable, Sendable {
        var probes: Int
        var answered: Int
        var failed: Int
        var outageMs: Double
        var maxOutageMs: Double
        var firstNode: String?
        var lastNode: String?
    }
    struct Event: Decodable, Sendable {
        var t: Double
        var label: String
        var nodeBefore: String?
        var firstAnswerMs: Double?
        var firstAnswerNode: String?
        var otherNodeMs: Double?
        var otherNode: String?
        var failedAfter: Int
    }
    struct Connection: Decodable, Sendable {
        var attempt: Double
        var opened: Double?
        var closed: Double?
        var reason: String?
        var node: String?
        var requests: Int
        var answers: Int
    }
    struct Break: Decodable, Sendable {
        var t: Double
        var reason: String
        var node: String?
        var outstanding: Int
    }
    var mode: String
    var target: String
    var started: Double
    var ended: Double
    var probes: [Probe]
    var outages: [Outage]
    var switches: [Switch]
    var summary: Summary
    var events: [Event]
    /// hold mode only.
    var connections: [Connection]?
    var breaks: [Break]?

    static func load(_ path: String) throws -> ProbeReport {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(ProbeReport.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Successful probes answered by `node` (a server name, e.g. "node-a").
    func answers(from node: String) -> Int { probes.filter { $0.node == node }.count }

    /// The longest outage in ms (open ones count with their lower bound).
    var maxOutageMs: Double { outages.map(\.durationMs).max() ?? 0 }

    /// Milliseconds from `date` to the first answer from a node other than the one that
    /// answered last before it (nil: never).
    func timeToOtherNode(after date: Date) -> Double? {
        let t = date.timeIntervalSince1970
        let prev = probes.last { $0.t < t && $0.node != nil }?.node
        guard let p = probes.first(where: { $0.t >= t && $0.node != nil && $0.node != prev }) else { return nil }
        return (p.t - t) * 1000
    }
}

// MARK: - XCTest glue

extension XCTestCase {
    /// A topology that is destroyed when the test ends, pass or fail. Skips the test when
    /// not root or `ip netns` is unavailable.
    func makeTopology(secondLink: Bool = false, witness: Bool = false, clientArpAccept: Bool = true) throws -> NetnsTopology {
        if let why = HATools.unavailableReason() { throw XCTSkip(why) }
        let t = try NetnsTopology(secondLink: secondLink, witness: witness, clientArpAccept: clientArpAccept)
        addTeardownBlock { t.destroy() }
        return t
    }
}
