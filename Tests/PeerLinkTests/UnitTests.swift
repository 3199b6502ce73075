import NIOCore
import PeerProtocol
import TwinCore
import XCTest
@testable import PeerLink

/// The pure parts, without sockets.
final class UnitTests: XCTestCase {
    func testWindowBoundsAndOrder() async throws {
        let window = InFlightWindow(maxRequests: 3, maxBytes: 100)
        try await window.acquire(40)
        try await window.acquire(40)
        XCTAssertEqual(window.snapshot.requests, 2)

        // 40 more would pass 100 bytes: it waits, and so does a small one behind it (FIFO).
        let order = Locked<[Int]>([])
        let big = Task { try await window.acquire(40); order.with { $0.append(1) } }
        let ok = await eventually { window.snapshot.waiting == 1 }
        XCTAssertTrue(ok)
        let small = Task { try await window.acquire(1); order.with { $0.append(2) } }
        let ok2 = await eventually { window.snapshot.waiting == 2 }
        XCTAssertTrue(ok2)
        XCTAssertEqual(order.with { $0 }, [])

        window.release(40)
        try await big.value
        try await small.value
        XCTAssertEqual(order.with { $0 }, [1, 2])
        let s = window.snapshot
        XCTAssertEqual(s.requests, 3)
        XCTAssertEqual(s.bytes, 81)
        XCTAssertLessThanOrEqual(s.peakBytes, 100)
        XCTAssertEqual(s.peakRequests, 3)
        for cost in [40, 40, 1] { window.release(cost) }
        XCTAssertEqual(window.snapshot.requests, 0)

        // Bigger than the whole window: admitted alone.
        try await window.acquire(500)
        window.release(500)
    }

    func testWindowCancellation() async throws {
        let window = InFlightWindow(maxRequests: 1, maxBytes: 10)
        try await window.acquire(5)
        let waiter = Task { try await window.acquire(5) }
        let ok = await eventually { window.snapshot.waiting == 1 }
        XCTAssertTrue(ok)
        waiter.cancel()
        do {
            try await waiter.value
            XCTFail("a cancelled waiter was admitted")
        } catch {}
        XCTAssertEqual(window.snapshot.waiting, 0)
        window.release(5)
        XCTAssertEqual(window.snapshot.requests, 0)
    }

    /// The no-wait admission of `sendNow`: only when the request fits and nobody queues ahead.
    func testWindowTryAcquireNeverJumpsTheQueue() async throws {
        let window = InFlightWindow(maxRequests: 2, maxBytes: 100)
        XCTAssertTrue(window.tryAcquire(60))
        XCTAssertFalse(window.tryAcquire(60), "over the byte limit")
        XCTAssertEqual(window.snapshot.requests, 1)
        XCTAssertTrue(window.tryAcquire(30))
        XCTAssertFalse(window.tryAcquire(1), "over the request limit")
        window.release(30)
        // A waiter for 50 bytes queues; a small request that would fit must not pass it.
        let waiter = Task { try await window.acquire(50) }
        let ok = await eventually { window.snapshot.waiting == 1 }
        XCTAssertTrue(ok)
        XCTAssertFalse(window.tryAcquire(10), "a waiter is ahead")
        window.release(60)
        try await waiter.value
        XCTAssertTrue(window.tryAcquire(10))
        window.release(50)
        window.release(10)
        XCTAssertEqual(window.snapshot.requests, 0)
        // Bigger than the window: admitted alone, as `acquire` does.
        XCTAssertTrue(window.tryAcquire(500))
        XCTAssertFalse(window.tryAcquire(1))
        window.release(500)
    }

    func testBackoffGrowsToTheCapWithJitter() {
        let backoff = ReconnectBackoff(initial: .milliseconds(100), maximum: .seconds(5), multiplier: 2, jitter: 0.25)
        var rng = SeededGenerator(seed: 1)
        let delays = (0..<12).map { backoff.delay(attempt: $0, using: &rng) }
        for (i, d) in delays.enumerated() {
            let full = min(0.1 * Double(1 << i), 5.0)
            XCTAssertLessThanOrEqual(d.seconds, full + 1e-9)
            XCTAssertGreaterThanOrEqual(d.seconds, full * 0.75 - 1e-9)
        }
        XCTAssertEqual(backoff.delay(attempt: 1_000_000, using: &rng).seconds, 5, accuracy: 1.25)
        let exact = ReconnectBackoff(initial: .milliseconds(100), maximum: .seconds(5), jitter: 0)
        XCTAssertEqual(exact.delay(attempt: 0, using: &rng), .milliseconds(100))
        XCTAssertEqual(exact.delay(attempt: 3, using: &rng), .milliseconds(800))
        XCTAssertEqual(exact.delay(attempt: 10, using: &rng), .seconds(5))
    }

    func testAuthenticatorOutcomes() {
        let a = "10.0.0.2:7780"
        var client = LinkAuthenticator(role: .initiator, identity: Fixture.clientIdentity(), address: a)
        var server = LinkAuthenticator(role: .responder, identity: Fixture.serverIdentity(), address: a)
        var toServer = client.start()
        var established: [String] = []
        for _ in 0..<4 where established.count < 2 {
            var toClient: [PeerMessage] = []
            for m in toServer {
                switch server.receive(m) {
                case .send(let out): toClient += out
                case let .established(peer, out): toClient += out; established.append(peer)
                case .failed(_, let problem, _): return XCTFail(problem)
                }
            }
            toServer = []
            for m in toClient {
                switch client.receive(m) {
                case .send(let out): toServer += out
                case let .established(peer, out): toServer += out; established.append(peer)
                case .failed(_, let problem, _): return XCTFail(problem)
                }
            }
        }
        XCTAssertEqual(Set(established), ["pacs-a", "pacs-b"])

        XCTAssertEqual(LinkAuthenticator.classify(reason: "authentication failed", detail: "", address: a),
                       .authenticationRefused(address: a))
        guard case .volumeMismatch = LinkAuthenticator.classify(reason: "volume mismatch", detail: "x", address: a),
              case .versionMismatch = LinkAuthenticator.classify(reason: "protocol version mismatch (this node speaks 1)", detail: "x", address: a),
              case .handshakeRefused = LinkAuthenticator.classify(reason: "node name clash", detail: "x", address: a)
        else { return XCTFail("refusal reasons misclassified") }

        // A request before authentication is refused, and never established.
        var fresh = LinkAuthenticator(role: .responder, identity: Fixture.serverIdentity(), address: a)
        guard case .failed(let refusal?, _, _) = fresh.receive(Fixture.mkdir(1)) else { return XCTFail("request accepted") }
        XCTAssertEqual(refusal.type, .authFailed)
        XCTAssertFalse(fresh.isEstablished)
    }

    func testMessagesReadWell() {
        XCTAssertEqual(formatSeconds(.milliseconds(2500)), "2.5 s")
        XCTAssertEqual(formatSeconds(.seconds(5)), "5 s")
        XCTAssertEqual(formatSeconds(.milliseconds(250)), "0.25 s")
        let a = "10.0.0.2:7780"
        XCTAssertEqual(PeerLinkError.peerUnreachable(address: a, .timeout(.milliseconds(2500))).description,
                       "peer unreachable at 10.0.0.2:7780 (timeout 2.5 s); check that the peer node runs and that this node can reach it on that address")
        XCTAssertTrue(PeerLinkError.authenticationRefused(address: a).description
            .hasPrefix("authentication refused by peer at 10.0.0.2:7780 (wrong cluster secret?)"))
        XCTAssertTrue(PeerLinkError.volumeMismatch(address: a, detail: "d").description.contains("belongs to another volume"))
        XCTAssertTrue(PeerLinkError.versionMismatch(address: a, detail: "d").description.hasPrefix("protocol version mismatch"))
        XCTAssertTrue(PeerLinkError.linkClosed(address: a).description.contains("closed"))
        XCTAssertEqual(formatAddress(host: "::1", port: 7780), "[::1]:7780")
    }

    func testPayloadBoundCoversEncoding() {
        let messages: [PeerMessage] = [
            .ping, Fixture.mkdir(1),
            .write(path: "a/b", stableID: 5, offset: 9, data: ByteBuffer(repeating: 1, count: 1000)),
            .commit(path: "a", stableID: 5, size: 1, xxh128: Array(repeating: 0, count: 16), mtimeNs: 0),
            .setattr(path: "a", changes: AttrUpdate(mode: 1, uid: 2, gid: 3, size: 4, atimeNs: 5, mtimeNs: 6)),
            .setxattr(path: "a", name: "user.x", value: [1, 2], flags: 0),
            .symlink(parentPath: "", name: "l", target: "t", uid: 0, gid: 0, stableID: 9),
            .rename(fromParent: "a", fromName: "b", toParent: "c", toName: "d", flags: 1),
            .reply(requestID: 1, errno: 0, payload: ByteBuffer(bytes: [1])),
        ]
        for m in messages {
            let actual = m.encodePayload().readableBytes
            XCTAssertGreaterThanOrEqual(m.payloadSizeBound, actual, "\(m.type)")
            XCTAssertLessThanOrEqual(m.variablePayloadSize, actual, "\(m.type)")
        }
    }
}
