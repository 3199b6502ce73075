import NIOCore

/// Splits the peer's byte stream into frames. All the checking is in `parse`, a pure function
/// tested without a channel; this type only adapts it to NIO. Because a frame's length is
/// checked before its payload is awaited, the handler never buffers more than one frame at the limit.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame

    public let maxPayload: Int

    public init(maxPayload: Int = Frame.maxPayload) {
        self.maxPayload = maxPayload
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.parse(&buffer, maxPayload: maxPayload) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer,
                                    seenEOF: Bool) throws -> DecodingState {
        if try decode(context: context, buffer: &buffer) == .continue { return .continue }
        if seenEOF && buffer.readableBytes > 0 {
            throw PeerProtocolError.truncatedPayload(field: "frame", needed: Self.bytesNeeded(buffer),
                                                     available: buffer.readableBytes)
        }
        return .needMoreData
    }

    /// Takes one frame off the front of `buffer`, or returns nil (consuming nothing) until it has
    /// arrived in full. The header is checked before waiting for the payload, so a bogus length
    /// is refused at once and never buffered or allocated; bytes that cannot start a frame are
    /// refused from the first one. On error `buffer` is left as it was; the link must be closed.
    public static func parse(_ buffer: inout ByteBuffer, maxPayload: Int = Frame.maxPayload) throws(PeerProtocolError) -> Frame? {
        let start = buffer.readerIndex
        let available = buffer.readableBytes
        guard available >= 4 else {
            var partial: UInt32 = 0
            for i in 0..<available {
                let b = buffer.getInteger(at: start + i, as: UInt8.self)!
                partial = partial << 8 | UInt32(b)
                if b != UInt8(truncatingIfNeeded: Frame.magic >> (24 - 8 * i)) { throw .badMagic(partial) }
            }
            return nil
        }
        let magic = buffer.getInteger(at: start, as: UInt32.self)!
        guard magic == Frame.magic else { throw .badMagic(magic) }
        guard available >= Frame.headerSize else { return nil }

        let version = buffer.getInteger(at: start + 4, as: UInt16.self)!
        guard version == PeerProtocolVersion.current else { throw .unsupportedVersion(version) }
        let rawType = buffer.getInteger(at: start + 6, as: UInt16.self)!
        guard let type = MessageType(rawValue: rawType) else { throw .unknownMessageType(rawType) }
        let flags = buffer.getInteger(at: start + 8, as: UInt16.self)!
        let requestID = buffer.getInteger(at: start + 10, as: UInt64.self)!
        let length = buffer.getInteger(at: start + 18, as: UInt32.self)!
        guard UInt64(length) <= UInt64(maxPayload) else { throw .oversizedFrame(length: UInt64(length), limit: maxPayload) }

        guard available - Frame.headerSize >= Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: Int(length))!  // checked just above
        return Frame(type: type, flags: flags, requestID: requestID, payload: payload)
    }

    /// How many bytes the frame at the front of `buffer` needs in all (for the EOF message).
    private static func bytesNeeded(_ buffer: ByteBuffer) -> Int {
        guard let length = buffer.getInteger(at: buffer.readerIndex + 18, as: UInt32.self) else { return Frame.headerSize }
        return Frame.headerSize + Int(length)
    }
}

/// Writes frames; a payload over the limit fails the write instead of reaching the peer.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        try data.write(to: &out)
    }
}
