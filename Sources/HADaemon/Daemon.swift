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
/// ARP, tickles, the kernel check), and the control socket's event loop. A child process, the
/// fence, drops the addresses when this daemon stops renewing its hold (see `Fence`).
public final class HADaemon: @unchecked Sendable {
    public let cfg: HAConfig
    let log: Logger
    let secret: [UInt8]
    let events: EventRunner
    let arbiter: Arbiter
    let fence: Fence
    let incarnation = UInt64.random(in: 1...UInt64.max)
    /// The public addresses as the kernel writes them in /proc/net/tcp.
    let publicIPs: Set<UInt32>
    /// How long the fence keeps the addresses without a renewal: one beat longer than the
    /// silence after which the peer declares this node dead and starts probing. A daemon late
    /// by less than that keeps them (the peer's probe finds them and it does not take over);
    /// one stopped or starved for longer has lost them by the peer's next probe.
    let holdFor: Duration
    /// Guards `st`, `jobs`, `stopping` and `executorDone`; the executor and the monitor wait on it (monotonic
    /// deadlines). Never held across a script, a fence request or a socket call.
    private let lock = MonotonicCondition(priorityInheritance: true)
    private var st = State()
    private var links: [Int32] = []
    private var witnessFD: Int32 = -1
    private var executor: Thread?
    private var jobs: [Job] = []
    private var stopping = false
    private var executorDone = false

    /// An ownership change under way (the executor runs it).
    enum Move: String {
        case taking, probing, releasing
    }

    struct State {
        var holding = false
        var move: Move?
        var healthy = false
        var healthySince: ContinuousClock.Instant?
        /// The monitor found the service caught up with its peer (no script said `notCurrentExit`):
        /// only then does the failback clock (`healthyFor`) run.
        var current = true
        /// Names of public interfaces without carrier (checked every beat): no node holds an
        /// address on a dead link, and such a node is not healthy.
        var linksDown: [String] = []
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
        /// When the fence drops the addresses unless renewed (nil: not armed).
        var fenceUntil: ContinuousClock.Instant?
        /// The fence's generation of the current hold (its FENCED notices name one).
        var holdGeneration: UInt32 = 0
        /// Bumped whenever a hold is lost to the fence: a take still running then is void.
        var epoch: UInt64 = 0
        /// The last time the beat loop ran: a longer gap means this daemon was stopped or starved.
        var lastTick = ContinuousClock.now
        var claim = Arbiter.Claim.undisputed
        /// Decide before the next beat: a witness grant or a refused heartbeat arrived.
        var decideSoon = false
        /// Ask the witness again then: when the other node's lease runs out.
        var leaseRetryAt: ContinuousClock.Instant?
        var fencings = 0
        var stalls = 0
    }

    public struct Transition: Sendable, Codable {
        public var time: String
        public var event: String
        public var reason: String
    }

    enum Job { case take(String), release(String), reallocated, takeIfUnused(String), verify }

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
        fence = Fence(addresses: config.publicAddresses, lifetime: config.addressLifetime, logger: logger)
        holdFor = .milliseconds(Int64((config.deadInterval + config.beatInterval) * 1000))
    }

    // MARK: - Start and stop

    public func run() throws(AdminError) -> Int32 {
        try FileManager.default.createDirectoryOrFail(cfg.stateDir)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: cfg.eventsDir, isDirectory: &isDir), isDir.boolValue else {
            throw AdminError(problem: "events directory \(cfg.eventsDir) does not exist", fix: "install ctdb-like/events there or fix events.dir")
        }
        // First, while this process has no sockets yet for the fence to inherit.
        do { try fence.start() } catch {
            throw AdminError(problem: "cannot start the fence process: \(error)", fix: "check the process limits; run as root")
        }
        for (i, local) in cfg.heartbeat.enumerated() {
            links.append(try Self.udpSocket(bind: local, connect: cfg.peerHeartbeat[i]))
        }
        if let w = cfg.witness { witnessFD = try Self.udpSocket(bind: nil, connect: w.address) }
        // The kernel knows whether we hold the addresses (a restart within their lifetime).
        let held = cfg.publicAddresses.allSatisfy(SystemNet.holds)
        lock.withLock { st.holding = held }
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
        // Armed only now: the startup event may take longer than a hold lasts.
        if held {
            let gen = try? fence.take(holdFor: holdFor)
            lock.withLock {
                st.holdGeneration = gen ?? 0
                st.fenceUntil = gen.map { _ in ContinuousClock.now + holdFor }
            }
        }
        lock.withLock { st.lastTick = ContinuousClock.now }
        // The beat loop runs real-time (as corosync's does): under CPU load a normal thread
        // can wait for a CPU longer than a hold lasts, and the fence would drop the addresses
        // of a healthy node. Set after the other threads started, so they stay normal.
        var rt = sched_param()
        rt.sched_priority = 10
        if pthread_setschedparam(pthread_self(), SCHED_RR, &rt) != 0 {
            log.warning("cannot run the beat loop real-time (SCHED_RR): under heavy CPU load a late beat may cost this node the addresses")
        }
        log.notice("twinfs-ha \(cfg.node) up: peer \(cfg.peer), \(cfg.heartbeat.count) heartbeat link(s), addresses \(cfg.publicAddresses.map(\.cidr)), witness \(cfg.witness?.address ?? "none")")
        beatLoop()
        // Clean stop: let the executor finish the job it runs (a take half done must be
        // released too), give the addresses away, then tell the peer (it takes over without
        // an ARP probe only when our beat says we hold nothing), run shutdown.
        let waitLimit = ContinuousClock.now + .milliseconds(Int64((cfg.eventTimeout * 3 + 2) * 1000))
        lock.lock()
        jobs.removeAll()
        while !executorDone && lock.wait(until: waitLimit) {}
        lock.unlock()
        let holding = lock.withLock { st.holding }
        if holding { releaseNow("clean shutdown") }
        for _ in 0..<3 { sendBeats(leaving: true); usleep(20_000) }
        if witnessFD >= 0 { sendWitness(.release) }
        _ = events.run("shutdown")
        fence.close()
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
            checkStall()
            let now = ContinuousClock.now
            if now >= next {
                checkHold()
                sendBeats(leaving: false)
                witnessTick()
                decide()
                next = now + beat
            } else {
                // Between beats: a takeover does not wait for the next one.
                let (retry, soon) = lock.withLock { () -> (Bool, Bool) in
                    let retry = st.leaseRetryAt.map { now >= $0 } ?? false
                    if retry { st.leaseRetryAt = nil }
                    defer { st.decideSoon = false }
                    return (retry, st.decideSoon)
                }
                if retry { witnessTick() }
                if soon {
                    checkHold()
                    decide()
                }
            }
            receive(until: lock.withLock { st.leaseRetryAt.map { min($0, next) } ?? next })
        }
    }

    /// This loop runs at least every beat. A longer gap means the daemon was stopped (SIGSTOP)
    /// or starved: the peer may have declared it dead and taken over meanwhile, and the beats
    /// queued in the sockets describe the past. They are dropped, the peer counts as unheard
    /// (its next beat is "peer back": the holder announces again), and the failback delay
    /// starts over. Returns true after a stall.
    @discardableResult
    private func checkStall() -> Bool {
        let now = ContinuousClock.now
        let gap = lock.withLock { () -> Duration in
            defer { st.lastTick = now }
            return now - st.lastTick
        }
        guard gap > holdFor else { return false }
        var buf = [UInt8](repeating: 0, count: 2048)
        for fd in links + (witnessFD >= 0 ? [witnessFD] : []) {
            while recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT)) >= 0 || errno == ECONNREFUSED || errno == EINTR {}
        }
        let ms = Int(gap.components.seconds * 1000 + gap.components.attoseconds / 1_000_000_000_000_000)
        lock.withLock {
            st.stalls += 1
            st.peerBeat = nil
            st.peerBeatAt = nil
            st.peerRefusedAt = nil
            st.peerWasAlive = false
            st.pendingNonce = 0
            if st.healthy { st.healthySince = now }
            recordLocked("stalled", "this daemon did not run for \(ms) ms (stopped or starved); the peer's queued beats were dropped")
        }
        log.warning("this daemon did not run for \(ms) ms (stopped or starved): dropping the peer's queued beats")
        return true
    }

    /// Whether this node still holds what it thinks it holds: the fence's deadline has not
    /// passed, the fence has not reported a drop, and the public links have carrier. Otherwise
    /// the addresses are dropped here and released (the arbiter decides again from scratch).
    private func checkHold() {
        let now = ContinuousClock.now
        let notices = fence.takeFencedNotices()
        let down = Set(cfg.publicAddresses.map(\.interface)).sorted().filter { !SystemNet.hasCarrier($0) }
        let why: String? = lock.withLock {
            if down.isEmpty && !st.linksDown.isEmpty && st.healthy { st.healthySince = now }
            st.linksDown = down
            guard st.holding || st.move == .taking else { return nil }
            if let until = st.fenceUntil, now >= until {
                return "the hold was not renewed within \(Self.seconds(cfg.deadInterval + cfg.beatInterval)) s (this daemon was stopped or starved): the fence dropped the addresses"
            }
            if notices.contains(st.holdGeneration) && st.fenceUntil != nil {
                return "the fence dropped the addresses (the hold was not renewed in time)"
            }
            if !down.isEmpty && st.holding { return "no carrier on \(down.joined(separator: ", "))" }
            return nil
        }
        if let why { lose(why) }
    }

    /// The addresses are gone from this node (or must go now): make sure, and release.
    private func lose(_ why: String) {
        do { try fence.drop() } catch {
            log.error("fence: \(error); deleting the addresses directly")
            for a in cfg.publicAddresses { SystemNet.run(["ip", "-4", "addr", "del", a.cidr, "dev", a.interface]) }
        }
        let releasing = lock.withLock { () -> Bool in
            st.fenceUntil = nil
            st.epoch &+= 1
            st.fencings += 1
            recordLocked("fenced", why)
            guard st.holding else { return false }   // a take under way finds its epoch changed
            // Gone from the kernel now: the next beat must not claim them (when both claim,
            // the preferred node keeps them, and the peer that took over would let go).
            st.holding = false
            st.move = .releasing
            return true
        }
        log.warning("dropped \(cfg.publicAddresses.map(\.cidr)): \(why)")
        if releasing { enqueue(.release(why)) }
    }

    /// Healthy by the monitor and with carrier on every public link. Caller holds `lock`.
    private var healthyNow: Bool { st.healthy && st.linksDown.isEmpty }

    /// How long this node has been healthy and caught up (0 while catching up: no failback).
    private func healthyFor() -> Double {
        guard healthyNow, st.current, let since = st.healthySince else { return 0 }
        let d = ContinuousClock.now - since
        return max(0, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    /// Holding, or about to (a take under way): what the peer must be told, so that it never
    /// takes at the same time.
    private var holdsOrTaking: Bool { st.holding || st.move == .taking || st.move == .probing }

    private func peerView(_ now: ContinuousClock.Instant) -> Arbiter.Peer {
        let dead = Duration.milliseconds(Int64(cfg.deadInterval * 1000))
        // Refused after its last beat: no socket listens on the peer's heartbeat port, its
        // daemon is gone now (a stopped or cut-off one is never refused). No need to wait for
        // the dead interval; a takeover still probes for the address first.
        if let r = st.peerRefusedAt, now - r < dead, st.peerBeatAt.map({ r > $0 }) ?? true {
            return Arbiter.Peer(alive: false, daemonGone: true, leaving: st.peerBeat?.leaving ?? false)
        }
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
        // Renew the fence's hold before the beat leaves: the fence's deadline always comes a
        // beat after the peer's "dead" verdict on this beat.
        if !leaving, lock.withLock({ holdsOrTaking && st.fenceUntil != nil }) {
            fence.feed(holdFor: holdFor)
            lock.withLock { if st.fenceUntil != nil { st.fenceUntil = now + holdFor } }
        }
        let packet: [UInt8] = lock.withLock {
            st.seq += 1
            let peer = peerView(now)
            let choice = arbiter.choice(healthy: healthyNow && !leaving, healthyFor: healthyFor(), holding: holdsOrTaking, peer: peer)
            let b = Beat(node: cfg.node, incarnation: incarnation, seq: st.seq, sentMs: UInt64(Date().timeIntervalSince1970 * 1000),
                         healthy: healthyNow && !leaving, holds: holdsOrTaking && !leaving, leaving: leaving, choice: leaving ? "" : choice,
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
        guard poll(&fds, nfds_t(fds.count), ms) > 0, !checkStall() else { return }
        var buf = [UInt8](repeating: 0, count: 2048)
        for p in fds where p.revents != 0 {
            while true {
                let n = recv(p.fd, &buf, buf.count, Int32(MSG_DONTWAIT))
                if n < 0 {
                    if errno == ECONNREFUSED && p.fd != witnessFD {
                        // The peer's host says no daemon listens: it is gone, not cut off.
                        lock.withLock { st.peerRefusedAt = ContinuousClock.now; st.decideSoon = true }
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
        var dropNow = false
        lock.withLock {
            let peer = peerView(now)
            // A partition healed (or the peer came back): re-announce from whoever holds.
            if peer.alive && !st.peerWasAlive {
                st.peerWasAlive = true
                recordLocked("peer-alive", "heartbeats from \(cfg.peer) again")
                if st.move == nil { job = .reallocated }
            } else if !peer.alive && st.peerWasAlive {
                st.peerWasAlive = false
                recordLocked("peer-dead", peer.daemonGone ? "\(cfg.peer)'s host reports its daemon gone" : "no heartbeat from \(cfg.peer) for \(Self.seconds(cfg.deadInterval)) s")
            }
            // Kept the addresses through a dispute: announce them once the peer let go.
            let (claim, announce) = arbiter.nextClaim(st.claim, holding: st.holding, peer: peer)
            if claim != st.claim {
                recordLocked(claim == .disputed ? "disputed" : "undisputed",
                             claim == .disputed ? "both nodes claim the addresses" : (announce ? "kept the addresses; announcing them" : "let the addresses go"))
            }
            st.claim = claim
            if announce && st.move == nil && job == nil { job = .reallocated }
            guard st.move == nil else { return }
            // One beat of margin: the holder lets go before the witness could grant the other.
            let margin = Duration.milliseconds(Int64(cfg.beatInterval * 1000))
            let leaseValid = st.leaseUntil.map { now + margin < $0 } ?? false
            switch arbiter.decide(healthy: healthyNow, healthyFor: healthyFor(), holding: st.holding, peer: peer, leaseValid: leaseValid) {
            case .none: break
            case .take:
                st.move = .taking
                job = .take(peer.alive && !peer.leaving ? "\(cfg.peer) agrees" : "\(cfg.peer) left cleanly")
            case .takeIfUnused:
                st.move = .probing
                let silent = peer.daemonGone ? "\(cfg.peer)'s daemon is gone" : "peer silent for \(Self.seconds(cfg.deadInterval)) s"
                job = .takeIfUnused(silent + (cfg.witness != nil ? "; witness lease held" : ""))
            case .release(let why):
                st.move = .releasing
                job = .release(why)
                // Lease running out while cut off: drop the address now, from this loop, not
                // behind whatever script the executor is running.
                dropNow = cfg.witness != nil && !peer.alive
            }
            // The peer's connection list ages out after a few seconds.
            st.peerConnections = st.peerConnections.filter { now - $0.value < .seconds(10) }
        }
        if dropNow {
            do { try fence.drop() } catch {
                for a in cfg.publicAddresses { SystemNet.run(["ip", "-4", "addr", "del", a.cidr, "dev", a.interface]) }
            }
            lock.withLock { st.fenceUntil = nil }
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
        var nextVerify = ContinuousClock.now + .seconds(1)
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping && ContinuousClock.now < nextVerify { lock.wait(until: nextVerify) }
            if stopping && jobs.isEmpty {
                executorDone = true
                lock.broadcast()
                lock.unlock()
                return
            }
            let job = jobs.isEmpty ? Job.verify : jobs.removeFirst()
            lock.unlock()
            switch job {
            case .verify:
                nextVerify = ContinuousClock.now + .seconds(1)
                verifyHeld()
            case .take(let why): take(why)
            case .release(let why): releaseNow(why)
            case .reallocated: reallocated()
            case .takeIfUnused(let why):
                // The peer's kernel may still answer for the address (a cut-off holder, or one
                // whose fence has not dropped it yet): never configure it a second time.
                let inUse = cfg.publicAddresses.contains { SystemNet.probe(interface: $0.interface, address: $0.address, timeoutMs: 50) == 1 }
                if inUse {
                    let logIt = lock.withLock { () -> Bool in
                        st.move = nil
                        let due = st.lastProbeLog.map { ContinuousClock.now - $0 > .seconds(10) } ?? true
                        if due { st.lastProbeLog = ContinuousClock.now }
                        return due
                    }
                    if logIt { log.warning("peer silent but the address answers ARP (the peer may be cut off, or not dropped it yet): not taking it") }
                } else {
                    take(why + "; ARP probe: address unused")
                }
            }
        }
    }

    /// Every second: an address this node holds must still be configured (nothing re-creates
    /// it behind the daemon's back; if something deleted it, the arbiter takes it again
    /// properly, with takeip and gratuitous ARP).
    private func verifyHeld() {
        let (holding, epoch) = lock.withLock { (st.holding && st.move == nil && st.fenceUntil != nil, st.epoch) }
        guard holding else { return }
        let missing = cfg.publicAddresses.filter { !SystemNet.holds($0) }.map(\.cidr)
        guard !missing.isEmpty, lock.withLock({ st.epoch == epoch && st.holding }) else { return }
        lose("\(missing.joined(separator: ", ")) vanished from the kernel")
    }

    private func take(_ why: String) {
        // Decided a moment ago; with a witness and a silent peer, the lease must still hold now.
        let (stillOK, epoch) = lock.withLock { () -> (Bool, UInt64) in
            let now = ContinuousClock.now
            guard cfg.witness != nil, !peerView(now).alive else { return (true, st.epoch) }
            return (st.leaseUntil.map { now < $0 } ?? false, st.epoch)
        }
        guard stillOK else {
            lock.withLock { st.move = nil }
            return
        }
        // Arm the fence before the addresses exist: from now on, if this daemon stops
        // renewing its hold, they go.
        let armedAt = ContinuousClock.now
        do {
            let gen = try fence.take(holdFor: holdFor)
            lock.withLock { st.holdGeneration = gen; st.fenceUntil = armedAt + holdFor }
        } catch {
            log.error("taking the addresses without a fence (\(error)): a killed daemon leaves them for address_lifetime")
        }
        var failed: [String] = []
        for a in cfg.publicAddresses {
            let o = events.run("takeip", [a.interface, a.address, "\(a.prefix)"], extraEnv: heldEnv(extra: a))
            if !o.ok { failed += o.failures }
        }
        // Clients of the old holder: reset their dead connections now (tickle ACK).
        let conns = lock.withLock { Array(st.peerConnections.keys) }
        for c in conns { _ = SystemNet.tickle(c) }
        let kept = lock.withLock { () -> Bool in
            guard st.epoch == epoch else { return false }
            st.holding = true
            st.move = nil
            return true
        }
        guard kept else {
            // Fenced while the scripts ran (this daemon was stopped): the hold is void.
            try? fence.drop()
            lock.withLock { st.move = .releasing }
            enqueue(.release("the take was overtaken by the fence"))
            record("takeip-void", why + "; the fence dropped the addresses meanwhile")
            return
        }
        record("takeip", why + (conns.isEmpty ? "" : "; \(conns.count) client connections tickled") + (failed.isEmpty ? "" : "; failures: \(failed.joined(separator: "; "))"))
        log.notice("took \(cfg.publicAddresses.map(\.cidr)): \(why)")
        reallocated()
        if !failed.isEmpty {
            lock.withLock { st.healthy = false; st.healthySince = nil; st.lastMonitorError = "takeip failed: \(failed.joined(separator: "; "))" }
        }
    }

    func releaseNow(_ why: String) {
        // Disarm first: a lifetime renewal must not re-create an address being deleted.
        do { try fence.release() } catch { log.error("fence: \(error)") }
        lock.withLock { st.fenceUntil = nil }
        for a in cfg.publicAddresses {
            let o = events.run("releaseip", [a.interface, a.address, "\(a.prefix)"])
            if !o.ok { log.error("releaseip failed: \(o.failures.joined(separator: "; "))") }
            if SystemNet.holds(a) { SystemNet.run(["ip", "-4", "addr", "del", a.cidr, "dev", a.interface]) }
        }
        lock.withLock {
            st.holding = false
            st.move = nil
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
                    let current = o.notCurrent.isEmpty
                    // The failback clock starts when the node is healthy AND caught up.
                    if !st.healthy || (current && !st.current) { st.healthySince = ContinuousClock.now }
                    if !st.healthy { recordLocked("healthy", "monitor passed") }
                    if current != st.current {
                        recordLocked(current ? "caught-up" : "catching-up",
                                     current ? "the service is caught up with its peer" : "\(o.notCurrent.joined(separator: ", ")): still catching up with its peer; no failback to this node until it is")
                    }
                    st.current = current
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
            let next = ContinuousClock.now + .milliseconds(Int64(cfg.monitorInterval * 1000))
            lock.lock()
            while !stopping && lock.wait(until: next) {}
            lock.unlock()
        }
    }

    // MARK: - Witness

    private func witnessTick() {
        guard witnessFD >= 0 else { return }
        let now = ContinuousClock.now
        let want = lock.withLock {
            arbiter.wantsLease(healthy: healthyNow, healthyFor: healthyFor(), holding: st.holding, peer: peerView(now))
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
            if r.granted {
                st.leaseUntil = sent + .milliseconds(Int64(lease * 1000))
                if !st.holding { st.decideSoon = true }
            } else if r.remainingMs > 0 {
                // Held by the other node: ask again the moment its lease runs out.
                st.leaseRetryAt = ContinuousClock.now + .milliseconds(Int64(min(Double(r.remainingMs), lease * 1000)) + 5)
            }
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

    /// Seconds for messages: 0.3, not 0.30000000000000004.
    static func seconds(_ v: Double) -> String { String((v * 1000).rounded() / 1000) }

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
        /// Holds lost to the fence, the carrier check or a vanished address.
        public var fencings: Int?
        /// Times the beat loop found it had not run for longer than the fence's hold.
        public var stalls: Int?
        /// Healthy and caught up with its peer (the monitor said so): failback may come here.
        public var caughtUp: Bool?
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
            case fencings, stalls
            case caughtUp = "caught_up"
        }
    }

    func statusJSON() -> String {
        let now = ContinuousClock.now
        let s: Status = lock.withLock {
            let peer = peerView(now)
            func ms(_ d: Duration) -> Int { Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000) }
            let state = st.move?.rawValue.uppercased() ?? (st.holding ? "HOLDING" : (healthyNow ? "STANDBY" : "UNHEALTHY"))
            return Status(node: cfg.node, peer: cfg.peer, state: state, healthy: healthyNow,
                          holds: st.holding ? cfg.publicAddresses.map(\.cidr) : [], addresses: cfg.publicAddresses.map(\.cidr),
                          preferred: cfg.preferred, peerAlive: peer.alive, peerHolds: peer.alive && peer.holds, peerHealthy: peer.alive && peer.healthy,
                          peerLastBeatMs: st.peerBeatAt.map { ms(now - $0) }, witness: cfg.witness?.address,
                          leaseHolder: cfg.witness == nil ? nil : st.witnessHolder,
                          leaseValidMs: st.leaseUntil.map { max(0, ms($0 - now)) },
                          lastMonitorError: st.lastMonitorError, beatsSent: st.beatsSent, beatsReceived: st.beatsReceived,
                          packetsDropped: st.dropped, fencings: st.fencings, stalls: st.stalls,
                          caughtUp: healthyNow && st.current, transitions: Array(st.history.suffix(20)))
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
