import Logging
import NIOCore
import PeerProtocol

/// A request on its way from `PeerClient.send` to the connection handler.
struct OutboundRequest: Sendable {
    let id: UInt64
    let type: MessageType
    let payload: ByteBuffer
    /// Counted from the moment the frame has been handed to the socket.
    let timeout: Duration
    let reply: EventLoopPromise<PeerMessage>
}

/// Sent down the pipeline when the task waiting for request `id` is cancelled.
struct CancelRequest: Sendable {
    let id: UInt64
}

/// The client's connection: the initiator side of the handshake, then pipelined requests
/// matched to replies by request id, per-request timeouts and the keepalive. All state lives on
/// the channel's event loop. Any timeout closes the connection and fails everything in flight,
/// so one frozen peer costs each waiting request at most its timeout.
final class ClientConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = OutboundRequest
    typealias OutboundOut = Frame

    struct Settings: Sendable {
        var address: String
        var identity: PeerLinkIdentity
        /// Silence limit: no frame from the peer for this long means it is gone. Also bounds the handshake.
        var peerTimeout: Duration
        var keepaliveInterval: Duration
        /// The longest a request may wait for its reply while the peer keeps answering pings:
        /// requests whose work grows with a file's size (a commit re-reading 1.5 GB, a pull or
        /// heal that sends a whole file, a directory sync) get `maxBulkWork`, the others
        /// `maxRequestWork`. See `armTimer`.
        var maxRequestWork: Duration = .seconds(30)
        var maxBulkWork: Duration = .seconds(600)
        var logger: Logger
        /// Called on the event loop when the handshake succeeds (peer node, channel), and when that
        /// authenticated connection is lost, before its requests fail. Both come from the loop
        /// in order, so the owner's state never shows `.up` for a dead connection, and a caller
        /// whose request failed never sees the link still `.up`.
        var linkUp: @Sendable (String, any Channel) -> Void
        var linkLost: @Sendable (PeerLinkError) -> Void
    }

    private enum Phase {
        case handshaking
        case up
        case closed
    }

    private struct Pending {
        let reply: EventLoopPromise<PeerMessage>
        var timer: Scheduled<Void>?
        var sent = NIODeadline.now()
        var work: Duration = .zero
    }

    private let settings: Settings
    private let frameLimit: FrameLimit
    private let authenticated: EventLoopPromise<String>
    private let closed: EventLoopPromise<PeerLinkError>
    private var authenticator: LinkAuthenticator
    private var phase = Phase.handshaking
    private var wasUp = false
    private var closeReason: PeerLinkError?
    private var pending: [UInt64: Pending] = [:]
    private var lastFrame = NIODeadline.now()
    private var handshakeTimer: Scheduled<Void>?
    private var keepaliveTimer: Scheduled<Void>?

    /// `authenticated` gets the peer's node name (or the failure); `closed` gets why the
    /// connection ended. Both are always completed.
    init(settings: Settings, frameLimit: FrameLimit, authenticated: EventLoopPromise<String>,
         closed: EventLoopPromise<PeerLinkError>) {
        self.settings = settings
        self.frameLimit = frameLimit
        self.authenticated = authenticated
        self.closed = closed
        authenticator = LinkAuthenticator(role: .initiator, identity: settings.identity, address: settings.address)
    }

    private var address: String { settings.address }

    // MARK: - Lifecycle

    func channelActive(context: ChannelHandlerContext) {
        lastFrame = .now()
        let limit = settings.peerTimeout
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(limit)) {
            self.shutDown(.peerUnreachable(address: self.address, .timeout(limit)), context: context)
        }
        write(authenticator.start(), context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(reason: closeReason ?? .peerUnreachable(address: address, .connectionLost("closed by the peer")))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish(reason: closeReason ?? .peerUnreachable(address: address, .connectionLost("connection failed")))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        shutDown(LinkAuthenticator.frameError(error, address: address), context: context)
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastFrame = .now()
        let message: PeerMessage
        switch phase {
        case .closed:
            return
        case .handshaking:
            do {
                message = try frame.message()
            } catch {
                shutDown(.protocolViolation(address: address, detail: error.description), context: context)
                return
            }
            handshake(message, context: context)
        case .up:
            do {
                message = try frame.message()
            } catch {
                shutDown(.protocolViolation(address: address, detail: error.description), context: context)
                return
            }
            switch message {
            case .ping:
                context.writeAndFlush(wrapOutboundOut(Frame(.pong, requestID: frame.requestID)), promise: nil)
            case .pong where frame.requestID == 0:
                break  // keepalive answer
            case .hello, .authChallengeResponse, .authOK, .authFailed:
                shutDown(.protocolViolation(address: address, detail: "unexpected \(message.type) message after authentication"),
                         context: context)
            default:
                if let p = pending.removeValue(forKey: frame.requestID) {
                    p.timer?.cancel()
                    p.reply.succeed(message)
                } else {
                    // The request timed out or was cancelled; its answer is no longer awaited.
                    settings.logger.debug("late answer from peer at \(address) to request \(frame.requestID)")
                }
            }
        }
    }

    private func handshake(_ message: PeerMessage, context: ChannelHandlerContext) {
        switch authenticator.receive(message) {
        case .send(let out):
            write(out, context: context)
        case let .established(peer, out):
            write(out, context: context)
            handshakeTimer?.cancel()
            phase = .up
            wasUp = true
            frameLimit.maxPayload = Frame.maxPayload
            settings.linkUp(peer, context.channel)
            authenticated.succeed(peer)
            scheduleKeepalive(context: context)
        case let .failed(refusal, problem, error):
            settings.logger.debug("handshake with peer at \(address) failed: \(problem)")
            if let refusal {
                // Tell the peer why before closing (it logs and counts the refusal).
                closeReason = error
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(Frame(refusal, requestID: 0))).whenComplete { _ in
                    channel.close(promise: nil)
                }
                context.eventLoop.scheduleTask(in: refusalGrace) { channel.close(promise: nil) }
                phase = .closed
                authenticated.fail(error)
            } else {
                shutDown(error, context: context)
            }
        }
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        guard case .up = phase else {
            let reason = closeReason ?? .peerUnreachable(address: address, .connectionLost("not connected"))
            request.reply.fail(reason)
            promise?.fail(reason)
            return
        }
        pending[request.id] = Pending(reply: request.reply, timer: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(Frame(type: request.type, requestID: request.id, payload: request.payload)),
                              promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                // The clock starts once the frame is in the socket: a request queued behind
                // others on a slow link does not time out for the queue's sake.
                guard self.pending[request.id] != nil else { return }
                self.pending[request.id]!.sent = .now()
                switch request.type {
                case .commit, .pull, .healFile, .syncDir, .resolveSplit:
                    self.pending[request.id]!.work = self.settings.maxBulkWork
                default:
                    self.pending[request.id]!.work = self.settings.maxRequestWork
                }
                self.armTimer(request.id, request.timeout, context: context)
            case .failure(let error):
                if let p = self.pending.removeValue(forKey: request.id) {
                    p.timer?.cancel()
                    p.reply.fail(self.closeReason ?? .peerUnreachable(address: self.address, .connectionLost("\(error)")))
                }
            }
        }
        written.futureResult.cascade(to: promise)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let cancel = event as? CancelRequest else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        if let p = pending.removeValue(forKey: cancel.id) {
            p.timer?.cancel()
            p.reply.fail(PeerLinkError.cancelled)
        }
        promise?.succeed(())
    }

    /// A request's timeout bounds the peer's silence, not its work: when it passes while the
    /// peer still answers pings (a frame within `peerTimeout`), the request waits another
    /// round, up to its work bound in all. Only a silent peer, or work beyond that bound (a
    /// hung disk there), closes the connection. Before, one long commit took the link down.
    private func armTimer(_ id: UInt64, _ timeout: Duration, context: ChannelHandlerContext) {
        pending[id]?.timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout)) {
            guard let p = self.pending[id] else { return }
            let now = NIODeadline.now()
            let heard = now - self.lastFrame <= TimeAmount(self.settings.peerTimeout)
            if heard && now - p.sent < TimeAmount(p.work) {
                self.armTimer(id, timeout, context: context)
                return
            }
            let limit = heard ? p.work : timeout
            self.shutDown(.peerUnreachable(address: self.address, .timeout(limit)), context: context)
        }
    }

    // MARK: - Keepalive and closing

    /// Pings every interval; declares the peer gone when nothing at all (reply, pong) came
    /// back for `peerTimeout`. This is what catches a peer frozen with SIGSTOP: its kernel keeps
    /// the TCP connection open and even accepts bytes, but no frame ever comes back.
    private func scheduleKeepalive(context: ChannelHandlerContext) {
        keepaliveTimer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(settings.keepaliveInterval)) {
            guard case .up = self.phase else { return }
            if NIODeadline.now() - self.lastFrame > TimeAmount(self.settings.peerTimeout) {
                self.shutDown(.peerUnreachable(address: self.address, .timeout(self.settings.peerTimeout)), context: context)
                return
            }
            // A full socket already shows the link is busy; never queue pings behind it.
            if context.channel.isWritable {
                context.writeAndFlush(self.wrapOutboundOut(Frame(.ping, requestID: 0)), promise: nil)
            }
            self.scheduleKeepalive(context: context)
        }
    }

    /// Closes the connection for `reason`, failing everything in flight at once.
    private func shutDown(_ reason: PeerLinkError, context: ChannelHandlerContext) {
        if case .closed = phase { return }
        phase = .closed
        let reason = closeReason ?? reason
        closeReason = reason
        failAll(reason)
        context.channel.close(promise: nil)
    }

    private func failAll(_ reason: PeerLinkError) {
        if wasUp {
            wasUp = false
            settings.linkLost(reason)
        }
        handshakeTimer?.cancel()
        keepaliveTimer?.cancel()
        let failing = pending
        pending = [:]
        for p in failing.values {
            p.timer?.cancel()
            p.reply.fail(reason)
        }
        authenticated.fail(reason)
    }

    private func finish(reason: PeerLinkError) {
        phase = .closed
        closeReason = closeReason ?? reason
        failAll(closeReason!)
        closed.succeed(closeReason!)
    }

    private func write(_ messages: [PeerMessage], context: ChannelHandlerContext) {
        guard !messages.isEmpty else { return }
        for m in messages {
            context.write(wrapOutboundOut(Frame(m, requestID: 0)), promise: nil)
        }
        context.flush()
    }
}
