import NIOCore
import NIOPosix
import PeerProtocol
import XCTest
@testable import PeerLink

/// A seeded generator (SplitMix64) so every random case is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) } }
}

final class FuzzTests: XCTestCase {
    enum Attack: CaseIterable {
        case randomBytes, randomAfterMagic, truncatedFrame, oversizedLength, badVersion, unknownType
        case validHeaderRandomPayload, requestsBeforeAuth, helloThenRequests, wrongVolumeHello

        /// Attacks whose bytes the decoder itself must refuse (counted as malformed).
        var isMalformed: Bool {
            switch self {
            case .requestsBeforeAuth, .helloThenRequests, .wrongVolumeHello: return false
            default: return true
            }
        }
    }

    static let requests: [PeerMessage] = [
        Fixture.mkdir(9),
        .create(parentPath: "", name: "x.dcm", mode: 0o100644, uid: 1, gid: 1, stableID: 77),
        .write(path: "x.dcm", stableID: 77, offset: 0, data: ByteBuffer(bytes: [1, 2, 3])),
        .unlink(parentPath: "", name: "x.dcm"),
        .rename(fromParent: "", fromName: "a", toParent: "", toName: "b", flags: 0),
        .ping,
        .reply(requestID: 1, errno: 0, payload: nil),
        .authOK,
        .authChallengeResponse(proof: Array(repeating: 1, count: 32)),
    ]

    static func header(version: UInt16 = PeerProtocolVersion.current, type: UInt16, requestID: UInt64, length: UInt32) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(Frame.magic)
        b.writeInteger(version)
        b.writeInteger(type)
        b.writeInteger(UInt16(0))
        b.writeInteger(requestID)
        b.writeInteger(length)
        return b
    }

    static func bytes(for attack: Attack, rng: inout SeededGenerator) throws -> ByteBuffer {
        switch attack {
        case .randomBytes:
            var b = ByteBuffer(bytes: rng.bytes(Int.random(in: 1...300, using: &rng)))
            if b.getInteger(at: 0, as: UInt8.self) == 0x54 { b.setInteger(UInt8(0), at: 0) }  // not "T"
            return b
        case .randomAfterMagic:
            var b = ByteBuffer()
            b.writeInteger(Frame.magic)
            b.writeBytes(rng.bytes(Int.random(in: 0...300, using: &rng)))
            return b
        case .truncatedFrame:
            let whole = try frameBytes(requests.randomElement(using: &rng)!, requestID: rng.next())
            return whole.getSlice(at: 0, length: Int.random(in: 1..<whole.readableBytes, using: &rng))!
        case .oversizedLength:
            let length = UInt32.random(in: UInt32(Frame.maxPayload + 1)...UInt32.max, using: &rng)
            var b = header(type: MessageType.allCases.randomElement(using: &rng)!.rawValue, requestID: rng.next(), length: length)
            b.writeBytes(rng.bytes(Int.random(in: 0...64, using: &rng)))
            return b
        case .badVersion:
            var version = UInt16.random(in: 0...UInt16.max, using: &rng)
            if version == PeerProtocolVersion.current { version = 0 }
            var b = header(version: version, type: MessageType.hello.rawValue, requestID: 0, length: 8)
            b.writeBytes(rng.bytes(8))
            return b
        case .unknownType:
            var type = UInt16.random(in: 0...UInt16.max, using: &rng)
            while MessageType(rawValue: type) != nil { type = UInt16.random(in: 0...UInt16.max, using: &rng) }
            return header(type: type, requestID: rng.next(), length: 0)
        case .validHeaderRandomPayload:
            let type = MessageType.allCases.randomElement(using: &rng)!
            // At least one byte: an empty payload is a valid ping/pong/authOK. Random bytes that
            // happen to decode (one byte 0 or 1 is a valid healInfo) get a trailing byte, which
            // no decoder accepts: the case stays malformed whatever message types exist.
            var payload = rng.bytes(Int.random(in: 1...400, using: &rng))
            if (try? PeerMessage.decode(type: type, payload: ByteBuffer(bytes: payload))) != nil { payload.append(0) }
            var b = header(type: type.rawValue, requestID: rng.next(), length: UInt32(payload.count))
            b.writeBytes(payload)
            return b
        case .requestsBeforeAuth:
            var b = ByteBuffer()
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                var f = try frameBytes(requests.randomElement(using: &rng)!, requestID: rng.next())
                b.writeBuffer(&f)
            }
            return b
        case .helloThenRequests:
            var b = try frameBytes(.hello(node: "pacs-b", volume: "archive", protocolVersion: PeerProtocolVersion.current,
                                          nonce: rng.bytes(32)))
            var f = try frameBytes(requests.randomElement(using: &rng)!, requestID: rng.next())
            b.writeBuffer(&f)
            return b
        case .wrongVolumeHello:
            return try frameBytes(.hello(node: "pacs-b", volume: "other-volume", protocolVersion: PeerProtocolVersion.current,
                                         nonce: rng.bytes(32)))
        }
    }

    // 6. 2,000 hostile connections, then authenticated peers sending garbage, then a real client.
    func testListenerSurvivesGarbage() async throws {
        try await withHarness { h in
            let recorder = Recorder()
            let listener = try await h.listener(configure: { $0.maxConnections = 64 }) { m, id in
                recorder.begin(m, id)
                defer { recorder.end() }
                return .reply(requestID: 0, errno: 0, payload: nil)
            }
            var rng = SeededGenerator(seed: 0x7717_F5)
            let total = 2000
            var cases: [(Attack, ByteBuffer)] = []
            for i in 0..<total {
                let attack = Attack.allCases[i % Attack.allCases.count]
                cases.append((attack, try Self.bytes(for: attack, rng: &rng)))
            }
            let start = ContinuousClock.now
            var notClosed = 0
            let batch = 16
            for first in stride(from: 0, to: total, by: batch) {
                let slice = cases[first..<min(first + batch, total)]
                notClosed += try await withThrowingTaskGroup(of: Int.self) { group in
                    for (_, bytes) in slice {
                        group.addTask { try await throwBytes(bytes, port: listener.port, group: h.group) ? 0 : 1 }
                    }
                    return try await group.reduce(0, +)
                }
            }
            XCTAssertEqual(notClosed, 0, "the listener left hostile connections open")
            let malformedCases = cases.filter { $0.0.isMalformed }.count
            let settled = await eventually { listener.statistics.refusedConnections >= total && listener.statistics.activeConnections == 0 }
            var stats = listener.statistics
            print("fuzz: \(total) connections in \(ContinuousClock.now - start): refused \(stats.refusedConnections), malformed \(stats.malformedFrames) (\(malformedCases) malformed cases)")
            XCTAssertTrue(settled, "\(stats)")
            XCTAssertEqual(stats.refusedConnections, total)
            XCTAssertEqual(stats.malformedFrames, malformedCases)
            XCTAssertEqual(stats.authenticatedConnections, 0)
            XCTAssertTrue(recorder.messages.isEmpty, "the handler saw unauthenticated messages: \(recorder.messages.prefix(3))")

            // Authenticated peers that then send broken or out-of-place frames are cut off.
            let garbageTypes: [MessageType] = [.mkdir, .create, .write, .commit, .unlink, .rename, .setattr, .symlink, .hello]
            let afterAuth = 40
            for i in 0..<afterAuth {
                let channel = try await rawFrameChannel(port: listener.port, group: h.group)
                let timer = channel.channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.channel.close(promise: nil) }
                try await channel.executeThenClose { inbound, outbound in
                    var iterator = try await authenticate(inbound.makeAsyncIterator(), outbound, identity: Fixture.clientIdentity())
                    let frame: Frame
                    if i % 4 == 3 {
                        frame = Frame(.reply(requestID: 5, errno: 0, payload: nil), requestID: 5)  // valid, but not a request
                    } else {
                        let payload = ByteBuffer(bytes: rng.bytes(Int.random(in: 1...400, using: &rng)))
                        frame = Frame(type: garbageTypes.randomElement(using: &rng)!, requestID: rng.next(), payload: payload)
                    }
                    try await outbound.write(frame)
                    do {
                        while try await iterator.next() != nil {}
                    } catch {}
                }
                timer.cancel()
            }
            let cut = await eventually { listener.statistics.malformedFrames == malformedCases + afterAuth }
            stats = listener.statistics
            XCTAssertTrue(cut, "\(stats)")
            XCTAssertEqual(stats.authenticatedConnections, afterAuth)
            XCTAssertTrue(recorder.messages.isEmpty, "the handler saw broken messages: \(recorder.messages.prefix(3))")

            // And the listener still serves a legitimate peer.
            let client = h.client(port: listener.port)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK, "state is \(client.state)")
            var sent: [PeerMessage] = []
            for n in 0..<10 {
                let m = Fixture.mkdir(n)
                sent.append(m)
                let reply = try await client.send(m)
                guard case .reply(_, 0, _) = reply else { return XCTFail("\(reply)") }
            }
            XCTAssertEqual(recorder.messages, sent)
            print("fuzz: total \(ContinuousClock.now - start)")
        }
    }
}
