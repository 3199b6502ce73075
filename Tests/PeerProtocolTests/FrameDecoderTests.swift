import NIOCore
import XCTest
import PeerProtocol

final class FrameDecoderTests: XCTestCase {
    /// Parses with the checks every caller relies on: nil consumes nothing, a frame never exceeds
    /// the limit, and a wait never asks for more than the limit.
    private func parseChecked(_ buffer: inout ByteBuffer) throws(PeerProtocolError) -> Frame? {
        let before = buffer
        let frame = try FrameDecoder.parse(&buffer)
        if let frame {
            XCTAssertLessThanOrEqual(frame.payload.readableBytes, Frame.maxPayload)
        } else {
            XCTAssertEqual(buffer, before)
            XCTAssertEqual(buffer.readerIndex, before.readerIndex)
            if let length = buffer.getInteger(at: buffer.readerIndex + 18, as: UInt32.self) {
                XCTAssertLessThanOrEqual(Int(length), Frame.maxPayload)
            }
        }
        return frame
    }

    func testEveryTruncationPointWaitsForMoreData() throws {
        for message in Fixtures.messages {
            let full = try Fixtures.frameBytes(message)
            for cut in 0..<full.readableBytes {
                var prefix = full.getSlice(at: 0, length: cut)!
                XCTAssertNil(try parseChecked(&prefix), "\(message) cut at \(cut)")
            }
            var whole = full
            XCTAssertEqual(try parseChecked(&whole)?.message(), message)
        }
    }

    func testByteAtATimeStreamYieldsEveryFrameInOrder() throws {
        var stream = ByteBuffer()
        for (i, m) in Fixtures.messages.enumerated() { try Frame(m, requestID: UInt64(i)).write(to: &stream) }
        var cumulation = ByteBuffer()
        var received: [PeerMessage] = []
        while let byte = stream.readInteger(as: UInt8.self) {
            cumulation.writeInteger(byte)
            while let frame = try parseChecked(&cumulation) {
                XCTAssertEqual(frame.requestID, UInt64(received.count))
                received.append(try frame.message())
            }
        }
        XCTAssertEqual(received, Fixtures.messages)
        XCTAssertEqual(cumulation.readableBytes, 0)
    }

    func testHeaderErrorsAreReportedBeforeThePayloadArrives() {
        let cases: [(ByteBuffer, PeerProtocolError)] = [
            (Fixtures.header(magic: 0x4745_5420, type: 5, length: 0), .badMagic(0x4745_5420)),
            (Fixtures.header(version: PeerProtocolVersion.current + 1, type: 5, length: 0), .unsupportedVersion(PeerProtocolVersion.current + 1)),
            (Fixtures.header(type: 0, length: 0), .unknownMessageType(0)),
            (Fixtures.header(type: 15, length: 10), .unknownMessageType(15)),
            (Fixtures.header(type: 18, length: .max), .oversizedFrame(length: UInt64(UInt32.max), limit: Frame.maxPayload)),
            (Fixtures.header(type: 18, length: UInt32(Frame.maxPayload + 1)),
             .oversizedFrame(length: UInt64(Frame.maxPayload + 1), limit: Frame.maxPayload)),
        ]
        for (header, expected) in cases {
            var b = header  // the header only: no payload bytes follow
            XCTAssertThrowsError(try FrameDecoder.parse(&b)) { XCTAssertEqual($0 as? PeerProtocolError, expected) }
        }
        var exactlyMax = Fixtures.header(type: 18, length: UInt32(Frame.maxPayload))
        XCTAssertNil(try FrameDecoder.parse(&exactlyMax), "a frame at the limit waits for its payload")
    }

    func testForeignBytesAreRefusedFromTheFirstByte() {
        var http = ByteBuffer(string: "G")
        XCTAssertThrowsError(try FrameDecoder.parse(&http)) { XCTAssertEqual($0 as? PeerProtocolError, .badMagic(0x47)) }
        var partial = ByteBuffer(string: "TWF")
        XCTAssertNil(try FrameDecoder.parse(&partial))
        var tls = ByteBuffer(bytes: [0x16, 0x03, 0x01])
        XCTAssertThrowsError(try FrameDecoder.parse(&tls))
    }

    func testSmallerLimitIsHonoured() {
        var b = Fixtures.header(type: 18, length: 1025)
        XCTAssertThrowsError(try FrameDecoder.parse(&b, maxPayload: 1024)) {
            XCTAssertEqual($0 as? PeerProtocolError, .oversizedFrame(length: 1025, limit: 1024))
        }
    }

    func testEncoderRefusesOversizedPayload() throws {
        let frame = Frame(type: .write, requestID: 1, payload: ByteBuffer(repeating: 0, count: Frame.maxPayload + 1))
        var out = ByteBuffer()
        XCTAssertThrowsError(try FrameEncoder().encode(data: frame, out: &out)) {
            guard case .oversizedFrame? = $0 as? PeerProtocolError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(out.readableBytes, 0)
        let ok = Frame(.ping, requestID: 77)
        try FrameEncoder().encode(data: ok, out: &out)
        XCTAssertEqual(out.readableBytes, Frame.headerSize)
        XCTAssertEqual(try FrameDecoder.parse(&out), ok)
    }

    // MARK: - Random input (seeded, reproducible)

    func testRandomBytesThrowOrWait() {
        var rng = SeededGenerator(seed: 0x7477_6673)
        var outcomes = (frames: 0, waits: 0, errors: 0)
        for i in 0..<20_000 {
            var bytes = rng.bytes(Int.random(in: 0...64, using: &rng))
            // Half the inputs start with the magic, so the rest of the header gets exercised too.
            if i % 2 == 0 { bytes = [0x54, 0x57, 0x46, 0x53] + bytes }
            var b = ByteBuffer(bytes: bytes)
            do {
                if let frame = try parseChecked(&b) {
                    outcomes.frames += 1
                    _ = try? frame.message()
                } else {
                    outcomes.waits += 1
                }
            } catch {
                outcomes.errors += 1
            }
        }
        XCTAssertGreaterThan(outcomes.errors, 10_000)
        XCTAssertGreaterThan(outcomes.waits, 100)
    }

    func testValidHeadersWithRandomPayloadsDecodeOrThrowTyped() throws {
        var rng = SeededGenerator(seed: 42)
        let types = MessageType.allCases.map(\.rawValue)
        var decoded = 0
        for _ in 0..<20_000 {
            let payload = rng.bytes(Int.random(in: 0...96, using: &rng))
            let type = types.randomElement(using: &rng)!
            var b = Fixtures.header(type: type, requestID: rng.next(), length: UInt32(payload.count))
            b.writeBytes(payload)
            let frame = try XCTUnwrap(try parseChecked(&b))
            XCTAssertEqual(b.readableBytes, 0)
            do {
                let message = try frame.message()
                decoded += 1
                // Whatever decodes re-encodes to the very same bytes: no field is silently altered.
                XCTAssertEqual(message.encodePayload(), frame.payload, "\(message)")
            } catch {
                _ = error.description  // typed by construction; must also describe itself
            }
        }
        XCTAssertGreaterThan(decoded, 0, "empty-payload types at least decode")
    }

    func testMutatedValidFramesNeverCrash() throws {
        var rng = SeededGenerator(seed: 0xD1C0)
        let frames = try Fixtures.messages.map { try Fixtures.frameBytes($0) }
        for _ in 0..<20_000 {
            var bytes = Array(buffer: frames.randomElement(using: &rng)!)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.remove(at: at)
                default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                }
                if bytes.isEmpty { break }
            }
            var b = ByteBuffer(bytes: bytes)
            if let frame = try? parseChecked(&b), let message = try? frame.message() {
                XCTAssertEqual(message.encodePayload(), frame.payload)
            }
        }
    }
}
