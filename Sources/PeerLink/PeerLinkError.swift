/// Why a peer-link operation failed, or why the link is down. Each description is one line an
/// administrator can act on (it names the peer's address and the likely fix).
public enum PeerLinkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Why the peer could not be reached.
    public enum Unreachable: Sendable, Equatable, CustomStringConvertible {
        /// Nothing (no reply, no keepalive answer, no handshake) arrived in time: the peer is
        /// stopped, frozen (SIGSTOP), overloaded or cut off.
        case timeout(Duration)
        /// The TCP connection could not be opened (refused, no route...).
        case connectFailed(String)
        /// The connection was closed or reset under the link.
        case connectionLost(String)

        public var description: String {
            switch self {
            case .timeout(let d): return "timeout \(formatSeconds(d))"
            case .connectFailed(let why): return "cannot connect: \(why)"
            case .connectionLost(let why): return "connection lost: \(why)"
            }
        }
    }

    case peerUnreachable(address: String, Unreachable)
    /// The two nodes do not share the same cluster secret.
    case authenticationRefused(address: String)
    case volumeMismatch(address: String, detail: String)
    case versionMismatch(address: String, detail: String)
    /// Any other refused handshake (node name clash, unexpected node name, faulty peer).
    case handshakeRefused(address: String, detail: String)
    /// The peer sent a frame that breaks the protocol after authentication; the link was closed.
    case protocolViolation(address: String, detail: String)
    /// The link was shut down on this node.
    case linkClosed(address: String)
    case messageTooLarge(bytes: Int, limit: Int)
    /// A handshake message or a reply was passed to `send` (a programming error).
    case notARequest(String)
    case cannotListen(address: String, reason: String)
    /// The calling task was cancelled.
    case cancelled

    public var description: String {
        switch self {
        case let .peerUnreachable(address, why):
            return "peer unreachable at \(address) (\(why)); check that the peer node runs and that this node can reach it on that address"
        case let .authenticationRefused(address):
            return "authentication refused by peer at \(address) (wrong cluster secret?); copy the same secret_file to both nodes"
        case let .volumeMismatch(address, detail):
            return "peer at \(address) belongs to another volume (\(detail)); check 'volume' and the [peer] address in both configs"
        case let .versionMismatch(address, detail):
            return "protocol version mismatch with peer at \(address) (\(detail)); install the same TwinFS release on both nodes"
        case let .handshakeRefused(address, detail):
            return "handshake with peer at \(address) refused: \(detail)"
        case let .protocolViolation(address, detail):
            return "peer at \(address) broke the protocol, link closed: \(detail)"
        case let .linkClosed(address):
            return "link to peer at \(address) closed (this node shut it down)"
        case let .messageTooLarge(bytes, limit):
            return "peer message of \(bytes) bytes exceeds the frame limit of \(limit) bytes; split the data into smaller chunks"
        case let .notARequest(type):
            return "a \(type) message cannot be sent as a request (programming error in the caller)"
        case let .cannotListen(address, reason):
            return "cannot listen for the peer on \(address): \(reason); check that 'listen' names an address of this host and that no other process uses the port"
        case .cancelled:
            return "peer request cancelled"
        }
    }

    /// True for the errors that mean "the peer is down" (as opposed to misconfigured or refused).
    public var isUnreachable: Bool {
        if case .peerUnreachable = self { return true }
        return false
    }
}

/// "2.5 s", "0.25 s", "5 s": a duration as an admin reads it (millisecond precision).
func formatSeconds(_ d: Duration) -> String {
    let (s, atto) = d.components
    let ms = s * 1000 + atto / 1_000_000_000_000_000
    guard ms % 1000 != 0 else { return "\(ms / 1000) s" }
    var frac = String(abs(ms % 1000))
    frac = String(repeating: "0", count: 3 - frac.count) + frac
    while frac.hasSuffix("0") { frac.removeLast() }
    return "\(ms < 0 && ms > -1000 ? "-" : "")\(ms / 1000).\(frac) s"
}

/// "host:port", with brackets around an IPv6 host.
func formatAddress(host: String, port: Int) -> String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
}

/// Peer-supplied text made safe for one log line: escaped and shortened.
func sanitize(_ text: String, limit: Int = 120) -> String {
    let escaped = String(text.debugDescription.dropFirst().dropLast())
    return escaped.count <= limit ? escaped : String(escaped.prefix(limit)) + "..."
}
