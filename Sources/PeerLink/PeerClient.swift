import Logging
import NIOCore
import NIOPosix
import PeerProtocol
import Synchronization

/// This node's connection to the peer's `PeerListener`. It connects and authenticates (the
/// initiator side of `Handshake`), keeps the link alive with pings, reconnects with backoff
/// whenever the link drops, and carries requests: many in flight on one connection, matched to
/// replies by request id, within a bounded window.
///
/// `send` fails at once while the link is `.down` (the caller records the change for heal
/// instead of waiting), waits while it is `.connecting`, and suspends while the window is full.
public final class PeerClient: Sendable {
    public struct Configuration: Sendable {
        public var identity: PeerLinkIdentity
        /// The peer's address (config `peer.address`).
        public var host: String
        public var port: Int
        /// Default time a request may wait for its reply once sent; see `send(_:timeout:)`.
        public var requestTimeout: Duration = .milliseconds(2500)
        /// The peer is declared down when no frame at all arrives for this long; also the limit
        /// for connecting and authenticating.
        public var peerTimeout: Duration = .milliseconds(2500)
        /// How often to ping the peer (it answers with pong).
        public var keepaliveInterval: Duration = .milliseconds(500)
        /// The window: requests sent and not yet answered, and their frame bytes.
        public var maxInFlightRequests = 256
        public var maxInFlightBytes = 64 << 20
        public var backoff = ReconnectBackoff()

        public init(identity: PeerLinkIdentity, host: String, port: Int) {
            self.identity = identity
            self.host = host
            self.port = port
        }

        /// "host:port", as in messages.
        public var address: String { formatAddress(host: host, port: port) }
    }

    public struct Statistics: Sendable, Equatable {
        public var inFlightRequests: Int
        public var inFlightBytes: Int
        /// High-water marks of the window since the client was made.
        public var peakInFlightRequests: Int
        public var peakInFlightBytes: Int
        /// Senders suspended because the window is full.
        public var waitingForWindow: Int
        public var connectAttempts: Int
        /// Connections that completed the handshake.
        public var sessions: Int
        public var requestsSent: Int
        public var requestsFailed: Int
    }

    private struct Connection: Sendable {
        let channel: any Channel
        let peerNode: String
    }

    private struct Core {
        var state = PeerLinkState.connecting
        /// Bumped on every state change (waiters compare it to avoid missed wake-ups).
        var generation: UInt64 = 0
        var connection: Connection?
        /// The connection being opened or in use, so `shutdown` can close it.
        var channel: (any Channel)?
        var shuttingDown = false
        var finished = false
        var runTask: Task<Void, Never>?
        var nextToken: UInt64 = 0
        var subscribers: [UInt64: AsyncStream<PeerLinkState>.Continuation] = [:]
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var connectAttempts = 0
        var sessions = 0
        var requestsSent = 0
        var requestsFailed = 0
        var lastLoggedDown: PeerLinkError?

        mutating func token() -> UInt64 {
            nextToken += 1
            return nextToken
        }
    }

    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let window: InFlightWindow
    private let core = Mutex(Core())
    /// 0 is kept for handshake and keepalive frames.
    private let requestIDs = Atomic<UInt64>(0)

    /// Starts connecting at once and keeps the link up until `shutdown()`, which must be called
    /// (the reconnect loop holds the client). `group` is not owned: shut it down after `shutdown()`.
    public init(configuration: Configuration,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "twinfs.peer.client")) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        window = InFlightWindow(maxRequests: max(1, configuration.maxInFlightRequests),
                                maxBytes: max(1, configuration.maxInFlightBytes))
        let task = Task { [self] in await run() }
        core.withLock { $0.runTask = task }
    }

    // MARK: - State

    public var state: PeerLinkState { core.withLock { $0.state } }

    /// The authenticated peer's node name while the link is up.
    public var peerNode: String? { core.withLock { $0.connection?.peerNode } }

    /// The current state, then every change, until `shutdown` (keeps the newest 32 if not read).
    public func stateUpdates() -> AsyncStream<PeerLinkState> {
        let (stream, continuation) = AsyncStream.makeStream(of: PeerLinkState.self, bufferingPolicy: .bufferingNewest(32))
        let finished = core.withLock { s in
            let token = s.token()
            continuation.onTermination = { [weak self] _ in
                self?.core.withLock { _ = $0.subscribers.removeValue(forKey: token) }
            }
            continuation.yield(s.state)
            if !s.finished { s.subscribers[token] = continuation }
            return s.finished
        }
        if finished { continuation.finish() }
        return stream
    }

    /// Waits until the link is up; false when `timeout` passed first or the client was shut down.
    public func waitUntilUp(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (state, generation, finished) = core.withLock { ($0.state, $0.generation, $0.finished) }
            if state == .up { return true }
            if finished || ContinuousClock.now >= deadline || Task.isCancelled { return false }
            await waitForChange(after: generation, until: deadline)
        }
    }

    public var statistics: Statistics {
        let w = window.snapshot
        return core.withLock { s in
            Statistics(inFlightRequests: w.requests, inFlightBytes: w.bytes, peakInFlightRequests: w.peakRequests,
                       peakInFlightBytes: w.peakBytes, waitingForWindow: w.waiting, connectAttempts: s.connectAttempts,
                       sessions: s.sessions, requestsSent: s.requestsSent, requestsFailed: s.requestsFailed)
        }
    }

    // MARK: - Requests

    /// Sends a request with the default timeout (`configuration.requestTimeout`).
    public func send(_ message: PeerMessage) async throws(PeerLinkError) -> PeerMessage {
        try await send(message, timeout: configuration.requestTimeout)
    }

    /// Sends a request and returns the peer's answer (usually `.reply`; `.pong` for `.ping`).
    ///
    /// - Fails at once with the reason while the link is `.down`.
    /// - Suspends while the window is full (no memory grows), and while the link is `.connecting`
    ///   (at most `timeout`).
    /// - `timeout` runs from the moment the request is handed to the socket. When it passes, the
    ///   request fails with `.peerUnreachable` and the link is marked down (and reconnected).
    public func send(_ message: PeerMessage, timeout: Duration) async throws(PeerLinkError) -> PeerMessage {
        guard Self.isRequest(message) else { throw .notARequest("\(message.type)") }
        if case .down(let reason) = state { throw countFailure(reason) }
        guard message.variablePayloadSize <= Frame.maxPayload else {
            throw .messageTooLarge(bytes: message.variablePayloadSize, limit: Frame.maxPayload)
        }

        let cost = Frame.headerSize + message.payloadSizeBound
        do {
            try await window.acquire(cost)
        } catch {
            throw countFailure(.cancelled)
        }
        defer { window.release(cost) }

        // Encoded only once admitted, so waiting senders hold no frame bytes.
        let payload = message.encodePayload()
        guard payload.readableBytes <= Frame.maxPayload else {
            throw .messageTooLarge(bytes: payload.readableBytes, limit: Frame.maxPayload)
        }
        let connection: Connection
        do {
            connection = try await waitForConnection(timeout: timeout)
        } catch {
            throw countFailure(error)
        }

        let (id, answer) = issue(message.type, payload, timeout: timeout, on: connection)
        do {
            return try await withTaskCancellationHandler {
                try await answer.get()
            } onCancel: {
                connection.channel.pipeline.triggerUserOutboundEvent(CancelRequest(id: id), promise: nil)
            }
        } catch {
            throw failed(error)
        }
    }

    /// `send` for a plain (non-concurrency) thread, without its hops through Swift concurrency:
    /// when the link is up and the window has room now, the request goes to the event loop from
    /// the calling thread and `completion` runs on the event loop with the answer (keep it short,
    /// never block). Returns false, having done nothing, when the request would have to wait
    /// (link connecting or down, window full) or is not a valid request: then use `send`, which
    /// waits or fails with the reason.
    public func sendNow(_ message: PeerMessage, timeout: Duration,
                        completion: @escaping @Sendable (Result<PeerMessage, PeerLinkError>) -> Void) -> Bool {
        guard Self.isRequest(message), message.variablePayloadSize <= Frame.maxPayload,
              let connection = core.withLock({ $0.state == .up ? $0.connection : nil }) else { return false }
        let cost = Frame.headerSize + message.payloadSizeBound
        guard window.tryAcquire(cost) else { return false }
        let payload = message.encodePayload()
        guard payload.readableBytes <= Frame.maxPayload else {
            window.release(cost)
            return false
        }
        issue(message.type, payload, timeout: timeout, on: connection).answer.whenComplete { [self] result in
            window.release(cost)
            completion(result.mapError { failed($0) })
        }
        return true
    }

    /// Handshake and keepalive frames, and replies, are not requests a caller may send.
    private static func isRequest(_ message: PeerMessage) -> Bool {
        switch message {
        case .hello, .authChallengeResponse, .authOK, .authFailed, .reply: return false
        default: return true
        }
    }

    /// Hands an admitted, encoded request to the connection; `answer` completes with the
    /// peer's reply, or fails (written nowhere, timeout, connection lost).
    private func issue(_ type: MessageType, _ payload: ByteBuffer, timeout: Duration,
                       on connection: Connection) -> (id: UInt64, answer: EventLoopFuture<PeerMessage>) {
        let id = requestIDs.wrappingAdd(1, ordering: .relaxed).newValue
        let reply = connection.channel.eventLoop.makePromise(of: PeerMessage.self)
        let address = configuration.address
        core.withLock { $0.requestsSent += 1 }
        connection.channel.writeAndFlush(OutboundRequest(id: id, type: type, payload: payload, timeout: timeout, reply: reply))
            .whenFailure { error in reply.fail(PeerLinkError.peerUnreachable(address: address, .connectionLost("\(error)"))) }
        return (id, reply.futureResult)
    }

    /// A request's failure as the caller sees it, counted.
    private func failed(_ error: any Error) -> PeerLinkError {
        countFailure(error as? PeerLinkError ?? .peerUnreachable(address: configuration.address, .connectionLost("\(error)")))
    }

    private func countFailure(_ error: PeerLinkError) -> PeerLinkError {
        core.withLock { $0.requestsFailed += 1 }
        return error
    }

    /// The up connection; waits (until `timeout`) while connecting, fails while down.
    private func waitForConnection(timeout: Duration) async throws(PeerLinkError) -> Connection {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (state, connection, generation) = core.withLock { ($0.state, $0.connection, $0.generation) }
            switch state {
            case .up:
                if let connection { return connection }
            case .down(let reason):
                throw reason
            case .connecting:
                break
            }
            if Task.isCancelled { throw .cancelled }
            guard ContinuousClock.now < deadline else {
                throw .peerUnreachable(address: configuration.address, .timeout(timeout))
            }
            await waitForChange(after: generation, until: deadline)
        }
    }

    /// Returns when the state moves past `generation`, at `deadline`, or on cancellation.
    private func waitForChange(after generation: UInt64, until deadline: ContinuousClock.Instant) async {
        let token = core.withLock { $0.token() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let waiting = core.withLock { s -> Bool in
                    guard s.generation == generation, !s.finished, !Task.isCancelled else { return false }
                    s.waiters[token] = continuation
                    return true
                }
                guard waiting else {
                    continuation.resume()
                    return
                }
                let left = ContinuousClock.now.duration(to: deadline)
                group.any().scheduleTask(in: TimeAmount(max(left, .zero))) { [self] in
                    wake(token)
                }
            }
        } onCancel: {
            wake(token)
        }
    }

    private func wake(_ token: UInt64) {
        let continuation = core.withLock { $0.waiters.removeValue(forKey: token) }
        continuation?.resume()
    }

    // MARK: - Connection loop

    /// Connects, authenticates, serves until the connection ends, waits, and starts over.
    private func run() async {
        var attempt = 0
        var rng = SystemRandomNumberGenerator()
        while !core.withLock({ $0.shuttingDown }) {
            setState(.connecting)
            let (reason, wasUp) = await session()
            if core.withLock({ $0.shuttingDown }) { break }
            setState(.down(reason))
            if wasUp { attempt = 0 }
            let delay = configuration.backoff.delay(attempt: attempt, using: &rng)
            attempt += 1
            do {
                try await Task.sleep(for: delay)
            } catch {
                break
            }
        }
    }

    /// One connection, from connect to close: why it ended, and whether it was ever up.
    private func session() async -> (PeerLinkError, Bool) {
        let address = configuration.address
        let loop = group.next()
        let authenticated = loop.makePromise(of: String.self)
        let closed = loop.makePromise(of: PeerLinkError.self)
        let settings = ClientConnectionHandler.Settings(address: address, identity: configuration.identity,
                                                        peerTimeout: configuration.peerTimeout,
                                                        keepaliveInterval: configuration.keepaliveInterval, logger: logger,
                                                        linkUp: { [weak self] peer, channel in self?.linkUp(peer: peer, channel: channel) },
                                                        linkLost: { [weak self] reason in self?.linkLost(reason) })
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(configuration.peerTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let limit = FrameLimit()
                    try addFrameCodec(to: channel, limit: limit)
                    try channel.pipeline.syncOperations.addHandler(
                        ClientConnectionHandler(settings: settings, frameLimit: limit, authenticated: authenticated, closed: closed))
                }
            }
        core.withLock { $0.connectAttempts += 1 }

        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            let reason = PeerLinkError.peerUnreachable(address: address, .connectFailed(Self.describeConnectError(error)))
            authenticated.fail(reason)
            closed.succeed(reason)
            return (reason, false)
        }
        let open = core.withLock { s -> Bool in
            guard !s.shuttingDown else { return false }
            s.channel = channel
            return true
        }
        if !open { channel.close(promise: nil) }

        do {
            _ = try await authenticated.futureResult.get()  // the handler already reported `linkUp`
        } catch {
            let reason = (try? await closed.futureResult.get())
                ?? .peerUnreachable(address: address, .connectionLost("\(error)"))
            core.withLock { $0.channel = nil }
            return ((error as? PeerLinkError) ?? reason, false)
        }
        let reason = (try? await closed.futureResult.get()) ?? .peerUnreachable(address: address, .connectionLost("closed"))
        core.withLock { s in
            s.connection = nil
            s.channel = nil
        }
        return (reason, true)
    }

    /// The connection handler authenticated the peer (on the event loop).
    private func linkUp(peer: String, channel: any Channel) {
        core.withLock { s in
            s.connection = Connection(channel: channel, peerNode: peer)
            s.sessions += 1
        }
        setState(.up)
    }

    /// The connection handler lost the authenticated link: down at once, before its requests fail.
    private func linkLost(_ reason: PeerLinkError) {
        core.withLock { $0.connection = nil }
        setState(.down(reason))
    }

    private static func describeConnectError(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
            return "\(first.error)"
        }
        if let e = error as? ChannelError, case .connectTimeout(let t) = e {
            return "no answer within \(formatSeconds(.nanoseconds(t.nanoseconds)))"
        }
        return "\(error)"
    }

    /// Publishes a state change (to `state`, the streams and the waiters) and logs it. After
    /// `shutdown` only the `final` change goes through; it also ends the streams.
    private func setState(_ new: PeerLinkState, final: Bool = false) {
        struct Change {
            var previous: PeerLinkState
            var waiters: [CheckedContinuation<Void, Never>] = []
            var ending: [AsyncStream<PeerLinkState>.Continuation] = []
            var logDown = false
        }
        let change: Change? = core.withLock { s in
            guard !s.finished, final || !s.shuttingDown else { return nil }
            var c = Change(previous: s.state)
            if s.state != new {
                s.state = new
                s.generation += 1
                for sub in s.subscribers.values { sub.yield(new) }
                if case .down(let reason) = new, c.previous == .up || s.lastLoggedDown != reason {
                    s.lastLoggedDown = reason
                    c.logDown = true
                }
                if new == .up { s.lastLoggedDown = nil }
            } else if !final {
                return nil
            }
            if final {
                s.finished = true
                c.ending = Array(s.subscribers.values)
                s.subscribers = [:]
            }
            c.waiters = Array(s.waiters.values)
            s.waiters = [:]
            return c
        }
        guard let change else { return }
        // Outside the lock: finishing runs the stream's onTermination, which takes it.
        for c in change.ending { c.finish() }
        for w in change.waiters { w.resume() }
        switch new {
        case _ where change.previous == new:
            break
        case .up:
            logger.info("peer link to \(configuration.address) is up (peer '\(peerNode ?? "?")')")
        case .down(let reason) where change.logDown && !final:
            logger.warning("peer link to \(configuration.address) is down: \(reason)")
        default:
            logger.debug("peer link to \(configuration.address): \(change.previous) -> \(new)")
        }
    }

    /// Closes the link and stops reconnecting; waiting and in-flight requests fail.
    public func shutdown() async {
        let (task, channel) = core.withLock { s -> (Task<Void, Never>?, (any Channel)?) in
            s.shuttingDown = true
            let t = s.runTask
            s.runTask = nil
            return (t, s.channel)
        }
        task?.cancel()
        channel?.close(promise: nil)
        await task?.value
        setState(.down(.linkClosed(address: configuration.address)), final: true)
    }
}

extension PeerMessage {
    /// The encoded size of the variable fields (strings, bytes and their 4-byte lengths), known
    /// without encoding. The fixed fields of any message add at most 64 bytes.
    var variablePayloadSize: Int {
        func s(_ text: String) -> Int { 4 + text.utf8.count }
        switch self {
        case let .hello(node, volume, _, nonce): return s(node) + s(volume) + nonce.count
        case let .authChallengeResponse(proof): return proof.count
        case .authOK, .ping, .pong: return 0
        case let .authFailed(reason): return s(reason)
        case let .mkdir(parent, name, _, _, _, _), let .create(parent, name, _, _, _, _): return s(parent) + s(name)
        case let .write(path, _, _, data): return s(path) + 4 + data.readableBytes
        case let .commit(path, _, _, digest, _): return s(path) + digest.count
        case let .unlink(parent, name), let .rmdir(parent, name): return s(parent) + s(name)
        case let .rename(fromParent, fromName, toParent, toName, _):
            return s(fromParent) + s(fromName) + s(toParent) + s(toName)
        case let .link(path, newParent, newName): return s(path) + s(newParent) + s(newName)
        case let .symlink(parent, name, target, _, _, _): return s(parent) + s(name) + s(target)
        case let .setattr(path, _): return s(path)
        case let .setxattr(path, name, value, _): return s(path) + s(name) + 4 + value.count
        case let .removexattr(path, name): return s(path) + s(name)
        case let .syncDir(path): return s(path)
        case let .stageWhole(parent, name, _, _, _, _, _): return s(parent) + s(name)
        case let .mknod(parent, name, _, _, _, _, _): return s(parent) + s(name)
        case let .noteSplit(_, path, reason): return s(path) + s(reason)
        case let .guarded(expect, change): return expect.reduce(0) { $0 + s($1.path) + 32 } + change.variablePayloadSize + 8
        case let .reply(_, _, payload): return 4 + (payload?.readableBytes ?? 0)
        case let .lock(_, keys, _): return keys.reduce(0) { $0 + s($1) }
        case .unlock, .pull, .catchUpState, .healFile, .fileState, .volumeInfo, .healInfo, .resolveSplit: return 0
        case let .listDir(_, after, _): return s(after)
        }
    }

    /// An upper bound of the encoded payload size: the window charges it before encoding.
    var payloadSizeBound: Int { variablePayloadSize + 64 }
}
