import NIOCore

/// Writes message fields in wire order: integers big-endian, variable-length fields behind a
/// UInt32 length. Writing never fails; the frame limit is enforced when the frame is written.
struct PayloadWriter {
    private(set) var buffer: ByteBuffer

    init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        buffer = allocator.buffer(capacity: 64)
    }

    mutating func integer<T: FixedWidthInteger>(_ value: T) { buffer.writeInteger(value) }

    mutating func string(_ value: String) {
        buffer.writeInteger(UInt32(truncatingIfNeeded: value.utf8.count))
        buffer.writeString(value)
    }

    mutating func bytes(_ value: [UInt8]) {
        buffer.writeInteger(UInt32(truncatingIfNeeded: value.count))
        buffer.writeBytes(value)
    }

    mutating func bytes(_ value: ByteBuffer) {
        buffer.writeInteger(UInt32(truncatingIfNeeded: value.readableBytes))
        buffer.writeImmutableBuffer(value)
    }

    /// A field whose size the message type fixes (nonce, proof, digest): no length prefix.
    mutating func fixed(_ value: [UInt8]) { buffer.writeBytes(value) }
}

/// Reads message fields from an untrusted payload. Every length is checked against the field's
/// limit and against the bytes actually present before anything is allocated or copied.
struct PayloadReader {
    private var buffer: ByteBuffer
    /// The message being decoded, for error messages ("mkdir.name").
    let message: String

    init(_ buffer: ByteBuffer, message: String) {
        self.buffer = buffer
        self.message = message
    }

    private func label(_ field: String) -> String { "\(message).\(field)" }

    func malformed(_ field: String, _ reason: String) -> PeerProtocolError {
        .malformedField(label(field), reason: reason)
    }

    mutating func integer<T: FixedWidthInteger>(_ field: String, as: T.Type = T.self) throws(PeerProtocolError) -> T {
        guard let v = buffer.readInteger(as: T.self) else {
            throw .truncatedPayload(field: label(field), needed: MemoryLayout<T>.size, available: buffer.readableBytes)
        }
        return v
    }

    /// A size or offset: sent as UInt64, accepted only if it fits an off_t.
    mutating func nonNegative(_ field: String) throws(PeerProtocolError) -> Int64 {
        let v = try integer(field, as: UInt64.self)
        guard v <= UInt64(Int64.max) else { throw malformed(field, "\(v) is out of range") }
        return Int64(v)
    }

    /// Reads a length prefix and checks it before the caller reads that many bytes.
    private mutating func length(_ field: String, max: Int) throws(PeerProtocolError) -> Int {
        let n = Int(try integer(field, as: UInt32.self))
        guard n <= max else { throw malformed(field, "length \(n) exceeds the limit of \(max) bytes") }
        guard n <= buffer.readableBytes else {
            throw .truncatedPayload(field: label(field), needed: n, available: buffer.readableBytes)
        }
        return n
    }

    mutating func fixed(_ field: String, count: Int) throws(PeerProtocolError) -> [UInt8] {
        guard let b = buffer.readBytes(length: count) else {
            throw .truncatedPayload(field: label(field), needed: count, available: buffer.readableBytes)
        }
        return b
    }

    mutating func bytes(_ field: String, max: Int) throws(PeerProtocolError) -> [UInt8] {
        let n = try length(field, max: max)
        return buffer.readBytes(length: n)!  // length() checked n <= readableBytes
    }

    /// Bulk data: a slice of the frame, not a copy.
    mutating func slice(_ field: String, max: Int) throws(PeerProtocolError) -> ByteBuffer {
        let n = try length(field, max: max)
        return buffer.readSlice(length: n)!  // length() checked n <= readableBytes
    }

    /// Text: valid UTF-8, no NUL (it ends up in C strings), `min`...`max` bytes.
    mutating func text(_ field: String, min: Int = 0, max: Int) throws(PeerProtocolError) -> String {
        let b = try bytes(field, max: max)
        guard b.count >= min else { throw malformed(field, "shorter than \(min) bytes") }
        guard !b.contains(0) else { throw malformed(field, "contains a NUL byte") }
        guard let s = String(validating: b, as: UTF8.self) else { throw malformed(field, "not valid UTF-8") }
        return s
    }

    mutating func path(_ field: String, allowRoot: Bool = true) throws(PeerProtocolError) -> String {
        try PeerPath.validate(utf8: bytes(field, max: PeerPath.maxPathBytes), allowRoot: allowRoot)
    }

    /// A directory and a name in it, checked as the joined path too (length, private directory).
    mutating func entry(_ parentField: String, _ nameField: String) throws(PeerProtocolError) -> (String, String) {
        let parent = try path(parentField)
        let name = try PeerPath.validateName(utf8: bytes(nameField, max: PeerPath.maxNameBytes))
        _ = try PeerPath.join(parent, name)
        return (parent, name)
    }

    /// The payload must end exactly after the last field: trailing bytes mean a framing bug.
    func finish() throws(PeerProtocolError) {
        guard buffer.readableBytes == 0 else {
            throw .malformedField(message, reason: "\(buffer.readableBytes) unexpected bytes after the last field")
        }
    }
}
