import Foundation
import Glibc
import Logging
import TwinCore

/// Where a node stands with the witness's lease, as far as its writes are concerned. Pure: every
/// input carries its time, so the rules are unit-tested without a clock or a socket.
///
/// A grant is counted from when its request was SENT (the witness counts from receipt, later):
/// this node stops counting on a lease before the witness could give it to the other node.
public struct WriteLeaseState: Sendable, Equatable {
    public enum Standing: Sendable, Equatable {
        /// Never asked (the peer was always reachable).
        case unasked
        /// Granted: writes may be acknowledged until then.
        case held(until: ContinuousClock.Instant)
        /// The witness gave the lease to the other node.
        case refused(holder: String)
        /// Asked, and no answer came in time (the witness is down or cut off too).
        case unanswered
    }

    /// One request on its way to the witness.
    public struct Request: Sendable, Equatable {
        public var nonce: UInt64
        public var sentAt: ContinuousClock.Instant
    }

    public let lease: Duration
    public private(set) var standing = Standing.unasked
    public private(set) var pending: Request?

    public init(lease: Duration) { self.lease = lease }

    /// Writes may be acknowledged at `now` without the peer.
    public func valid(at now: ContinuousClock.Instant) -> Bool {
        if case .held(let until) = standing { return now < until }
        return false
    }

    /// Time to ask again: not held, or a third of the lease or less left (two renewals can be
    /// lost before it runs out).
    public func wantsRenewal(at now: ContinuousClock.Instant) -> Bool {
        guard case .held(let until) = standing else { return true }
        return until - now <= lease * (2.0 / 3.0)
    }

    public mutating func sent(nonce: UInt64, at time: ContinuousClock.Instant) {
        pending = Request(nonce: nonce, sentAt: time)
    }

    /// A reply; false if it answers no request of ours (late, replayed): ignored.
    @discardableResult
    public mutating func received(_ reply: WitnessReply) -> Bool {
        guard let p = pending, reply.nonce == p.nonce else { return false }
        pending = nil
        if reply.granted {
            // A renewal never shortens a lease already held (replies may arrive out of order).
            let until = p.sentAt + lease
            if case .held(let old) = standing, old > until { return true }
            standing = .held(until: until)
        } else {
            standing = .refused(holder: reply.holder)
        }
        return true
    }

    /// The pending request went unanswered until `now`. A lease still running stays held
    /// (the next renewal may get through); otherwise the witness is silent.
    public mutating func timedOut(at now: ContinuousClock.Instant) {
        pending = nil
        guard !valid(at: now) else { return }
        if case .refused = standing { return }   // the witness's last word: still the other node's
        standing = .unanswered
    }

    /// Why writes are refused now (nil: they are not). `witness` names it for the admin.
    public func refusal(at now: ContinuousClock.Instant, witness: String) -> String? {
        switch standing {
        case .held where valid(at: now): return nil
        case .held: return "cut off from the peer, and the witness's lease ran out (the witness at \(witness) did not renew it)"
        case .refused(let holder) where holder.isEmpty:
            return "cut off from the peer, and the witness at \(witness) grants no lease yet (it restarted less than a lease ago)"
        case .refused(let holder): return "cut off from the peer, and the witness gave the lease to \(holder)"
        case .unanswered: return "cut off from the peer, and the witness at \(witness) does not answer"
        case .unasked: return "cut off from the peer, and not yet granted the witness's lease"
        }
    }
}

/// How a lease request reaches the witness (UDP in production, in memory in tests).
public protocol WitnessTransport: Sendable {
    func send(_ request: WitnessRequest)
    /// The next authenticated reply, or nil if none came by `deadline`.
    func receive(until deadline: ContinuousClock.Instant) -> WitnessReply?
}

/// The witness's lease as the twinfs node uses it: a node cut off from its peer acknowledges
/// writes only while it holds the lease its twinfs-ha holds for the public addresses (same
/// node name, so the witness sees one holder; see `LeaseTable`). Asked on demand by a change
/// (`permit`) and renewed every third of a lease by `start`'s thread while `needed` says the
/// peer is out of reach; left to run out once the peer is back.
public final class WriteLease: @unchecked Sendable {
    public let asker: String
    public let witness: String
    let transport: any WitnessTransport
    let clock: @Sendable () -> ContinuousClock.Instant
    let log: Logger
    /// Guards `state`, `asking`, `stopping` and `logged`. A leaf: never held across a send, a
    /// receive or a log call; `thread` is set once, before the renewer runs.
    private let lock = MonotonicCondition()
    private var state: WriteLeaseState
    /// One exchange with the witness at a time (the transport is not shared); others wait.
    private var asking = false
    private var stopping = false
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)
    /// The refusal last logged (logged once per change of reason).
    private var logged: String?

    /// `asker`: "<ha node>/fs". `clock` is injectable for tests (monotonic in production).
    public init(asker: String, witness: String, lease: Duration, transport: any WitnessTransport, logger: Logger,
                clock: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }) {
        self.asker = asker
        self.witness = witness
        self.transport = transport
        self.clock = clock
        log = logger
        state = WriteLeaseState(lease: lease)
    }

    /// The state as of now (status, tests).
    public var current: WriteLeaseState { lock.withLock { state } }

    /// Whether a change may be acknowledged now without the peer: the lease is held, asking
    /// the witness first if it is not (waits at most half a lease for the answer).
    public func permit() -> Bool {
        if lock.withLock({ state.valid(at: clock()) }) { return true }
        exchange()
        let (ok, why) = lock.withLock { () -> (Bool, String?) in
            let now = clock()
            return (state.valid(at: now), state.refusal(at: now, witness: witness))
        }
        if !ok { note(why) }
        return ok
    }

    /// Why writes are refused now, if they are (for `twinfs status`).
    public func refusal() -> String? { lock.withLock { state.refusal(at: clock(), witness: witness) } }

    /// One request and its answer. A caller finding another exchange under way waits for it
    /// instead (its answer serves both).
    func exchange() {
        lock.lock()
        if asking {
            let limit = ContinuousClock.now + state.lease
            while asking && lock.wait(until: limit) {}
            lock.unlock()
            return
        }
        asking = true
        let nonce = UInt64.random(in: 1...UInt64.max)
        let sentAt = clock()
        state.sent(nonce: nonce, at: sentAt)
        let wait = state.lease / 2
        lock.unlock()
        transport.send(WitnessRequest(op: .acquire, node: asker, nonce: nonce))
        let deadline = ContinuousClock.now + wait
        var answered = false
        while !answered, let r = transport.receive(until: deadline) {
            answered = lock.withLock { state.received(r) }
        }
        lock.withLock {
            if !answered { state.timedOut(at: clock()) }
            asking = false
            lock.broadcast()
        }
        if answered, lock.withLock({ state.valid(at: clock()) }) { note(nil) }
    }

    /// Logs a change of refusal once (nil: writes allowed again).
    private func note(_ why: String?) {
        let changed = lock.withLock { () -> Bool in
            defer { logged = why }
            return logged != why
        }
        guard changed else { return }
        if let why {
            log.error("WRITES REFUSED (EROFS): \(why); reads are still served; writes resume when the peer is reachable again or this node gets the witness's lease")
        } else {
            log.notice("holding the witness's lease: writes accepted while the peer is out of reach")
        }
    }

    /// Renews the lease every third of a lease while `needed()` (the peer is out of reach).
    public func start(needed: @escaping @Sendable () -> Bool) {
        let t = Thread { [self] in
            while true {
                let step = lock.withLock { state.lease } / 3
                let next = ContinuousClock.now + step
                if needed(), lock.withLock({ state.wantsRenewal(at: clock()) }) { exchange() }
                lock.lock()
                while !stopping && lock.wait(until: next) {}
                let stop = stopping
                lock.unlock()
                if stop { break }
            }
            done.signal()
        }
        t.name = "twinfs-write-lease"
        thread = t
        t.start()
    }

    public func stop() {
        lock.withLock { stopping = true; lock.broadcast() }
        if thread != nil { done.wait() }
    }
}

/// The witness over UDP (a connected socket: only the witness's replies arrive).
public final class UDPWitnessTransport: WitnessTransport, @unchecked Sendable {
    let fd: Int32
    let secret: [UInt8]

    public init(address: String, secret: [UInt8]) throws(AdminError) {
        fd = try HADaemon.udpSocket(bind: nil, connect: address)
        self.secret = secret
    }

    deinit { close(fd) }

    public func send(_ request: WitnessRequest) {
        let p = Packets.encode(request, secret: secret)
        _ = p.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    }

    public func receive(until deadline: ContinuousClock.Instant) -> WitnessReply? {
        var buf = [UInt8](repeating: 0, count: 512)
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            guard poll(&pfd, 1, ms) > 0 else { continue }
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            // ECONNREFUSED: no witness listens (ICMP); wait on, as for a lost packet.
            if n > 0, let r = Packets.decodeReply(Array(buf[0..<n]), secret: secret) { return r }
            if n < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED { return nil }
        }
    }
}
