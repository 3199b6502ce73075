import Foundation
import Logging
import NIOCore
import NIOPosix
import TwinCore

/// The node's local admin channel: a Unix socket (mode 0600, so root only) carrying one JSON
/// request line and one JSON response line per connection.
public struct ControlRequest: Codable, Sendable {
    public var command: String
    public var arguments: [String: String]
    public init(command: String, arguments: [String: String] = [:]) {
        self.command = command
        self.arguments = arguments
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    /// The command's JSON document (e.g. the status object), as raw JSON text.
    public var body: String?
    public init(ok: Bool, error: String? = nil, body: String? = nil) {
        self.ok = ok
        self.error = error
        self.body = body
    }
}

public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) -> ControlResponse
    let path: String
    let group: MultiThreadedEventLoopGroup
    let channel: any Channel
    let log: Logger

    /// Binds the socket (replacing a stale socket file) and starts answering.
    public init(path: String, logger: Logger, handler: @escaping Handler) throws(AdminError) {
        self.path = path
        self.log = logger
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o755])
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try ch.pipeline.syncOperations.addHandler(RequestHandler(handler: handler))
                }
            }
        // Never reachable by others, even briefly, and without touching the process umask
        // (umask is process-wide: a FUSE or replication thread creating an entry meanwhile
        // would get the wrong mode): bind inside a private 0700 directory, make the socket
        // 0600, then rename it into place (which also replaces a stale socket file).
        let privateDir = "\(dir)/.\((path as NSString).lastPathComponent).\(getpid()).tmp"
        let staging = privateDir + "/s"
        rmdir(privateDir)
        unlink(staging)
        guard mkdir(privateDir, 0o700) == 0 || errno == EEXIST, chmod(privateDir, 0o700) == 0 else {
            try? group.syncShutdownGracefully()
            throw AdminError(problem: "cannot create \(privateDir) for the control socket: \(String(cString: strerror(errno)))",
                             fix: "check that \(dir) exists and is writable by root, or change control_socket")
        }
        defer { unlink(staging); rmdir(privateDir) }
        do {
            channel = try bootstrap.bind(unixDomainSocketPath: staging, cleanupExistingSocketFile: true).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw AdminError(problem: "cannot listen on control socket \(path): \(error)",
                             fix: "check that \(dir) exists and is writable by root, or change control_socket")
        }
        guard chmod(staging, 0o600) == 0, rename(staging, path) == 0 else {
            let e = String(cString: strerror(errno))
            try? channel.close().wait()
            try? group.syncShutdownGracefully()
            throw AdminError(problem: "cannot put the control socket at \(path): \(e)",
                             fix: "check that \(dir) is writable by root, or change control_socket")
        }
    }

    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        unlink(path)
    }

    /// Sends one request to a node and waits for its answer.
    public static func request(path: String, _ req: ControlRequest, timeout: TimeAmount = .seconds(30)) throws(AdminError) -> ControlResponse {
        guard FileManager.default.fileExists(atPath: path) else {
            throw AdminError(.notRunning, problem: "no TwinFS node is running (no control socket at \(path))",
                             fix: "start it with `systemctl start twinfs-node@NAME` or `twinfs node --config FILE`")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let promise = group.next().makePromise(of: String.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try ch.pipeline.syncOperations.addHandler(ResponseHandler(promise: promise))
                }
            }
        let ch: any Channel
        do {
            ch = try bootstrap.connect(unixDomainSocketPath: path).wait()
        } catch {
            promise.fail(error)
            throw AdminError(.notRunning, problem: "no TwinFS node is answering on \(path) (\(error))",
                             fix: "start the node (`systemctl start twinfs-node@NAME`); if it runs, check its log")
        }
        do {
            var data = try JSONEncoder().encode(req)
            data.append(0x0A)
            var buf = ch.allocator.buffer(capacity: data.count)
            buf.writeBytes(data)
            try ch.writeAndFlush(buf).wait()
            let scheduled = group.next().scheduleTask(in: timeout) { promise.fail(ChannelError.connectTimeout(timeout)) }
            let line = try promise.futureResult.wait()
            scheduled.cancel()
            try? ch.close().wait()
            return try JSONDecoder().decode(ControlResponse.self, from: Data(line.utf8))
        } catch {
            try? ch.close().wait()
            throw AdminError(.notRunning, problem: "the TwinFS node on \(path) did not answer (\(error))",
                             fix: "check the node's log (journalctl -u twinfs-node@NAME)")
        }
    }
}

/// Splits the stream into newline-terminated lines (at most 1 MiB each).
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let i = buffer.readableBytesView.firstIndex(of: 0x0A) {
            let len = i - buffer.readerIndex
            let line = buffer.readSlice(length: len)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(wrapInboundOut(line))
            return .continue
        }
        if buffer.readableBytes > 1 << 20 { throw ChannelError.inputClosed }
        return .needMoreData
    }
}

final class RequestHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let handler: ControlServer.Handler
    init(handler: @escaping ControlServer.Handler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        let ch = context.channel
        let handler = self.handler
        // Off the event loop: a long command (a split-brain resolution sending whole files,
        // heal info asking the peer) must never hold up `status`, which the HA monitor
        // calls with a 2 s limit.
        Thread.detachNewThread {
            let response: ControlResponse
            if let req = try? JSONDecoder().decode(ControlRequest.self, from: Data(line.readableBytesView)) {
                response = handler(req)
            } else {
                response = ControlResponse(ok: false, error: "malformed request")
            }
            var out = (try? JSONEncoder().encode(response)) ?? Data("{\"ok\":false}".utf8)
            out.append(0x0A)
            var buf = ch.allocator.buffer(capacity: out.count)
            buf.writeBytes(out)
            ch.writeAndFlush(buf).whenComplete { _ in ch.close(promise: nil) }
        }
    }
}

final class ResponseHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<String>
    init(promise: EventLoopPromise<String>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        promise.succeed(String(buffer: unwrapInboundIn(data)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.inputClosed)
    }
}
