import NIOCore
import NIOPosix
import PeerProtocol
import Synchronization
import TwinCore
import XCTest
@testable import PeerLink

enum Fixture {
    static let secret = Array("correct horse battery staple, twice".utf8)
    static let volume = "archive"

    /// The listening node ("pacs-a") and the connecting node ("pacs-b") of one volume.
    static func serverIdentity(secret: [UInt8] = secret, volume: String = volume) -> PeerLinkIdentity {
        PeerLinkIdentity(node: "pacs-a", volume: volume, secret: secret, peerNode: "pacs-b")
    }

    static func clientIdentity(secret: [UInt8] = secret, volume: String = volume, node: String = "pacs-b") -> PeerLinkIdentity {
        PeerLinkIdentity(node: node, volume: volume, secret: secret, peerNode: "pacs-a")
    }

    static func mkdir(_ n: Int) -> PeerMessage {
        .mkdir(parentPath: "studies", name: "dir-\(n)", mode: 0o40755, uid: 0, gid: 0, stableID: 100 + UInt64(n))
    }
}

/// Everything the handler saw, and how many handler calls ran at once.
final class Recorder: Sendable {
    private struct State {
        var messages: [(PeerMessage, UInt64)] = []
        var running = 0
        var peakRunning = 0
    }
    private let state = Mutex(State())

    var messages: [PeerMessage] { state.withLock { $0.messages.map(\.0) } }
    var calls: [(PeerMessage, UInt64)] { state.withLock { $0.messages } }
    var peakRunning: Int { state.withLock { $0.peakRunning } }

    func begin(_ message: PeerMessage, _ id: UInt64) {
        state.withLock { s in
            s.messages.append((message, id))
            s.running += 1
            s.peakRunning = max(s.peakRunning, s.running)
        }
    }

    func end() { state.withLock { $0.running -= 1 } }
}

/// Owns the event loop group and everything started on it; `finish` stops them all, then the group.
final class Harness: Sendable {
    let group: MultiThreadedEventLoopGroup
    private let cleanups = Mutex<[@Sendable () async -> Void]>([])

    init(threads: Int = 2) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    }

    func onFinish(_ body: @escaping @Sendable () async -> Void) {
        cleanups.withLock { $0.append(body) }
    }

    func listener(identity: PeerLinkIdentity = Fixture.serverIdentity(), port: Int = 0,
                  configure: (inout PeerListener.Configuration) -> Void = { _ in },
                  handler: @escaping PeerListener.Handler) async throws -> PeerListener {
        var config = PeerListener.Configuration(identity: identity, host: "127.0.0.1", port: port)
        configure(&config)
        let listener = try await PeerListener(configuration: config, group: group, handler: handler)
        onFinish { await listener.close() }
        return listener
    }

    func client(identity: PeerLinkIdentity = Fixture.clientIdentity(), port: Int,
                configure: (inout PeerClient.Configuration) -> Void = { _ in }) -> PeerClient {
        var config = PeerClient.Configuration(identity: identity, host: "127.0.0.1", port: port)
        configure(&config)
        let client = PeerClient(configuration: config, group: group)
        onFinish { await client.shutdown() }
        return client
    }

    func finish() async {
        let all = cleanups.withLock { c in
            defer { c = [] }
            return c
        }
        for body in all.reversed() { await body() }
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with a fresh harness and always tears it down.
func withHarness(threads: Int = 2, _ body: (Harness) async throws -> Void) async throws {
    let harness = Harness(threads: threads)
    do {
        try await body(harness)
    } catch {
        await harness.finish()
        throw error
    }
    await harness.finish()
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// Fast reconnects and short timeouts, for the peer-down tests.
func quickLink(_ c: inout PeerClient.Configuration) {
    c.requestTimeout = .seconds(1)
    c.peerTimeout = .seconds(1)
    c.keepaliveInterval = .milliseconds(200)
    c.backoff = ReconnectBackoff(initial: .milliseconds(50), maximum: .milliseconds(250))
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

// MARK: - Raw connections (for attacks and fakes)

/// Swallows whatever arrives; closes on error.
final class Sink: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

/// Connects, writes `bytes`, half-closes, and waits for the server to close. Returns false if
/// the server had not closed the connection within `timeout` (then this side closes it).
func throwBytes(_ bytes: ByteBuffer, port: Int, group: any EventLoopGroup,
                timeout: TimeAmount = .seconds(5), halfClose: Bool = true) async throws -> Bool {
    let channel = try await ClientBootstrap(group: group)
        .channelInitializer { ch in
            ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Sink()) }
        }
        .connect(host: "127.0.0.1", port: port).get()
    let timedOut = Mutex(false)
    let timer = channel.eventLoop.scheduleTask(in: timeout) {
        timedOut.withLock { $0 = true }
        channel.close(promise: nil)
    }
    try? await channel.writeAndFlush(bytes)
    if halfClose { try? await channel.close(mode: .output) }
    try? await channel.closeFuture.get()
    timer.cancel()
    return !timedOut.withLock { $0 }
}

/// A frame connection driven by hand (PeerProtocol's codec, no PeerLink logic).
func rawFrameChannel(port: Int, group: any EventLoopGroup) async throws -> NIOAsyncChannel<Frame, Frame> {
    try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
            return try NIOAsyncChannel<Frame, Frame>(wrappingChannelSynchronously: channel)
        }
    }
}

/// Runs the initiator handshake by hand on a raw frame channel.
func authenticate(_ inbound: NIOAsyncChannelInboundStream<Frame>.AsyncIterator,
                  _ outbound: NIOAsyncChannelOutboundWriter<Frame>,
                  identity: PeerLinkIdentity) async throws -> NIOAsyncChannelInboundStream<Frame>.AsyncIterator {
    var iterator = inbound
    var handshake = Handshake(role: .initiator, nodeName: identity.node, volume: identity.volume,
                              secret: identity.secret, expectedPeer: identity.peerNode)
    for m in handshake.start() { try await outbound.write(Frame(m, requestID: 0)) }
    while !handshake.isEstablished {
        guard let frame = try await iterator.next() else { throw ChannelError.eof }
        for m in try handshake.receive(frame.message()) { try await outbound.write(Frame(m, requestID: 0)) }
    }
    return iterator
}

// MARK: - A peer that can be frozen (SIGSTOP)

/// A TCP proxy in front of a listener. `freeze()` stops it reading on every connection, as if
/// the peer process were stopped with SIGSTOP: connections stay open (new ones are even
/// accepted) but nothing is answered. `thaw()` resumes.
final class FreezableProxy: Sendable {
    private struct State {
        var frozen = false
        var channels: [ObjectIdentifier: any Channel] = [:]
    }

    private let state: Locked<State>
    private let server: any Channel
    let port: Int

    init(group: any EventLoopGroup, targetPort: Int) async throws {
        let state = Locked(State())
        self.state = state
        server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .channelOption(.autoRead, value: false)
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMap { outbound in
                        inbound.pipeline.addHandler(Forwarder(to: outbound)).flatMap {
                            outbound.pipeline.addHandler(Forwarder(to: inbound))
                        }.map {
                            let frozen = state.with { s in
                                s.channels[ObjectIdentifier(inbound)] = inbound
                                s.channels[ObjectIdentifier(outbound)] = outbound
                                return s.frozen
                            }
                            for ch in [inbound, outbound] {
                                ch.closeFuture.whenComplete { _ in
                                    state.with { _ = $0.channels.removeValue(forKey: ObjectIdentifier(ch)) }
                                }
                                if !frozen { ch.setOption(.autoRead, value: true).whenComplete { _ in } }
                            }
                        }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = server.localAddress!.port!
    }

    func freeze() async { await setFrozen(true) }
    func thaw() async { await setFrozen(false) }

    private func setFrozen(_ frozen: Bool) async {
        let channels = state.with { s in
            s.frozen = frozen
            return Array(s.channels.values)
        }
        for ch in channels { try? await ch.setOption(.autoRead, value: !frozen).get() }
    }

    func close() async {
        try? await server.close()
        for ch in state.with({ Array($0.channels.values) }) { try? await ch.close() }
    }
}

final class Forwarder: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let peer: any Channel
    init(to peer: any Channel) { self.peer = peer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        peer.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
