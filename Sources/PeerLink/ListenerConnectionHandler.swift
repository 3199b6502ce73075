import Logging
import NIOCore
import PeerProtocol

/// One accepted connection: the responder side of the handshake, then requests. Runs on the
/// channel's event loop; handler calls run as tasks and their replies come back to the loop.
///
/// Backpressure: while `maxConcurrentRequests` requests or `maxBufferedBytes` request bytes await
/// replies, or the socket cannot take more output, the handler holds back `read`, so the peer's
/// TCP window (not this node's memory) absorbs the excess.
final class ListenerConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private enum Phase {
        case handshaking
        case established(peerNode: String)
        case closed
    }

    private let core: ListenerCore
    private let frameLimit: FrameLimit
    private var phase = Phase.handshaking
    private var authenticator: LinkAuthenticator?
    private var remote = "an unknown address"
    private var sawInput = false
    private var inFlight = 0
    private var inFlightBytes = 0
    private var readPending = false
    private var lastFrame = NIODeadline.now()
    private var handshakeTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?

    init(core: ListenerCore, frameLimit: FrameLimit) {
        self.core = core
        self.frameLimit = frameLimit
    }

    private var configuration: PeerListener.Configuration { core.configuration }

    // MARK: - Lifecycle

    func channelActive(context: ChannelHandlerContext) {
        remote = describe(context.remoteAddress)
        authenticator = LinkAuthenticator(role: .responder, identity: configuration.identity, address: remote)
        let limit = configuration.handshakeTimeout
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(limit)) {
            self.refuse(context: context, problem: "no complete handshake within \(formatSeconds(limit))", refusal: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        switch phase {
        case .handshaking where sawInput:
            core.recordRefusal(remote: remote, problem: "the remote closed the connection during the handshake")
        case .established(let peer):
            core.logger.info("peer '\(peer)' at \(remote) disconnected")
            core.disconnected?()
        default:
            break
        }
        phase = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch phase {
        case .handshaking:
            if error is PeerProtocolError {
                core.recordMalformed()
            } else if !sawInput {
                // A connect-and-reset (port scan, health check): nothing to refuse.
                close(context: context)
                return
            }
            refuse(context: context, problem: "\(error)", refusal: nil)
        case .established:
            if error is PeerProtocolError {
                core.recordMalformed()
                violation(context: context, problem: "\(error)")
            } else {
                core.logger.info("connection from peer at \(remote) failed: \(error)")
                close(context: context)
            }
        case .closed:
            break
        }
    }

    // MARK: - Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        sawInput = true
        lastFrame = .now()
        switch phase {
        case .closed:
            return
        case .handshaking:
            handshake(frame, context: context)
        case .established:
            request(frame, context: context)
        }
    }

    private func handshake(_ frame: Frame, context: ChannelHandlerContext) {
        let message: PeerMessage
        do {
            message = try frame.message()
        } catch {
            core.recordMalformed()
            refuse(context: context, problem: error.description, refusal: nil)
            return
        }
        switch authenticator!.receive(message) {
        case .send(let out):
            write(out, context: context)
        case let .established(peer, out):
            write(out, context: context)
            handshakeTimer?.cancel()
            phase = .established(peerNode: peer)
            frameLimit.maxPayload = Frame.maxPayload
            core.recordAuthenticated(remote: remote, peerNode: peer)
            scheduleIdleCheck(context: context)
        case let .failed(refusal, problem, _):
            refuse(context: context, problem: problem, refusal: refusal)
        }
    }

    private func request(_ frame: Frame, context: ChannelHandlerContext) {
        let message: PeerMessage
        do {
            message = try frame.message()
        } catch {
            core.recordMalformed()
            violation(context: context, problem: error.description)
            return
        }
        switch message {
        case .ping:
            context.writeAndFlush(wrapOutboundOut(Frame(.pong, requestID: frame.requestID)), promise: nil)
        case .pong:
            break
        case .hello, .authChallengeResponse, .authOK, .authFailed, .reply:
            core.recordMalformed()
            violation(context: context, problem: "unexpected \(message.type) message after authentication")
        default:
            dispatch(message, requestID: frame.requestID, cost: Frame.headerSize + frame.payload.readableBytes,
                     context: context)
        }
    }

    /// Hands the request to the handler; the reply is encoded on the handler's thread and
    /// written on the loop.
    private func dispatch(_ message: PeerMessage, requestID: UInt64, cost: Int, context: ChannelHandlerContext) {
        inFlight += 1
        inFlightBytes += cost
        let logger = core.logger
        let allocator = context.channel.allocator
        let replied = context.eventLoop.makePromise(of: Frame.self)
        core.handler(message, requestID) { reply in
            replied.succeed(Self.replyFrame(reply, requestID: requestID, allocator: allocator, logger: logger))
        }
        replied.futureResult.assumeIsolated().whenSuccess { frame in
            guard case .established = self.phase else {
                self.finished(cost: cost, context: context)
                return
            }
            // Counted before the reply leaves: a client that has its reply sees the count.
            self.core.recordRequestHandled()
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(self.wrapOutboundOut(frame), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in
                self.finished(cost: cost, context: context)
            }
        }
    }

    private static func replyFrame(_ reply: PeerMessage, requestID: UInt64, allocator: ByteBufferAllocator,
                                   logger: Logger) -> Frame {
        var reply = reply
        if case let .reply(_, errno, payload) = reply {
            reply = .reply(requestID: requestID, errno: errno, payload: payload)
        }
        let frame = Frame(reply, requestID: requestID, allocator: allocator)
        guard frame.payload.readableBytes <= Frame.maxPayload else {
            logger.error("reply to peer request \(requestID) is \(frame.payload.readableBytes) bytes, over the frame limit; answering EIO")
            return Frame(.reply(requestID: requestID, errno: 5 /* EIO */, payload: nil), requestID: requestID)
        }
        return frame
    }

    private func finished(cost: Int, context: ChannelHandlerContext) {
        inFlight -= 1
        inFlightBytes -= cost
        resumeReadingIfPossible(context: context)
    }

    // MARK: - Backpressure

    private func canRead(context: ChannelHandlerContext) -> Bool {
        inFlight < configuration.maxConcurrentRequests && inFlightBytes < configuration.maxBufferedBytes
            && context.channel.isWritable
    }

    func read(context: ChannelHandlerContext) {
        if canRead(context: context) {
            context.read()
        } else {
            readPending = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        if case .closed = phase { return }
        guard readPending, canRead(context: context) else { return }
        readPending = false
        context.read()
    }

    // MARK: - Closing

    private func write(_ messages: [PeerMessage], context: ChannelHandlerContext) {
        guard !messages.isEmpty else { return }
        for m in messages {
            context.write(wrapOutboundOut(Frame(m, requestID: 0)), promise: nil)
        }
        context.flush()
    }

    /// Ends a connection that failed to authenticate: counted, logged (rate-limited), told why.
    private func refuse(context: ChannelHandlerContext, problem: String, refusal: PeerMessage?) {
        guard case .handshaking = phase else { return }
        phase = .closed
        handshakeTimer?.cancel()
        core.recordRefusal(remote: remote, problem: problem)
        let channel = context.channel
        if let refusal {
            context.writeAndFlush(wrapOutboundOut(Frame(refusal, requestID: 0))).whenComplete { _ in
                channel.close(promise: nil)
            }
            // A remote that does not read cannot keep the connection open.
            context.eventLoop.scheduleTask(in: refusalGrace) { channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    /// Ends an authenticated connection whose peer broke the protocol.
    private func violation(context: ChannelHandlerContext, problem: String) {
        if case .established(let peer) = phase {
            core.logger.warning("closing the link from peer '\(peer)' at \(remote): \(problem)")
        }
        close(context: context)
    }

    private func close(context: ChannelHandlerContext) {
        phase = .closed
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        context.channel.close(promise: nil)
    }

    /// Closes a connection whose peer went silent: the peer pings every keepalive interval,
    /// so silence means it is gone (or frozen) and its resources can go.
    private func scheduleIdleCheck(context: ChannelHandlerContext) {
        let limit = TimeAmount(configuration.idleTimeout)
        let period = TimeAmount.nanoseconds(max(limit.nanoseconds / 4, 50_000_000))
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(in: period) {
            guard case .established(let peer) = self.phase else { return }
            if NIODeadline.now() - self.lastFrame > limit {
                self.core.logger.warning("peer '\(peer)' at \(self.remote) sent nothing for \(formatSeconds(self.configuration.idleTimeout)); closing its connection")
                self.close(context: context)
            } else {
                self.scheduleIdleCheck(context: context)
            }
        }
    }
}
