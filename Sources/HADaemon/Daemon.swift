import ControlSocket
import Foundation
import Glibc
import Logging
import PeerProtocol
import TwinCore

/// `twinfs-ha run`: keeps the public addresses on exactly one healthy node.
///
/// Threads: the beat loop (heartbeats, witness, decisions; never blocks on a script), the
/// monitor (runs `monitor` every interval), the executor (takeip / releaseip / ipreallocated,
/// ARP, tickles, address lifetimes), and the control socket's event loop.
public final class HADaemon: @unchecked Sendable {
    public let cfg: HAConfig
    let log: Logger
    let secret: [UInt8]
    let events: EventRunner
    let arbiter: Arbiter
    let incarnation = UInt64.random(in: 1...UInt64.max)
    /// The public addresses as the kernel writes them in /proc/net/tcp.
    let publicIPs: Set<UInt32>
    private let lock = NSCondition()
    private var st = State()
    private var links: [Int32] = []
    private var witnessFD: Int32 = -1
    private var executor: Thread?
    private var jobs: [Job] = []
    private var stopping = false

    struct State {
        var holding = false
        var transition: String?
        var healthy = false
        var healthySince: ContinuousClock.Instant?
        var monitorFailures = 0
        var lastMonitorError = ""
        var peerBeat: Beat?
        var peerBeatAt: ContinuousClock.Instant?
        var peerRefusedAt: ContinuousClock.Instant?
        var peerIncarnation: UInt64 = 0
        var peerSeq: UInt64 = 0
        var peerConnections: [ClientConnection: ContinuousClock.Instant] = [:]
        var leaseUntil: ContinuousClock.Instant?
        var witnessHolder = ""
        var pendingNonce: UInt64 = 0
        var pendingSentAt: ContinuousClock.Instant?
        var seq: UInt64 = 0
        var beatsSent = 0
        var beatsReceived = 0
        var dropped = 0
        var history: [Transition] = []
        var lastProbeLog: ContinuousClock.Instant?
        var peerWasAlive = false
    }

    public struct Transition: Sendable, Codable {
        public var time: String
        public var event: String
        public var reason: String
    }

    enum Job { case take(String), release(String), reallocated, takeIfUnused(String), refresh }

    public init(config: HAConfig, logger: Logger) throws(AdminError) {
        cfg = config
        log = logger
        secret = try SecretFile.load(path: config.secretFile)
        var env = config.eventEnv
        env["TWINFS_HA_NODE"] = config.node
        env["TWINFS_HA_STATE_DIR"] = config.stateDir
        env["TWINFS_HA_BIN"] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        events = EventRunner(dir: config.eventsDir, timeout: config.eventTimeout, environment: env,
                             logPath: config.stateDir + "/events.log")
        publicIPs = Set(config.publicAddresses.map { SystemNet.ipv4($0.address) })
        arbiter = Arbiter(me: config.node, peer: config.peer, preferred: config.preferred,
                          failbackDelay: config.failbackDelay, hasWitness: config.witness != nil)
    }

    // MARK: - Start and stop

    public func run() throws(AdminError) -> Int32 {
        try FileManager.default.createDirectoryOrFail(cfg.stateDir)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: cfg.eventsDir, isDirectory: &isDir), isDir.boolValue else {
            throw AdminError(problem: "events directory \(cfg.eventsDir) does not exist", fix: "install ctdb-like/events there or fix events.dir")
        }
        for (i, local) in cfg.heartbeat.enumerated() {
            links.append(try Self.udpSocket(bind: local, connect: cfg.peerHeartbeat[i]))
        }
        if let w = cfg.witness { witnessFD = try Self.udpSocket(bind: nil, connect: w.address) }
        // The kernel knows whether we hold the addresses (after a crash or restart).
        let held = cfg.publicAddresses.allSatisfy(SystemNet.holds)
        lock.lock(); st.holding = held; lock.unlock()
        if held { record("holding", "found the addresses configured at start (restart)") }
        let start = events.run("startup")
        if !start.ok { log.error("startup event failed: \(start.failures.joined(separator: "; "))") }
        let control = try ControlServer(path: cfg.controlSocket, logger: log) { [self] req in
            switch req.command {
            case "status": return ControlResponse(ok: true, body: statusJSON())
            case "ping": return ControlResponse(ok: true, body: "{}")
            default: return ControlResponse(ok: false, error: "unknown command '\(req.command)'")
            }
        }
        let exec = Thread { [self] in executorLoop() }
        exec.name = "ha-executor"
        executor = exec
        exec.start()
        let mon = Thread { [self] in monitorLoop() }
        mon.name = "ha-monitor"
        mon.start()
        log.notice("twinfs-ha \(cfg.node) up: peer \(cfg.peer), \(cfg.heartbeat.count) heartbeat link(s), addresses \(cfg.publicAddresses.map(\.cidr)), witness \(cfg.witness?.address ?? "none")")
        beatLoop()
        // Clean stop: tell the peer, give the addresses away, run shutdown.
        for _ in 0..<3 { sendBeats(leaving: true); usleep(20_000) }
        let holding = lock.withLock { st.holding }
        if holding { releaseNow("clean shutdown") }
        if witnessFD >= 0 { sendWitness(.release) }
        _ = events.run("shutdown")
        control.close()
        log.notice("twinfs-ha \(cfg.node) stopped cleanly")
        return 0
    }

    public func requestStop() {
        lock.lock()
        stopping = true
        lock.broadcast()
        lock.unlock()
    }

    // MARK: - Beat loop

    private func beatLoop() {
        var next = ContinuousClock.now
        let beat = Duration.milliseconds(Int64(cfg.beatInterval * 1000))
        while !lock.withLock({ stopping }) {
            let now = ContinuousClock.now
            if now >= next {
                sendBeats(leaving: false)
                witnessTick()
                decide()
                next = now + beat
            }
            receive(until: next)
        }
    }

    private func healthyFor() -> Double {
        guard st.healthy, let since = st.healthySince else { return 0 }
        let d = ContinuousClock.now - since
        return max(0, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    /// Holding, or about to (a take under way): what the peer must be told, so that it never
    /// takes at the same time.
    private var holdsOrTaking: Bool { st.holding || st.transition == "taking" || st.transition == "probing" }

    private func peerView(_ now: ContinuousClock.Instant) -> Arbiter.Peer {
        let dead = Duration.milliseconds(Int64(cfg.deadInterval * 1000))
        guard let at = st.peerBeatAt, let b = st.peerBeat, now - at < dead else {
            let gone = st.peerRefusedAt.map { now - $0 < dead } ?? false
            return Arbiter.Peer(alive: false, daemonGone: gone, leaving: st.peerBeat?.leaving ?? false)
        }
        return Arbiter.Peer(alive: true, healthy: b.healthy, holds: b.holds, leaving: b.leaving, choice: b.choice,
                            healthyFor: Double(b.healthyForMs) / 1000)
    }

    private func sendBeats(leaving: Bool) {
        let now = ContinuousClock.now
        // Read outside the lock: status and decisions never wait for /proc.
        let conns = lock.withLock { st.holding } ? Array(SystemNet.connections(to: publicIPs).prefix(Beat.maxConnections)) : []
        let packet: [UInt8] = lock.withLock {
            st.seq += 1
            let peer = peerView(now)
            let choice = arbiter.choice(healthy: st.healthy && !leaving, healthyFor: healthyFor(), holding: holdsOrTaking, peer: peer)
            let b = Beat(node: cfg.node, incarnation: incarnation, seq: st.seq, sentMs: UInt64(Date().timeIntervalSince1970 * 1000),
                         healthy: st.healthy && !leaving, holds: holdsOrTaking && !leaving, leaving: leaving, choice: leaving ? "" : choice,
                         healthyForMs: UInt32(max(0, min(healthyFor() * 1000, Double(UInt32.max)))), connections: conns)
            st.beatsSent += links.count
            return Packets.encode(b, secret: secret)
        }
        for fd in links { _ = packet.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) } }
    }

    private func receive(until deadline: ContinuousClock.Instant) {
        var fds = (links + (witnessFD >= 0 ? [witnessFD] : [])).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let left = deadline - ContinuousClock.now
        let ms = max(0, Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        guard poll(&fds, nfds_t(fds.count), ms) > 0 else { return }
        var buf = [UInt8](repeating: 0, count: 2048)
        for p in fds where p.revents != 0 {
            while true {
                let n = recv(p.fd, &buf, buf.count, Int32(MSG_DONTWAIT))
                if n < 0 {
                    if errno == ECONNREFUSED && p.fd != witnessFD {
                        // The peer's host says no daemon listens: it is gone, not cut off.
                        lock.withLock { st.peerRefusedAt = ContinuousClock.now }
                        continue
                    }
                    break
                }
                let packet = Array(buf[0..<n])
                if p.fd == witnessFD { handleWitnessReply(packet) } else { handleBeat(packet) }
            }
        }
    }

    private func handleBeat(_ packet: [UInt8]) {
        guard let b = Packets.decodeBeat(packet, secret: secret), b.node == cfg.peer else {
            lock.withLock { st.dropped += 1 }
            return
        }
        let now = ContinuousClock.now
        let wallMs = UInt64(Date().timeIntervalSince1970 * 1000)
        lock.withLock {
            // A replay: an old sequence number of the same incarnation, or an old packet of another.
            if b.incarnation == st.peerIncarnation {
                guard b.seq > st.peerSeq else { st.dropped += 1; return }
            } else {
                guard b.sentMs + 30_000 > wallMs && b.sentMs < wallMs + 30_000 else { st.dropped += 1; return }
                st.peerIncarnation = b.incarnation
            }
            st.peerSeq = b.seq
            st.beatsReceived += 1
            st.peerBeat = b
            st.peerBeatAt = now
            st.peerRefusedAt = nil
            for c in b.connections { st.peerConnections[c] = now }
        }
    }

    // MARK: - Decisions

    private func decide() {
        let now = ContinuousClock.now
        var job: Job?
        lock.withLock {
            let peer = peerView(now)
            // A partition healed (or the peer came back): re-announce from whoever holds.
            if peer.alive && !st.peerWasAlive {
                st.peerWasAlive = true
                recordLocked("peer-alive", "heartbeats from \(cfg.peer) again")
                if st.transition == nil { job = .reallocated }
            } else if !peer.alive && st.peerWasAlive {
                st.peerWasAlive = false
                recordLocked("peer-dead", peer.daemonGone ? "\(cfg.peer)'s host reports its daemon gone" : "no heartbeat from \(cfg.peer) for \(cfg.deadInterval) s")
            }
            guard st.transition == nil else { return }
            // One beat of margin: the holder lets go before the witness could grant the other.
            let margin = Duration.milliseconds(Int64(cfg.beatInterval * 1000))
            let leaseValid = st.leaseUntil.map { now + margin < $0 } ?? false
            switch arbiter.decide(healthy: st.healthy, healthyFor: healthyFor(), holding: st.holding, peer: peer, leaseValid: leaseValid) {
            case .none: break
            case .take:
                st.transition = "taking"
                job = .take(peer.alive ? "\(cfg.peer) agrees" : (cfg.witness != nil ? "peer unreachable; witness lease held" : "peer daemon gone"))
            case .takeIfUnused:
                st.transition = "probing"
                job = .takeIfUnused("peer silent for \(cfg.deadInterval) s")
            case .release(let why):
                st.transition = "releasing"
                job = .release(why)
                if cfg.witness != nil && !peer.alive {
                    // Lease running out while cut off: drop the address now, from this loop,
                    // not behind whatever script the executor is running.
                    for a in cfg.publicAddresses { SystemNet.run(["ip", "-4", "addr", "del", a.cidr, "dev", a.interface]) }
                }
            }
            // The peer's connection list ages out after a few seconds.
            st.peerConnections = st.peerConnections.filter { now - $0.value < .seconds(10) }
        }
        if let job { enqueue(job) }
    }

    private func enqueue(_ j: Job) {
        lock.lock()
        jobs.append(j)
        lock.broadcast()
        lock.unlock()
    }

    // MARK: - Executor

    private func executorLoop() {
        var lastRefresh = ContinuousClock.now
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping && ContinuousClock.now - lastRefresh < .seconds(1) {
                _ = lock.wait(until: Date(timeIntervalSinceNow: 0.2))
            }
            if stopping && jobs.isEmpty { lock.unlock(); return }
            let job = jobs.isEmpty ? Job.refresh : jobs.removeFirst()
            lock.unlock()
            switch job {
            case .refresh:
                lastRefresh = ContinuousClock.now
                if lock.withLock({ st.holding }) {
                    for a in cfg.publicAddresses { SystemNet.refreshLifetime(a, seconds: cfg.addressLifetime) }
                }
            case .take(let why): take(why)
            case .release(let why): releaseNow(why)
            case .reallocated: reallocated()
            case .takeIfUnused(let why):
                let inUse = cfg.publicAddresses.contains { SystemNet.probe(interface: $0.interface, address: $0.address, timeoutMs: 50) == 1 }
                if inUse {
                    let logIt = lock.withLock { () -> Bool in
                        st.transition = nil
                        let due = st.lastProbeLog.map { ContinuousClock.now - $0 > .seconds(10) } ?? true
                        if due { st.lastProbeLog = ContinuousClock.now }
                        return due
                    }
                    if logIt { log.warning("peer silent but the address answers ARP (the peer may be cut off, not down): not taking it") }
                } else {
                    take(why + "; ARP probe: address unused")
                }
            }
        }
    }

    private func take(_ why: String) {
        // Decided a moment ago; with a witness and a silent peer, the lease must still hold now.
        let stillOK = lock.withLock { () -> Bool in
            let now = ContinuousClock.now
            guard cfg.witness != nil, !peerView(now).alive else { return true }
            return st.leaseUntil.map { now < $0 } ?? false
        }
        guard stillOK else {
            lock.withLock { st.transition = nil }
            return
        }
        var failed: [String] = []
        for a in cfg.publicAddresses {
            let o = events.run("takeip", [a.interface, a.address, "\(a.prefix)"], extraEnv: heldEnv(extra: a))
            if !o.ok { failed += o.failures }
            SystemNet.refreshLifetime(a, seconds: cfg.addressLifetime)
        }
        // Clients of the old holder: reset their dead connections now (tickle ACK).
        let conns = lock.withLock { Array(st.peerConnections.keys) }
        for c in conns { _ = SystemNet.tickle(c) }
        lock.withLock {
            st.holding = true
            st.transition = nil
        }
        record("takeip", why + (conns.isEmpty ? "" : "; \(conns.count) client connections tickled") + (failed.isEmpty ? "" : "; failures: \(failed.joined(separator: "; "))"))
        log.notice("took \(cfg.publicAddresses.map(\.cidr)): \(why)")
        reallocated()
        if !failed.isEmpty {
            lock.withLock { st.healthy = false; st.healthySince = nil; st.lastMonitorError = "takeip failed: \(failed.joined(separator: "; "))" }
        }
    }

    func releaseNow(_ why: String) {
        for a in cfg.publicAddresses {
            let o = events.run("releaseip", [a.interface, a.address, "\(a.prefix)"])
            if !o.ok { log.error("releaseip failed: \(o.failures.joined(separator: "; "))") }
            if SystemNet.holds(a) { SystemNet.run(["ip", "-4", "addr", "del", a.cidr, "dev", a.interface]) }
        }
        lock.withLock {
            st.holding = false
            st.transition = nil
        }
        if witnessFD >= 0 { sendWitness(.release) }
        record("releaseip", why)
        log.notice("released \(cfg.publicAddresses.map(\.cidr)): \(why)")
        reallocated()
    }

    private func reallocated() {
        let o = events.run("ipreallocated", [], extraEnv: heldEnv(extra: nil))
        if !o.ok { log.warning("ipreallocated: \(o.failures.joined(separator: "; "))") }
    }

    private func heldEnv(extra: HAConfig.PublicAddress?) -> [String: String] {
        let holding = lock.withLock { st.holding }
        let held = holding || extra != nil ? cfg.publicAddresses.map { "\($0.cidr)@\($0.interface)" } : []
        return ["TWINFS_HA_HELD": held.joined(separator: " "),
                "TWINFS_HA_INTERFACES": Set(cfg.publicAddresses.map(\.interface)).sorted().joined(separator: " ")]
    }

    // MARK: - Monitor

    private func monitorLoop() {
        while !lock.withLock({ stopping }) {
            let o = events.run("monitor", [], extraEnv: heldEnv(extra: nil))
            lock.withLock {
                if o.ok {
                    if !st.healthy { st.healthySince = ContinuousClock.now }
                    if !st.healthy { recordLocked("healthy", "monitor passed") }
                    st.healthy = true
                    st.monitorFailures = 0
                } else {
                    st.monitorFailures += 1
                    st.lastMonitorError = o.failures.joined(separator: "; ")
                    if st.healthy && st.monitorFailures >= cfg.monitorFailures {
                        st.healthy = false
                        st.healthySince = nil
                        recordLocked("unhealthy", "\(st.monitorFailures) monitor failures: \(st.lastMonitorError)")
                    }
                }
            }
            if !o.ok { log.warning("monitor failed: \(o.failures.joined(separator: "; "))") }
            lock.lock()
            if !stopping { _ = lock.wait(until: Date(timeIntervalSinceNow: cfg.monitorInterval)) }
            lock.unlock()
        }
    }

    // MARK: - Witness

    private func witnessTick() {
        guard witnessFD >= 0 else { return }
        let now = ContinuousClock.now
        let want = lock.withLock {
            arbiter.wantsLease(healthy: st.healthy, healthyFor: healthyFor(), holding: st.holding, peer: peerView(now))
        }
        if want { sendWitness(.acquire) }
    }

    private func sendWitness(_ op: WitnessRequest.Op) {
        let nonce = UInt64.random(in: 1...UInt64.max)
        lock.withLock {
            if op == .acquire { st.pendingNonce = nonce; st.pendingSentAt = ContinuousClock.now }
            if op == .release { st.leaseUntil = nil }
        }
        let p = Packets.encode(WitnessRequest(op: op, node: cfg.node, nonce: nonce), secret: secret)
        _ = p.withUnsafeBytes { send(witnessFD, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    }

    private func handleWitnessReply(_ p: [UInt8]) {
        guard let r = Packets.decodeReply(p, secret: secret), let lease = cfg.witness?.lease else {
            lock.withLock { st.dropped += 1 }
            return
        }
        lock.withLock {
            guard r.nonce == st.pendingNonce, let sent = st.pendingSentAt else { return }
            st.witnessHolder = r.holder
            // Valid from when the request left, never longer than the witness grants it.
            if r.granted { st.leaseUntil = sent + .milliseconds(Int64(lease * 1000)) }
        }
    }

    // MARK: - Status

    func record(_ event: String, _ reason: String) {
        lock.withLock { recordLocked(event, reason) }
    }

    /// Caller holds `lock` (NSCondition is not recursive).
    private func recordLocked(_ event: String, _ reason: String) {
        st.history.append(Self.transition(event, reason))
        if st.history.count > 50 { st.history.removeFirst(st.history.count - 50) }
    }

    static func transition(_ e: String, _ r: String) -> Transition {
        Transition(time: ISO8601DateFormatter().string(from: Date()), event: e, reason: r)
    }

    public struct Status: Codable, Sendable {
        public var node: String
        public var peer: String
        public var state: String
        public var healthy: Bool
        public var holds: [String]
        public var addresses: [String]
        public var preferred: String
        public var peerAlive: Bool
        public var peerHolds: Bool
        public var peerHealthy: Bool
        public var peerLastBeatMs: Int?
        public var witness: String?
        public var leaseHolder: String?
        public var leaseValidMs: Int?
        public var lastMonitorError: String
        public var beatsSent: Int
        public var beatsReceived: Int
        public var packetsDropped: Int
        public var transitions: [Transition]

        enum CodingKeys: String, CodingKey {
            case node, peer, state, healthy, holds, addresses, preferred, witness, transitions
            case peerAlive = "peer_alive"
            case peerHolds = "peer_holds"
            case peerHealthy = "peer_healthy"
            case peerLastBeatMs = "peer_last_beat_ms"
            case leaseHolder = "lease_holder"
            case leaseValidMs = "lease_valid_ms"
            case lastMonitorError = "last_monitor_error"
            case beatsSent = "beats_sent"
            case beatsReceived = "beats_received"
            case packetsDropped = "packets_dropped"
        }
    }

    func statusJSON() -> String {
        let now = ContinuousClock.now
        let s: Status = lock.withLock {
            let peer = peerView(now)
            func ms(_ d: Duration) -> Int { Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000) }
            let state = st.transition?.uppercased() ?? (st.holding ? "HOLDING" : (st.healthy ? "STANDBY" : "UNHEALTHY"))
            return Status(node: cfg.node, peer: cfg.peer, state: state, healthy: st.healthy,
                          holds: st.holding ? cfg.publicAddresses.map(\.cidr) : [], addresses: cfg.publicAddresses.map(\.cidr),
                          preferred: cfg.preferred, peerAlive: peer.alive, peerHolds: peer.alive && peer.holds, peerHealthy: peer.alive && peer.healthy,
                          peerLastBeatMs: st.peerBeatAt.map { ms(now - $0) }, witness: cfg.witness?.address,
                          leaseHolder: cfg.witness == nil ? nil : st.witnessHolder,
                          leaseValidMs: st.leaseUntil.map { max(0, ms($0 - now)) },
                          lastMonitorError: st.lastMonitorError, beatsSent: st.beatsSent, beatsReceived: st.beatsReceived,
                          packetsDropped: st.dropped, transitions: Array(st.history.suffix(20)))
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? enc.encode(s)) ?? Data("{}".utf8), as: UTF8.self)
    }

    // MARK: - Sockets

    /// A UDP socket, bound to `bind` ("ip:port", or any port) and connected to `connect`, so the
    /// kernel reports the peer's ICMP "port unreachable" as ECONNREFUSED.
    static func udpSocket(bind local: String?, connect remote: String) throws(AdminError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw AdminError(problem: "cannot create a UDP socket", fix: "check the system") }
        func addr(_ s: String) -> sockaddr_in {
            let (h, p) = HAConfig.splitHostPort(s)!
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = p.bigEndian
            a.sin_addr.s_addr = inet_addr(h)
            return a
        }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if let local {
            var a = addr(local)
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard rc == 0 else {
                let e = String(cString: strerror(errno))
                close(fd)
                throw AdminError(problem: "cannot bind the heartbeat socket to \(local): \(e)",
                                 fix: "check that this node has that address and that no other twinfs-ha uses the port")
            }
        }
        var r = addr(remote)
        let rc = withUnsafePointer(to: &r) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw AdminError(problem: "cannot address \(remote): \(e)", fix: "check the configured address")
        }
        return fd
    }
}

extension FileManager {
    func createDirectoryOrFail(_ path: String) throws(AdminError) {
        do { try createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw AdminError(problem: "cannot create \(path): \(error)", fix: "check the path and permissions")
        }
    }
}
