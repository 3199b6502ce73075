import Crypto

/// Mutual authentication of the two nodes with the shared cluster secret; a pure state machine
/// (the caller moves the messages). Both sides send `hello` with a fresh nonce, then each proves
/// it holds the secret with
///     HMAC-SHA256(secret, "twinfs-auth-v1" | own role | peer nonce | own nonce | volume | own node | peer node).
/// The proof covers both nonces, so a proof recorded in another session is useless, and both node
/// names, so a proof cannot be reflected back to the node that made it (node A relaying A's
/// own responder proof into a second connection to A). Variable fields are length-prefixed.
///
/// Flow: initiator -> hello; responder -> hello, proof; initiator checks, -> proof;
/// responder checks, -> authOK. After a failure send `refusal` (if any) and close the link.
public struct Handshake: Sendable {
    public enum Role: Sendable {
        case initiator, responder

        var tag: String { self == .initiator ? "initiator" : "responder" }
        var other: Role { self == .initiator ? .responder : .initiator }
    }

    public enum State: Sendable, Equatable {
        case idle, awaitingHello, awaitingProof, awaitingOK, established, failed
    }

    public let role: Role
    public let nodeName: String
    public let volume: String
    /// The peer's name from the config, if known: any other name is refused.
    public let expectedPeer: String?
    /// This side's nonce for this session.
    public let nonce: [UInt8]
    private let secret: [UInt8]

    public private(set) var state: State = .idle
    /// The authenticated peer's node name, once `state == .established`.
    public private(set) var peerNode: String?
    private var peerNonce: [UInt8] = []
    /// After a failure: the `authFailed` to send the peer before closing (nil when the peer refused us).
    public private(set) var refusal: PeerMessage?

    /// `nonce` is for tests only: a live link must always use a fresh random one.
    public init(role: Role, nodeName: String, volume: String, secret: [UInt8], expectedPeer: String? = nil,
                nonce: [UInt8] = Handshake.randomNonce()) {
        self.role = role
        self.nodeName = nodeName
        self.volume = volume
        self.secret = secret
        self.expectedPeer = expectedPeer
        self.nonce = nonce
        state = role == .responder ? .awaitingHello : .idle
    }

    public var isEstablished: Bool { state == .established }

    /// The messages to send when the connection opens: the initiator's hello (a responder waits,
    /// so it needs no start).
    public mutating func start() -> [PeerMessage] {
        guard state == .idle else { return [] }
        state = .awaitingHello
        return [hello]
    }

    /// Feeds one message from the peer; returns the messages to send in answer.
    public mutating func receive(_ message: PeerMessage) throws(PeerProtocolError) -> [PeerMessage] {
        switch (state, message) {
        case (_, .authFailed(let reason)):
            throw fail("the peer refused the link: \(PeerProtocolError.display(reason))", tell: nil)

        case (.awaitingHello, let .hello(node, volume, version, nonce)):
            try check(node: node, volume: volume, version: version, nonce: nonce)
            peerNode = node
            peerNonce = nonce
            state = .awaitingProof
            return role == .responder ? [hello, .authChallengeResponse(proof: ownProof)] : []

        case (.awaitingProof, .authChallengeResponse(let proof)):
            guard Handshake.constantTimeEquals(proof, expectedPeerProof) else {
                throw fail("the peer's proof does not match this node's cluster secret; copy the same secret_file to both nodes",
                           tell: "authentication failed")
            }
            if role == .responder {
                state = .established
                return [.authOK]
            }
            state = .awaitingOK
            return [.authChallengeResponse(proof: ownProof)]

        case (.awaitingOK, .authOK):
            state = .established
            return []

        default:
            throw fail("unexpected \(message.type) message during the handshake (state \(state)); the peer is faulty or not a TwinFS node",
                       tell: "unexpected message")
        }
    }

    // MARK: - Checks

    private var hello: PeerMessage {
        .hello(node: nodeName, volume: volume, protocolVersion: PeerProtocolVersion.current, nonce: nonce)
    }

    private mutating func check(node: String, volume: String, version: UInt16, nonce: [UInt8]) throws(PeerProtocolError) {
        guard version == PeerProtocolVersion.current else {
            throw fail("the peer speaks protocol version \(version), this node \(PeerProtocolVersion.current); install the same TwinFS release on both nodes",
                       tell: "protocol version mismatch (this node speaks \(PeerProtocolVersion.current))")
        }
        // Byte comparison: String == treats Unicode-equivalent names as equal.
        guard volume.utf8.elementsEqual(self.volume.utf8) else {
            throw fail("the peer serves volume \(PeerProtocolError.display(volume)), this node serves '\(self.volume)'; check 'volume' and the peer address in both configs",
                       tell: "volume mismatch")
        }
        guard !node.utf8.elementsEqual(nodeName.utf8) else {
            throw fail("the peer claims this node's own name '\(nodeName)'; give the two nodes different 'node' names, or fix a peer address that points back at this node",
                       tell: "node name clash")
        }
        if let expectedPeer, !node.utf8.elementsEqual(expectedPeer.utf8) {
            throw fail("the peer calls itself \(PeerProtocolError.display(node)), the config expects '\(expectedPeer)'; correct [peer] node or address",
                       tell: "unexpected node name")
        }
        guard nonce.count == PeerMessage.nonceSize, nonce != self.nonce else {
            throw fail("the peer sent an invalid or echoed nonce; the peer is faulty or something is replaying this node's traffic",
                       tell: "invalid nonce")
        }
    }

    private mutating func fail(_ problem: String, tell reason: String?) -> PeerProtocolError {
        state = .failed
        refusal = reason.map { .authFailed(reason: $0) }
        return .authFailed(problem)
    }

    // MARK: - Proofs

    private var ownProof: [UInt8] {
        Handshake.proof(secret: secret, role: role, peerNonce: peerNonce, ownNonce: nonce,
                        volume: volume, ownNode: nodeName, peerNode: peerNode ?? "")
    }

    private var expectedPeerProof: [UInt8] {
        Handshake.proof(secret: secret, role: role.other, peerNonce: nonce, ownNonce: peerNonce,
                        volume: volume, ownNode: peerNode ?? "", peerNode: nodeName)
    }

    static func proof(secret: [UInt8], role: Role, peerNonce: [UInt8], ownNonce: [UInt8],
                      volume: String, ownNode: String, peerNode: String) -> [UInt8] {
        var mac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        func field(_ bytes: some Collection<UInt8>) {
            mac.update(data: [UInt8(truncatingIfNeeded: bytes.count >> 8), UInt8(truncatingIfNeeded: bytes.count)])
            mac.update(data: Array(bytes))
        }
        field("twinfs-auth-v1".utf8)
        field(role.tag.utf8)
        field(peerNonce)
        field(ownNonce)
        field(volume.utf8)
        field(ownNode.utf8)
        field(peerNode.utf8)
        return Array(mac.finalize())
    }

    /// Compares without an early exit, so timing does not reveal how many leading bytes matched.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    /// 32 bytes from the system's cryptographic generator (getrandom on Linux).
    public static func randomNonce() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<PeerMessage.nonceSize).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
    }
}
