/// Why a frame or handshake from the peer was refused. Every case closes the link; none can
/// crash the node. Descriptions are one line an admin can act on. Peer-supplied text is shown
/// escaped and shortened, so a hostile peer cannot forge log lines.
public enum PeerProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    case badMagic(UInt32)
    case unsupportedVersion(UInt16)
    case oversizedFrame(length: UInt64, limit: Int)
    /// The frame or a field in it ends before the bytes it announces.
    case truncatedPayload(field: String, needed: Int, available: Int)
    case unknownMessageType(UInt16)
    case malformedField(String, reason: String)
    case pathRejected(PeerPath.Problem, path: String)
    case authFailed(String)

    public var description: String {
        switch self {
        case .badMagic(let m):
            let hex = String(m, radix: 16)
            return "peer sent data that is not a TwinFS frame (magic 0x\(hex)); check that the peer address points at the other TwinFS node's peer port"
        case .unsupportedVersion(let v):
            return "peer speaks TwinFS protocol version \(v), this node speaks \(PeerProtocolVersion.current); install the same TwinFS release on both nodes"
        case .oversizedFrame(let length, let limit):
            return "peer announced a \(length)-byte frame, the limit is \(limit) bytes; the peer is not a compatible TwinFS node or the link is corrupted"
        case .truncatedPayload(let field, let needed, let available):
            return "peer frame is cut short in '\(field)' (needs \(needed) bytes, has \(available)); the link was interrupted or the peer is faulty"
        case .unknownMessageType(let t):
            return "peer sent unknown message type \(t); install the same TwinFS release on both nodes"
        case .malformedField(let field, let reason):
            return "peer sent a malformed '\(field)': \(reason); the peer is faulty or not a TwinFS node"
        case .pathRejected(let problem, let path):
            return "peer sent a path TwinFS refuses (\(problem)): \(path); nothing was written, check the peer node"
        case .authFailed(let reason):
            return "peer authentication failed: \(reason)"
        }
    }

    /// Peer-supplied text made safe to print: escaped, at most `limit` characters.
    static func display(_ text: String, limit: Int = 80) -> String {
        let escaped = String(text.debugDescription.dropFirst().dropLast())
        return escaped.count <= limit ? "\"\(escaped)\"" : "\"\(escaped.prefix(limit))...\""
    }
}

/// The wire protocol version, carried in every frame header and in hello. 4: `guarded` may
/// carry attribute, xattr and create changes (a release speaking 3 would refuse them as
/// malformed mid-catch-up; the version mismatch refuses the link at once instead). 5: a
/// guarded rename also expects the directory it moves into (three expectations).
public enum PeerProtocolVersion {
    public static let current: UInt16 = 5
}
