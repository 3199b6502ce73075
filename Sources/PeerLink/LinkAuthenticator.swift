import PeerProtocol

/// Who this node is on the link: the values both ends of the handshake check.
public struct PeerLinkIdentity: Sendable {
    /// This node's name (config `node`).
    public var node: String
    /// The volume both nodes serve (config `volume`).
    public var volume: String
    /// The cluster secret (`SecretFile.load(path:)` of `peer.secret_file`).
    public var secret: [UInt8]
    /// The peer's name from the config (`peer.node`); any other name is refused. nil accepts any.
    public var peerNode: String?

    public init(node: String, volume: String, secret: [UInt8], peerNode: String? = nil) {
        self.node = node
        self.volume = volume
        self.secret = secret
        self.peerNode = peerNode
    }
}

/// Drives PeerProtocol's `Handshake` for one connection and turns its outcome into link terms:
/// what to send, when the peer is authenticated, and which `PeerLinkError` a failure means.
/// Pure (no I/O), so both connection handlers share it and it is tested without sockets.
struct LinkAuthenticator {
    enum Step: Equatable {
        /// Send these (possibly none) and keep waiting.
        case send([PeerMessage])
        /// Send these, then the link is authenticated with `peerNode`.
        case established(peerNode: String, send: [PeerMessage])
        /// Send `refusal` (if any) and close. `problem` is for this node's log.
        case failed(refusal: PeerMessage?, problem: String, error: PeerLinkError)
    }

    private var handshake: Handshake
    let address: String

    init(role: Handshake.Role, identity: PeerLinkIdentity, address: String) {
        handshake = Handshake(role: role, nodeName: identity.node, volume: identity.volume,
                              secret: identity.secret, expectedPeer: identity.peerNode)
        self.address = address
    }

    var isEstablished: Bool { handshake.isEstablished }

    mutating func start() -> [PeerMessage] { handshake.start() }

    mutating func receive(_ message: PeerMessage) -> Step {
        if case .authFailed(let reason) = message {
            // The peer refused us: its reason says why (untrusted text, shown escaped).
            let reason = sanitize(reason)
            return .failed(refusal: nil, problem: "the peer refused the link: \(reason)",
                           error: Self.classify(reason: reason, detail: "the peer refused the link: \(reason)", address: address))
        }
        do {
            let out = try handshake.receive(message)
            if handshake.isEstablished, let peer = handshake.peerNode {
                return .established(peerNode: peer, send: out)
            }
            return .send(out)
        } catch {
            let problem: String
            if case .authFailed(let p) = error { problem = p } else { problem = error.description }
            let refusal = handshake.refusal
            var reason = ""
            if case .authFailed(let r)? = refusal { reason = r }
            return .failed(refusal: refusal, problem: problem,
                           error: Self.classify(reason: reason, detail: problem, address: address))
        }
    }

    /// Maps a refusal reason (PeerProtocol's `Handshake` vocabulary) to the error an admin reads.
    static func classify(reason: String, detail: String, address: String) -> PeerLinkError {
        if reason == "authentication failed" { return .authenticationRefused(address: address) }
        if reason == "volume mismatch" { return .volumeMismatch(address: address, detail: detail) }
        if reason.hasPrefix("protocol version mismatch") { return .versionMismatch(address: address, detail: detail) }
        return .handshakeRefused(address: address, detail: detail)
    }

    /// The link error for a frame the decoder refused.
    static func frameError(_ error: any Error, address: String) -> PeerLinkError {
        switch error {
        case PeerProtocolError.unsupportedVersion(let v):
            return .versionMismatch(address: address, detail: "the peer's frames carry version \(v), this node speaks \(PeerProtocolVersion.current)")
        case let e as PeerProtocolError:
            return .protocolViolation(address: address, detail: e.description)
        default:
            return .peerUnreachable(address: address, .connectionLost("\(error)"))
        }
    }
}
