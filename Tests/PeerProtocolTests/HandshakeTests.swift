import NIOCore
import XCTest
import PeerProtocol

final class HandshakeTests: XCTestCase {
    private let secret = Array("correct horse battery staple".utf8)

    private func node(_ role: Handshake.Role, _ name: String, volume: String = "archive", secret: [UInt8]? = nil,
                      expectedPeer: String? = nil) -> Handshake {
        Handshake(role: role, nodeName: name, volume: volume, secret: secret ?? self.secret, expectedPeer: expectedPeer)
    }

    /// Every message crosses the wire as a frame, so the handshake is tested with the real codec.
    private func wire(_ m: PeerMessage) throws -> PeerMessage {
        var b = try Fixtures.frameBytes(m)
        return try XCTUnwrap(try FrameDecoder.parse(&b)).message()
    }

    /// Runs both sides to the end; returns the first error and which side raised it.
    @discardableResult
    private func run(_ a: inout Handshake, _ b: inout Handshake) throws -> (side: String, error: PeerProtocolError)? {
        var toB = a.start(), toA = b.start()
        while !toA.isEmpty || !toB.isEmpty {
            for m in toB {
                do { toA += try b.receive(try wire(m)) } catch let e as PeerProtocolError { return ("b", e) }
            }
            toB = []
            for m in toA {
                do { toB += try a.receive(try wire(m)) } catch let e as PeerProtocolError { return ("a", e) }
            }
            toA = []
        }
        return nil
    }

    func testSuccess() throws {
        var a = node(.initiator, "pacs-a", expectedPeer: "pacs-b"), b = node(.responder, "pacs-b", expectedPeer: "pacs-a")
        XCTAssertNil(try run(&a, &b))
        XCTAssertTrue(a.isEstablished)
        XCTAssertTrue(b.isEstablished)
        XCTAssertEqual(a.peerNode, "pacs-b")
        XCTAssertEqual(b.peerNode, "pacs-a")
        XCTAssertNotEqual(a.nonce, b.nonce)
    }

    func testWrongSecretIsRefusedByTheInitiator() throws {
        var a = node(.initiator, "pacs-a"), b = node(.responder, "pacs-b", secret: Array("another secret, 16+ bytes".utf8))
        let failure = try XCTUnwrap(try run(&a, &b))
        XCTAssertEqual(failure.side, "a", "the responder proves first, so the initiator notices")
        XCTAssertTrue(failure.error.description.contains("secret"), failure.error.description)
        XCTAssertEqual(a.refusal, .authFailed(reason: "authentication failed"))
        XCTAssertFalse(a.isEstablished || b.isEstablished)
        // The responder reads the refusal and fails too, without answering.
        XCTAssertThrowsError(try b.receive(a.refusal!))
        XCTAssertEqual(b.state, .failed)
        XCTAssertNil(b.refusal)
    }

    /// A client without the secret gets the responder's hello and proof, then sends a guess.
    func testForgedInitiatorProofIsRefusedByTheResponder() throws {
        var b = node(.responder, "pacs-b")
        _ = b.start()
        let reply = try b.receive(.hello(node: "pacs-a", volume: "archive", protocolVersion: PeerProtocolVersion.current, nonce: Handshake.randomNonce()))
        XCTAssertEqual(reply.count, 2)
        guard case .authChallengeResponse(let responderProof) = reply[1] else { return XCTFail("\(reply)") }
        // Neither a guess nor the responder's own proof sent back is accepted.
        var c = b
        XCTAssertThrowsError(try b.receive(.authChallengeResponse(proof: [UInt8](repeating: 1, count: 32))))
        XCTAssertThrowsError(try c.receive(.authChallengeResponse(proof: responderProof)))
        XCTAssertEqual(b.refusal, .authFailed(reason: "authentication failed"))
        XCTAssertFalse(b.isEstablished || c.isEstablished)
    }

    func testWrongVolume() throws {
        var a = node(.initiator, "pacs-a", volume: "archive"), b = node(.responder, "pacs-b", volume: "scratch")
        let failure = try XCTUnwrap(try run(&a, &b))
        XCTAssertEqual(failure.side, "b")
        XCTAssertTrue(failure.error.description.contains("volume"), failure.error.description)
        XCTAssertEqual(b.refusal, .authFailed(reason: "volume mismatch"))
    }

    func testPeerClaimingOurOwnNameOrAnUnexpectedName() throws {
        var a = node(.initiator, "pacs-a"), b = node(.responder, "pacs-a")
        XCTAssertEqual(try XCTUnwrap(try run(&a, &b)).side, "b")
        XCTAssertEqual(b.refusal, .authFailed(reason: "node name clash"))

        var c = node(.initiator, "pacs-c"), d = node(.responder, "pacs-b", expectedPeer: "pacs-a")
        XCTAssertEqual(try XCTUnwrap(try run(&c, &d)).side, "b", "the responder knows its peer")
        XCTAssertEqual(d.refusal, .authFailed(reason: "unexpected node name"))
    }

    func testWrongProtocolVersion() throws {
        var b = node(.responder, "pacs-b")
        _ = b.start()
        XCTAssertThrowsError(try b.receive(.hello(node: "pacs-a", volume: "archive", protocolVersion: PeerProtocolVersion.current + 1,
                                                  nonce: Handshake.randomNonce()))) {
            XCTAssertTrue("\($0)".contains("version \(PeerProtocolVersion.current + 1)"), "\($0)")
        }
        XCTAssertEqual(b.refusal, .authFailed(reason: "protocol version mismatch (this node speaks \(PeerProtocolVersion.current))"))
    }

    func testUnexpectedMessagesBeforeAuthenticationAreRefused() throws {
        var b = node(.responder, "pacs-b")
        _ = b.start()
        XCTAssertThrowsError(try b.receive(.unlink(parentPath: "", name: "x")))
        XCTAssertEqual(b.state, .failed)
        // Skipping the proof: an authOK sent to the responder, or a proof before hello, fail too.
        var c = node(.responder, "pacs-b")
        _ = c.start()
        XCTAssertThrowsError(try c.receive(.authChallengeResponse(proof: Array(repeating: 0, count: 32))))
        var a = node(.initiator, "pacs-a"), d = node(.responder, "pacs-b")
        let hello = a.start()
        let reply = try d.receive(hello[0])
        _ = try a.receive(reply[0])
        XCTAssertThrowsError(try a.receive(.authOK), "authOK without the responder's proof")
    }

    func testEchoedNonceIsRefused() throws {
        var b = node(.responder, "pacs-b")
        _ = b.start()
        XCTAssertThrowsError(try b.receive(.hello(node: "pacs-a", volume: "archive", protocolVersion: PeerProtocolVersion.current, nonce: b.nonce)))
    }

    /// An eavesdropper replays a recorded session's hello and proof against fresh nonces.
    func testReplayedSessionFails() throws {
        var a1 = node(.initiator, "pacs-a"), b1 = node(.responder, "pacs-b")
        let helloA = a1.start()[0]
        let fromB = try b1.receive(helloA)
        _ = try a1.receive(fromB[0])
        let proofA = try a1.receive(fromB[1])[0]
        XCTAssertEqual(try b1.receive(proofA), [.authOK])

        // Impersonating a to a fresh b: b's new nonce makes the recorded proof worthless.
        var b2 = node(.responder, "pacs-b")
        _ = b2.start()
        _ = try b2.receive(helloA)
        XCTAssertThrowsError(try b2.receive(proofA))
        XCTAssertFalse(b2.isEstablished)

        // Impersonating b to a fresh a: same.
        var a2 = node(.initiator, "pacs-a")
        _ = a2.start()
        _ = try a2.receive(fromB[0])
        XCTAssertThrowsError(try a2.receive(fromB[1]))
        XCTAssertFalse(a2.isEstablished)
    }

    /// An attacker without the secret sits between node a and itself: it opens a connection to a
    /// (as "pacs-b") and answers a's own outgoing connection, relaying a's responder proof into it.
    func testReflectedProofFails() throws {
        var outgoing = node(.initiator, "pacs-a")  // a connecting to what it thinks is b
        var incoming = node(.responder, "pacs-a")  // a accepting the attacker
        guard case let .hello(_, _, _, nonceOut) = outgoing.start()[0] else { return XCTFail() }
        let fromIncoming = try incoming.receive(.hello(node: "pacs-b", volume: "archive", protocolVersion: PeerProtocolVersion.current, nonce: nonceOut))
        guard case let .hello(_, _, _, nonceIn) = fromIncoming[0] else { return XCTFail() }
        _ = try outgoing.receive(.hello(node: "pacs-b", volume: "archive", protocolVersion: PeerProtocolVersion.current, nonce: nonceIn))
        XCTAssertThrowsError(try outgoing.receive(fromIncoming[1]), "a must not accept its own proof")
        XCTAssertFalse(outgoing.isEstablished)
    }

    func testConstantTimeEquals() {
        XCTAssertTrue(Handshake.constantTimeEquals([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(Handshake.constantTimeEquals([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(Handshake.constantTimeEquals([1, 2, 3], [1, 2]))
        XCTAssertTrue(Handshake.constantTimeEquals([], []))
    }

    func testRandomNoncesAreFreshAndFullSize() {
        let nonces = (0..<100).map { _ in Handshake.randomNonce() }
        XCTAssertEqual(Set(nonces).count, 100)
        XCTAssertTrue(nonces.allSatisfy { $0.count == 32 })
    }
}
