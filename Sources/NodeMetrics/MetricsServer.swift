import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import TwinCore

/// The Prometheus endpoint (`metrics_listen` in the config): `GET /metrics` answers the text
/// exposition format. `refresh` updates the gauges (what is owed, heal, scrub, link) first, so
/// a scrape sees the state of that moment; the counters and histograms update as requests run.
public final class MetricsServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let channel: any Channel
    public let port: Int

    public init(host: String, port: Int, registry: PrometheusCollectorRegistry,
                refresh: @escaping @Sendable () -> Void) throws(AdminError) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.pipeline.configureHTTPServerPipeline().flatMap {
                    ch.pipeline.addHandler(MetricsHandler(registry: registry, refresh: refresh))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw AdminError(problem: "cannot listen for Prometheus on \(host):\(port): \(error)",
                             fix: "check `metrics_listen` in the config and that no other process uses that port")
        }
        self.port = channel.localAddress?.port ?? port
    }

    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

final class MetricsHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let registry: PrometheusCollectorRegistry
    let refresh: @Sendable () -> Void

    init(registry: PrometheusCollectorRegistry, refresh: @escaping @Sendable () -> Void) {
        self.registry = registry
        self.refresh = refresh
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let found = head.method == .GET && (head.uri == "/metrics" || head.uri.hasPrefix("/metrics?"))
        let body: [UInt8]
        if found {
            refresh()
            body = registry.emitToBuffer()
        } else {
            body = Array("TwinFS: the metrics are at /metrics\n".utf8)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let ch = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in ch.close(promise: nil) }
    }
}
