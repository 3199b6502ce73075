import Foundation
import Glibc
import PeerProtocol
import Replication
import TwinCore

/// One of the two nodes of an in-process pair.
public enum LinkSide: Int, Sendable, CaseIterable, CustomStringConvertible {
    case a = 0, b = 1
    public var other: LinkSide { self == .a ? .b : .a }
    public var description: String { self == .a ? "a" : "b" }
}

/// What the link does to one request.
public enum LinkFault: Sendable, Equatable {
    /// Lost on the way: never applied; the sender hears nothing (unreachable, link torn down).
    case dropRequest
    /// Lost on the way, and the link stays down until `setPartitioned(false)` or `healAll()`
    /// (a cable pulled with the request on it): nothing reaches the peer meanwhile, not even
    /// catch-up's replay of it.
    case cut
    /// Applied by the peer, but the answer is lost (unreachable, link torn down).
    case loseReply
    /// Delivered late (requests overtake each other: each runs on a thread of its own).
    case delay(Duration)
    /// The peer's disk refuses the change with this errno (ENOSPC, EROFS, EIO): not applied.
    /// Only for messages that change the brick; others pass.
    case refuse(Int32)
}

/// Random faults per request towards one node, each a probability in 0...1.
public struct FaultRates: Sendable, Equatable {
    public var dropRequest = 0.0
    public var loseReply = 0.0
    public var delay = 0.0
    /// The longest random delay.
    public var maxDelay: Duration = .milliseconds(3)
    public init() {}
}

/// SplitMix64: a tiny seeded generator, so a run is reproduced by its seed number.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Counts of what the link did, for test messages.
public struct LinkStats: Sendable, Equatable, CustomStringConvertible {
    public var delivered = 0
    public var dropped = 0
    public var lostReplies = 0
    public var refused = 0
    public var delayed = 0
    public var unreachable = 0
    public var description: String {
        "delivered \(delivered), dropped \(dropped), lost replies \(lostReplies), disk refusals \(refused), delayed \(delayed), unreachable \(unreachable)"
    }
}

/// An in-process peer link between two nodes, standing in for `PeerClient` + `PeerListener`
/// in tests (as NIOEmbedded stands in for a socket): each request is handed to the other
/// node's `PeerService.handleBlocking` on a thread of its own, under scripted and seeded
/// random faults. Fault decisions come from one seeded generator in the order requests
/// arrive; with one driving thread that order, and so the run, is mostly reproducible (the
/// catch-up threads and background writes interleave as the scheduler decides).
///
/// Like the TCP link, a request that gets no answer (dropped, reply lost, partition, timeout)
/// tears the connection down: every answer still in flight is lost, the receiving node is
/// told its sender disconnected, and the link is back up after `reconnectDelay` unless
/// partitioned.
public final class InProcessLink: Sendable {
    struct State {
        var services: [LinkSide: PeerService] = [:]
        var partitioned = false
        /// After a torn-down connection: not up before this instant (the client's reconnect).
        var reconnectAt = ContinuousClock.now
        /// Bumped whenever the connection breaks: an answer from an older connection is lost.
        var connection: UInt64 = 0
        var rng: SeededGenerator
        /// For `isBackground` messages: their timing follows the wall clock (catch-up's and the
        /// healer's passes), so their draws are kept out of `rng`'s sequence.
        var backgroundRng: SeededGenerator
        var rates: [LinkSide: FaultRates] = [:]
        /// Disk refusals towards a node: (errno, probability per brick-changing request).
        var disk: [LinkSide: (errno: Int32, rate: Double)] = [:]
        /// Scripted faults towards a node, used before any random one (first matching wins).
        var script: [LinkSide: [(LinkFault, @Sendable (PeerMessage) -> Bool)]] = [:]
        /// Requests being applied on each node (handler threads running).
        var inFlight: [LinkSide: Int] = [.a: 0, .b: 0]
        var stats = LinkStats()
        /// Every commit a node accepted, in order: which versions of which files reached it.
        var commits: [(to: LinkSide, id: UInt64, xxh128: [UInt8])] = []
    }

    /// Everything above; `idle` is signalled when a handler thread ends.
    private let state: Locked<State>
    private let idle = MonotonicCondition()
    public let reconnectDelay: Duration

    public init(seed: UInt64, reconnectDelay: Duration = .milliseconds(2)) {
        state = Locked(State(rng: SeededGenerator(seed: seed ^ 0x5EED_11AC), backgroundRng: SeededGenerator(seed: seed ^ 0xBA6C_0000)))
        self.reconnectDelay = reconnectDelay
    }

    /// The transport node `from` sends its requests through.
    public func transport(from: LinkSide) -> InProcessTransport { InProcessTransport(link: self, from: from) }

    /// `side`'s listener: requests to it are served by `service` from now on.
    public func attach(_ side: LinkSide, _ service: PeerService) {
        state.with { $0.services[side] = service }
    }

    /// `side` stops (crash or shutdown): its connection breaks and nothing reaches it; returns
    /// once no request is being applied on it any more, so its journal can be closed.
    public func detach(_ side: LinkSide) {
        let survivor = state.with { s -> PeerService? in
            s.services[side] = nil
            breakConnection(&s)
            return s.services[side.other]
        }
        // The survivor sees its sender's connection close.
        survivor?.peerDisconnected()
        waitIdle(side)
    }

    /// Cuts or restores the link both ways. A cut breaks the connection at once.
    public func setPartitioned(_ cut: Bool) {
        let notify: [PeerService] = state.with { s in
            guard s.partitioned != cut else { return [] }
            s.partitioned = cut
            if cut {
                breakConnection(&s)
                return Array(s.services.values)
            }
            return []
        }
        for svc in notify { svc.peerDisconnected() }
    }

    public var isPartitioned: Bool { state.with { $0.partitioned } }

    /// Random faults for requests towards `side`.
    public func setRates(_ rates: FaultRates, towards side: LinkSide) {
        state.with { $0.rates[side] = rates }
    }

    /// `side`'s disk refuses brick changes with `errno` (with that probability each); nil: it takes them.
    public func setDiskRefusal(_ errno: Int32?, rate: Double = 1, on side: LinkSide) {
        state.with { $0.disk[side] = errno.map { ($0, rate) } }
    }

    /// The next request towards `side` matching `when` meets `fault` (before any random fault).
    public func script(_ fault: LinkFault, towards side: LinkSide,
                       when: @escaping @Sendable (PeerMessage) -> Bool = { _ in true }) {
        state.with { $0.script[side, default: []].append((fault, when)) }
    }

    /// Clears every fault (rates, disk, script) and the partition; the link comes up.
    public func healAll() {
        state.with { s in
            s.rates = [:]
            s.disk = [:]
            s.script = [:]
            s.partitioned = false
        }
    }

    public var stats: LinkStats { state.with { $0.stats } }

    /// How many commits the nodes accepted so far (a mark for `commits(to:since:)`).
    public var commitCount: Int { state.with { $0.commits.count } }

    /// The versions (file id, XXH3-128) `side` accepted from its peer since `mark`.
    public func commits(to side: LinkSide, since mark: Int) -> [(id: UInt64, xxh128: [UInt8])] {
        state.with { s in s.commits[min(mark, s.commits.count)...].filter { $0.to == side }.map { ($0.id, $0.xxh128) } }
    }

    /// Requests being applied on either node now.
    public var requestsInFlight: Int { state.with { $0.inFlight.values.reduce(0, +) } }

    /// Not partitioned and both nodes attached: requests get through once any reconnect is done.
    public var canCarry: Bool { state.with { !$0.partitioned && $0.services.count == 2 } }

    /// Can carry, but the client's reconnect after a torn-down connection is not done yet.
    public var reconnecting: Bool {
        state.with { !$0.partitioned && $0.services.count == 2 && ContinuousClock.now < $0.reconnectAt }
    }

    /// Messages sent on a timer or by a background pass (keepalive, catch-up's state, the
    /// healer's questions), not as the direct effect of a client's request: when they leave
    /// depends on the wall clock.
    public static func isBackground(_ m: PeerMessage) -> Bool {
        [.ping, .catchUpState, .listDir, .healFile, .fileState, .volumeInfo, .healInfo].contains(m.type)
    }

    /// Blocks until no request is being applied on `side`.
    public func waitIdle(_ side: LinkSide) {
        idle.withLock {
            while state.with({ $0.inFlight[side]! }) > 0 { _ = idle.wait(for: .milliseconds(50)) }
        }
    }

    // MARK: - The transport's side

    func isUp(from: LinkSide) -> Bool {
        state.with { s in !s.partitioned && s.services[from.other] != nil && ContinuousClock.now >= s.reconnectAt }
    }

    func describe(from: LinkSide) -> String {
        state.with { s in
            if s.partitioned { return "partitioned" }
            if s.services[from.other] == nil { return "peer-down" }
            return ContinuousClock.now >= s.reconnectAt ? "up" : "reconnecting"
        }
    }

    /// Breaks the connection: answers in flight are lost, the client reconnects later (callers
    /// tell the services outside the lock).
    private func breakConnection(_ s: inout State) {
        s.connection &+= 1
        s.reconnectAt = ContinuousClock.now + reconnectDelay
    }

    private enum Plan {
        case unreachable(String)
        case deliver(PeerService, connection: UInt64, delay: Duration?, loseReply: Bool)
        case refuse(Int32, PeerService)
    }

    func send(_ m: PeerMessage, from: LinkSide, timeout: Duration, done: @escaping @Sendable (PeerOutcome) -> Void) {
        let to = from.other
        let once = Once(done)
        let plan: Plan = state.with { s in
            guard !s.partitioned else {
                s.stats.unreachable += 1
                return .unreachable("partitioned")
            }
            guard let svc = s.services[to], ContinuousClock.now >= s.reconnectAt else {
                s.stats.unreachable += 1
                return .unreachable("not connected")
            }
            let changesBrick = Self.changesBrick(m)
            var fault: LinkFault?
            // A scripted disk refusal waits for a request that changes the brick.
            if let i = s.script[to]?.firstIndex(where: { f, when in
                if case .refuse = f, !changesBrick { return false }
                return when(m)
            }) {
                fault = s.script[to]!.remove(at: i).0
            } else {
                let background = Self.isBackground(m)
                var g = background ? s.backgroundRng : s.rng
                defer { if background { s.backgroundRng = g } else { s.rng = g } }
                let r = s.rates[to] ?? FaultRates()
                let roll = Double.random(in: 0..<1, using: &g)
                if roll < r.dropRequest {
                    fault = .dropRequest
                } else if roll < r.dropRequest + r.loseReply {
                    fault = .loseReply
                } else if let d = s.disk[to], changesBrick, Double.random(in: 0..<1, using: &g) < d.rate {
                    fault = .refuse(d.errno)
                } else if Double.random(in: 0..<1, using: &g) < r.delay {
                    let us = Int64(Self.seconds(r.maxDelay) * 1e6)
                    fault = .delay(.microseconds(Int64.random(in: 0...max(1, us), using: &g)))
                }
            }
            switch fault {
            case .dropRequest?:
                s.stats.dropped += 1
                return .unreachable("request lost")
            case .cut?:
                s.stats.dropped += 1
                s.partitioned = true
                return .unreachable("request lost")
            case let .refuse(e)? where changesBrick:
                s.stats.refused += 1
                return .refuse(e, svc)
            case .loseReply?:
                s.stats.lostReplies += 1
                return .deliver(svc, connection: s.connection, delay: nil, loseReply: true)
            case let .delay(d)?:
                s.stats.delayed += 1
                return .deliver(svc, connection: s.connection, delay: d, loseReply: false)
            case .refuse?, nil:
                return .deliver(svc, connection: s.connection, delay: nil, loseReply: false)
            }
        }
        switch plan {
        case .unreachable(let why):
            if why == "request lost" { tearDown() }
            once.complete(.unreachable(why))
        case let .refuse(e, svc):
            // A refusing disk never takes the message, but the receipt it was for ends there
            // as the applier ends it when its own write or commit fails: unfinished, released.
            if let id = Self.receiptID(m) { svc.applier.release { $0 == id } }
            once.complete(.refused(e))
        case let .deliver(svc, connection, delay, loseReply):
            state.with { $0.inFlight[to]! += 1 }
            // A request the peer does not answer in time takes the link down, as on TCP.
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.seconds(timeout)) { [self] in
                if once.complete(.unreachable("timeout after \(timeout)")) { tearDown() }
            }
            let t = Thread { [self] in
                if let delay { Thread.sleep(forTimeInterval: Self.seconds(delay)) }
                let reply = svc.handleBlocking(m, requestID: 0)
                let current = state.with { s -> Bool in
                    s.stats.delivered += 1
                    if case let .commit(_, id, _, hash, _) = m, case .reply(_, 0, _) = reply { s.commits.append((to, id, hash)) }
                    return s.connection == connection
                }
                if loseReply {
                    if once.complete(.unreachable("reply lost")) { tearDown() }
                } else if !current {
                    once.complete(.unreachable("connection closed"))
                } else if case let .reply(_, errno, payload) = reply {
                    once.complete(errno == 0 ? .ok(payload) : .refused(errno))
                } else {
                    once.complete(.refused(EPROTO))
                }
                state.with { $0.inFlight[to]! -= 1 }
                idle.withLock { idle.broadcast() }
            }
            t.name = "twinfs-sim-\(to)"
            t.start()
        }
    }

    /// The sender gave up on a request: its connection closes, the receiver releases what the
    /// sender was sending.
    private func tearDown() {
        let services = state.with { s -> [PeerService] in
            breakConnection(&s)
            return Array(s.services.values)
        }
        for svc in services { svc.peerDisconnected() }
    }

    /// The file whose receipt a write or commit is part of.
    static func receiptID(_ m: PeerMessage) -> UInt64? {
        switch m {
        case let .write(_, id, _, _), let .commit(_, id, _, _, _): return id
        default: return nil
        }
    }

    static func changesBrick(_ m: PeerMessage) -> Bool {
        switch m.type {
        case .mkdir, .create, .write, .commit, .unlink, .rmdir, .rename, .link, .symlink,
             .setattr, .setxattr, .removexattr, .syncDir:
            return true
        case .guarded:
            return changesBrick(m.unguarded)
        default:
            return false
        }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// A completion that runs at most once (the answer, or the timeout, whichever is first).
final class Once: Sendable {
    /// The callback until it ran, then nil.
    private let body: Locked<(@Sendable (PeerOutcome) -> Void)?>
    init(_ body: @escaping @Sendable (PeerOutcome) -> Void) { self.body = Locked(body) }

    @discardableResult
    func complete(_ o: PeerOutcome) -> Bool {
        guard let b = body.with({ b -> (@Sendable (PeerOutcome) -> Void)? in
            defer { b = nil }
            return b
        }) else { return false }
        b(o)
        return true
    }
}

/// One node's end of an `InProcessLink`.
public struct InProcessTransport: PeerTransport {
    let link: InProcessLink
    let from: LinkSide

    public var isUp: Bool { link.isUp(from: from) }
    public var linkDescription: String { "in-process \(from)->\(from.other): \(link.describe(from: from))" }

    public func start(_ message: PeerMessage, timeout: Duration, done: @escaping @Sendable (PeerOutcome) -> Void) {
        link.send(message, from: from, timeout: timeout, done: done)
    }
}
