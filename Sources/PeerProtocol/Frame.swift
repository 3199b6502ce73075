import NIOCore

/// One frame on the peer link. Header (22 bytes, big-endian):
/// magic "TWFS" (4) | version (2) | message type (2) | flags (2) | request id (8) | payload length (4),
/// then the payload. The header is validated in full before the payload is waited for.
public struct Frame: Sendable, Equatable {
    public static let magic: UInt32 = 0x5457_4653  // "TWFS"
    public static let headerSize = 22
    /// The largest payload: one write chunk plus room for its path and fields (a 4 KiB path).
    public static let maxPayload = PeerMessage.maxWriteChunk + 8 * 1024

    public var type: MessageType
    /// Reserved; senders send 0 and receivers ignore them.
    public var flags: UInt16
    /// Chosen by the sender; a `reply` names the request it answers.
    public var requestID: UInt64
    public var payload: ByteBuffer

    public init(type: MessageType, flags: UInt16 = 0, requestID: UInt64, payload: ByteBuffer) {
        self.type = type
        self.flags = flags
        self.requestID = requestID
        self.payload = payload
    }

    public init(_ message: PeerMessage, requestID: UInt64, flags: UInt16 = 0,
                allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.init(type: message.type, flags: flags, requestID: requestID, payload: message.encodePayload(allocator: allocator))
    }

    /// The message in this frame, with every field checked.
    public func message() throws(PeerProtocolError) -> PeerMessage {
        try PeerMessage.decode(type: type, payload: payload)
    }

    /// Appends the frame; refuses a payload the peer would refuse.
    public func write(to out: inout ByteBuffer) throws(PeerProtocolError) {
        guard payload.readableBytes <= Frame.maxPayload else {
            throw .oversizedFrame(length: UInt64(payload.readableBytes), limit: Frame.maxPayload)
        }
        out.reserveCapacity(minimumWritableBytes: Frame.headerSize + payload.readableBytes)
        out.writeInteger(Frame.magic)
        out.writeInteger(PeerProtocolVersion.current)
        out.writeInteger(type.rawValue)
        out.writeInteger(flags)
        out.writeInteger(requestID)
        out.writeInteger(UInt32(payload.readableBytes))
        out.writeImmutableBuffer(payload)
    }
}
