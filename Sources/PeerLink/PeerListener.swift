import Logging
import NIOCore
import NIOPosix
import PeerProtocol
import Synchronization

/// The node's end of the link that the peer connects to: a TCP server on the node's `listen`
/// address. Every connection must complete the responder side of `Handshake` before anything
/// else is accepted; a failed handshake is logged with the remote address, counted, and the
/// connection closed. After authentication each request frame goes to `handler`, concurrently,
/// and its reply is written back under the request's id.
public final class PeerListener: Sendable {
    /// Answers one request from the authenticated peer, typically with `.reply(...)`. Its
    /// `requestID` is rewritten to the request's id, so the handler may pass any value.
    public typealias Handler = @Sendable (_ message: PeerMessage, _ requestID: UInt64) async -> PeerMessage
    /// Answers one request by calling `reply` exactly once, from any thread. Called on the
    /// connection's event loop, so it must not block: it hands the work to a thread of its
    /// own. Unlike `Handler` it costs no hops through Swift concurrency.
    public typealias ReplyingHandler = @Sendable (_ message: PeerMessage, _ requestID: UInt64,
                                                  _ reply: @escaping @Sendable (PeerMessage) -> Void) -> Void

    public struct Configuration: Sendable {
        public var identity: PeerLinkIdentity
        public var host: String
        /// 0 picks a free port (tests); see `PeerListener.port`.
        public var port: Int
        /// A connection must authenticate within this time.
        public var handshakeTimeout: Duration = .milliseconds(2500)
        /// An authenticated connection that sends nothing (not even a ping) for this long is closed.
        public var idleTimeout: Duration = .seconds(10)
        /// Open connections at once (authenticated or not); more are refused at accept.
        public var maxConnections = 16
        /// Per connection: reading stops while this many requests, or this many frame bytes,
        /// await their replies (the peer's own window is smaller, so a well-behaved peer never
        /// reaches it).
        public var maxConcurrentRequests = 320
        public var maxBufferedBytes = 80 << 20

        public init(identity: PeerLinkIdentity, host: String, port: Int) {
            self.identity = identity
            self.host = host
            self.port = port
        }
    }

    /// Counters for `twinfs status` and for tests.
    public struct Statistics: Sendable, Equatable {
        public var activeConnections = 0
        /// Connections that completed the handshake, since start.
        public var authenticatedConnections = 0
        /// Connections closed before authenticating: failed handshake, garbage, timeout, over the limit.
        public var refusedConnections = 0
        /// Frames that failed to decode, or broke the protocol (e.g. a reply sent to the listener).
        public var malformedFrames = 0
        public var requestsHandled = 0
        /// The latest refusals, newest last ("REMOTE: PROBLEM"), at most 16.
        public var recentRefusals: [String] = []
    }

    public let configuration: Configuration
    /// The bound port (the real one when `configuration.port` was 0).
    public let port: Int
    /// "host:port" actually bound.
    public let localAddress: String
    private let serverChannel: any Channel
    private let core: ListenerCore

    /// Binds and starts accepting; each request runs `handler` as a task. `group` is not owned:
    /// shut it down after `close()`.
    public convenience init(configuration: Configuration,
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                            logger: Logger = Logger(label: "twinfs.peer.listener"),
                            handler: @escaping Handler) async throws(PeerLinkError) {
        try await self.init(configuration: configuration, group: group, logger: logger, replying: { m, id, reply in
            Task { reply(await handler(m, id)) }
        })
    }

    /// Binds and starts accepting; each request goes to `replying` on the event loop.
    /// `disconnected` runs on the event loop (it must not block) whenever an authenticated
    /// connection closes: what the peer was in the middle of sending will not be finished.
    public init(configuration: Configuration,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "twinfs.peer.listener"),
                disconnected: (@Sendable () -> Void)? = nil,
                replying handler: @escaping ReplyingHandler) async throws(PeerLinkError) {
        let core = ListenerCore(configuration: configuration, logger: logger, handler: handler, disconnected: disconnected)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 1 << 20))
            .childChannelInitializer { channel in
                guard core.admit(channel) else {
                    return channel.eventLoop.makeFailedFuture(ConnectionLimitReached())
                }
                return channel.eventLoop.makeCompletedFuture {
                    let limit = FrameLimit()
                    try addFrameCodec(to: channel, limit: limit)
                    try channel.pipeline.syncOperations.addHandler(ListenerConnectionHandler(core: core, frameLimit: limit))
                }
            }
        let requested = formatAddress(host: configuration.host, port: configuration.port)
        do {
            serverChannel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw .cannotListen(address: requested, reason: "\(error)")
        }
        self.core = core
        self.configuration = configuration
        port = serverChannel.localAddress?.port ?? configuration.port
        localAddress = formatAddress(host: serverChannel.localAddress?.ipAddress ?? configuration.host, port: port)
        logger.info("listening for the peer on \(localAddress)")
    }

    public var statistics: Statistics { core.stats.withLock { $0.public } }

    /// Stops accepting and closes every connection. Requests still in the handler finish, but
    /// their replies are dropped.
    public func close() async {
        core.beginClosing()
        try? await serverChannel.close()
        let children = core.openChannels()
        for ch in children { ch.close(promise: nil) }
        for ch in children { try? await ch.closeFuture.get() }
        core.logger.info("stopped listening for the peer on \(localAddress)")
    }
}

struct ConnectionLimitReached: Error {}

/// What the listener's connections share: configuration, handler, counters, open channels.
final class ListenerCore: Sendable {
    struct Stats {
        var `public` = PeerListener.Statistics()
        var closing = false
        // Refusal warnings are rate-limited: a port scan must not flood the log.
        var logWindowStart = NIODeadline.uptimeNanoseconds(0)
        var logsInWindow = 0
        var suppressed = 0
    }

    static let logBurst = 10
    static let logWindow = TimeAmount.seconds(10)

    let configuration: PeerListener.Configuration
    let logger: Logger
    let handler: PeerListener.ReplyingHandler
    let disconnected: (@Sendable () -> Void)?
    let stats = Mutex(Stats())
    private let channels = Mutex([ObjectIdentifier: any Channel]())

    init(configuration: PeerListener.Configuration, logger: Logger, handler: @escaping PeerListener.ReplyingHandler,
         disconnected: (@Sendable () -> Void)? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.handler = handler
        self.disconnected = disconnected
    }

    /// Registers an accepted connection, or refuses it (closing, or over the limit).
    func admit(_ channel: any Channel) -> Bool {
        let admitted = stats.withLock { s -> Bool in
            guard !s.closing, s.public.activeConnections < configuration.maxConnections else { return false }
            s.public.activeConnections += 1
            return true
        }
        guard admitted else {
            recordRefusal(remote: describe(channel.remoteAddress),
                          problem: "more than \(configuration.maxConnections) connections open at once")
            return false
        }
        let key = ObjectIdentifier(channel)
        channels.withLock { $0[key] = channel }
        channel.closeFuture.whenComplete { [self] _ in
            channels.withLock { _ = $0.removeValue(forKey: key) }
            stats.withLock { $0.public.activeConnections -= 1 }
        }
        return true
    }

    func beginClosing() { stats.withLock { $0.closing = true } }

    func openChannels() -> [any Channel] { channels.withLock { Array($0.values) } }

    func recordRefusal(remote: String, problem: String) {
        let now = NIODeadline.now()
        let (log, suppressed): (Bool, Int) = stats.withLock { s in
            s.public.refusedConnections += 1
            s.public.recentRefusals.append("\(remote): \(problem)")
            if s.public.recentRefusals.count > 16 { s.public.recentRefusals.removeFirst() }
            if now - s.logWindowStart > Self.logWindow {
                s.logWindowStart = now
                s.logsInWindow = 0
            }
            guard s.logsInWindow < Self.logBurst else {
                s.suppressed += 1
                return (false, 0)
            }
            s.logsInWindow += 1
            defer { s.suppressed = 0 }
            return (true, s.suppressed)
        }
        guard log else { return }
        let more = suppressed > 0 ? " (\(suppressed) similar refusals not logged)" : ""
        logger.warning("refused peer connection from \(remote): \(problem)\(more)")
    }

    func recordMalformed() { stats.withLock { $0.public.malformedFrames += 1 } }

    func recordAuthenticated(remote: String, peerNode: String) {
        stats.withLock { $0.public.authenticatedConnections += 1 }
        logger.info("peer '\(peerNode)' connected from \(remote) and authenticated")
    }

    func recordRequestHandled() { stats.withLock { $0.public.requestsHandled += 1 } }
}

/// "1.2.3.4:5678" for a socket address, for logs.
func describe(_ address: SocketAddress?) -> String {
    guard let address else { return "an unknown address" }
    if let ip = address.ipAddress, let port = address.port { return formatAddress(host: ip, port: port) }
    return "\(address)"
}
