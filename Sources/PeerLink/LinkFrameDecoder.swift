import NIOCore
import PeerProtocol

/// The largest payload accepted before the link is authenticated. Handshake messages are small
/// (a hello is under 200 bytes, a refusal reason at most 512), so an unauthenticated
/// connection can make this node buffer about 1 KiB, not a 4 MiB write frame.
let handshakePayloadLimit = 1024

/// The payload limit of one connection's decoder, raised by the connection handler once the
/// peer is authenticated. Used only on the channel's event loop.
final class FrameLimit {
    var maxPayload = handshakePayloadLimit
}

/// PeerProtocol's frame parsing (`FrameDecoder.parse`, all checks included) with the limit
/// taken from `limit` at each frame. The handler raises it synchronously when it sees the
/// last handshake frame, so the next frame in the same read already gets the full limit.
struct LinkFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = Frame

    let limit: FrameLimit

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try FrameDecoder.parse(&buffer, maxPayload: limit.maxPayload) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if try decode(context: context, buffer: &buffer) == .continue { return .continue }
        if seenEOF && buffer.readableBytes > 0 {
            let length = buffer.getInteger(at: buffer.readerIndex + 18, as: UInt32.self)
            throw PeerProtocolError.truncatedPayload(field: "frame",
                                                     needed: Frame.headerSize + Int(length ?? 0),
                                                     available: buffer.readableBytes)
        }
        return .needMoreData
    }
}

/// The handlers every link connection starts with: frame decoding (with `limit`) and encoding.
func addFrameCodec(to channel: any Channel, limit: FrameLimit) throws {
    let sync = channel.pipeline.syncOperations
    try sync.addHandler(ByteToMessageHandler(LinkFrameDecoder(limit: limit),
                                             maximumBufferSize: Frame.headerSize + Frame.maxPayload))
    try sync.addHandler(MessageToByteHandler(FrameEncoder()))
}

/// How long a refused connection may take to send its refusal before it is closed anyway.
let refusalGrace = TimeAmount.seconds(1)
