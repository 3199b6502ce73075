import NIOCore
import TwinCore
import XCTest
@testable import PeerProtocol

final class MessageTests: XCTestCase {
    func testFixturesCoverEveryMessageType() {
        XCTAssertEqual(Set(Fixtures.messages.map(\.type)), Set(MessageType.allCases))
    }

    func testEveryMessageRoundTripsThroughAFrame() throws {
        for (i, message) in Fixtures.messages.enumerated() {
            var bytes = try Fixtures.frameBytes(message, requestID: UInt64(i) + 1000)
            let frame = try XCTUnwrap(try FrameDecoder.parse(&bytes), "\(message)")
            XCTAssertEqual(bytes.readableBytes, 0)
            XCTAssertEqual(frame.requestID, UInt64(i) + 1000)
            XCTAssertEqual(frame.type, message.type)
            XCTAssertEqual(try frame.message(), message)
        }
    }

    func testLargestWriteChunkRoundTripsAndOneMoreByteIsRefused() throws {
        let path = String(repeating: "d/", count: 2047) + "f"  // 4095 bytes, near the path limit
        let data = ByteBuffer(repeating: 0x5A, count: PeerMessage.maxWriteChunk)
        let message = PeerMessage.write(path: path, stableID: 9, offset: 0, data: data)
        var bytes = try Fixtures.frameBytes(message)
        XCTAssertEqual(try FrameDecoder.parse(&bytes)?.message(), message)

        let tooBig = PeerMessage.write(path: "f", stableID: 9, offset: 0, data: ByteBuffer(repeating: 0, count: PeerMessage.maxWriteChunk + 1))
        XCTAssertThrowsError(try PeerMessage.decode(type: .write, payload: tooBig.encodePayload())) {
            guard case .malformedField("write.data", _)? = $0 as? PeerProtocolError else { return XCTFail("\($0)") }
        }
    }

    /// Fields that parse but that a node must never act on.
    func testHostileFieldValuesAreRefused() {
        let refused: [(PeerMessage, String)] = [
            (.mkdir(parentPath: "", name: "x", mode: 0o755, uid: 0, gid: 0, stableID: 0), "stableID"),
            (.mkdir(parentPath: "", name: "x", mode: 0o755, uid: 0, gid: 0, stableID: StableID.root), "stableID"),
            (.create(parentPath: "", name: "x", mode: 0o1000000, uid: 0, gid: 0, stableID: 5), "mode"),
            (.write(path: "f", stableID: 5, offset: -1, data: ByteBuffer()), "offset"),
            (.write(path: "f", stableID: 5, offset: .max, data: ByteBuffer(bytes: [1])), "offset"),
            (.commit(path: "f", stableID: 5, size: -1, xxh128: Array(repeating: 0, count: 16), mtimeNs: 0), "size"),
            (.rename(fromParent: "", fromName: "a", toParent: "", toName: "b", flags: 8), "flags"),
            (.setxattr(path: "f", name: "trusted.twinfs.id", value: [1], flags: 0), "name"),
            (.setxattr(path: "f", name: "user.x", value: [1], flags: 4), "flags"),
            (.setxattr(path: "f", name: "", value: [1], flags: 0), "name"),
            (.setxattr(path: "f", name: "user.x", value: Array(repeating: 0, count: 65537), flags: 0), "value"),
            (.removexattr(path: "f", name: "trusted.twinfs.id"), "name"),
            (.symlink(parentPath: "", name: "l", target: "", uid: 0, gid: 0, stableID: 5), "target"),
            (.symlink(parentPath: "", name: "l", target: "a\0b", uid: 0, gid: 0, stableID: 5), "target"),
            (.hello(node: "evil\nnode", volume: "v", protocolVersion: 1, nonce: Array(repeating: 0, count: 32)), "node"),
            (.hello(node: "", volume: "v", protocolVersion: 1, nonce: Array(repeating: 0, count: 32)), "node"),
            (.reply(requestID: 1, errno: -1, payload: nil), "errno"),
            (.lock(token: 1, keys: [], leaseMs: 100), "keyCount"),
            (.lock(token: 1, keys: ["1/a", "1/b", "1/c", "1/d", "1/e"], leaseMs: 100), "keyCount"),
            (.lock(token: 1, keys: ["1/a"], leaseMs: 0), "leaseMs"),
            (.pull(stableID: 1), "stableID"),
            (.authFailed(reason: String(repeating: "x", count: 513)), "reason"),
        ]
        for (message, field) in refused {
            XCTAssertThrowsError(try PeerMessage.decode(type: message.type, payload: message.encodePayload()), "\(message)") {
                guard case let .malformedField(name, _)? = $0 as? PeerProtocolError else { return XCTFail("\(message): \($0)") }
                XCTAssertEqual(name, "\(message.type).\(field)")
            }
        }
    }

    func testPathsInMessagesAreValidated() {
        let refused: [(PeerMessage, PeerPath.Problem)] = [
            (.mkdir(parentPath: "../x", name: "y", mode: 0, uid: 0, gid: 0, stableID: 5), .dotDotComponent),
            (.create(parentPath: "", name: "..", mode: 0, uid: 0, gid: 0, stableID: 5), .dotDotComponent),
            (.create(parentPath: "", name: "a/b", mode: 0, uid: 0, gid: 0, stableID: 5), .containsSlash),
            (.mkdir(parentPath: "", name: ".twinfs", mode: 0, uid: 0, gid: 0, stableID: 5), .privateDirectory),
            (.unlink(parentPath: ".twinfs", name: "brick.json"), .privateDirectory),
            (.rename(fromParent: "a", fromName: "b", toParent: "/etc", toName: "passwd", flags: 0), .absolute),
            (.link(path: "", newParent: "a", newName: "b"), .empty),
            (.write(path: "", stableID: 5, offset: 0, data: ByteBuffer()), .empty),
            (.setattr(path: "a//b", changes: AttrUpdate()), .emptyComponent),
            (.removexattr(path: "a/./b", name: "user.x"), .dotComponent),
        ]
        for (message, problem) in refused {
            XCTAssertThrowsError(try PeerMessage.decode(type: message.type, payload: message.encodePayload()), "\(message)") {
                guard case let .pathRejected(p, _)? = $0 as? PeerProtocolError else { return XCTFail("\(message): \($0)") }
                XCTAssertEqual(p, problem, "\(message)")
            }
        }
    }

    func testTrailingBytesAndTruncatedFieldsAreRefused() {
        var payload = PeerMessage.unlink(parentPath: "a", name: "b").encodePayload()
        payload.writeInteger(UInt8(0))
        XCTAssertThrowsError(try PeerMessage.decode(type: .unlink, payload: payload)) {
            guard case .malformedField("unlink", _)? = $0 as? PeerProtocolError else { return XCTFail("\($0)") }
        }
        // A length prefix announcing more than is there: refused without reading past the payload.
        var short = ByteBuffer()
        short.writeInteger(UInt32(4000))
        short.writeString("abc")
        XCTAssertThrowsError(try PeerMessage.decode(type: .removexattr, payload: short)) {
            XCTAssertEqual($0 as? PeerProtocolError, .truncatedPayload(field: "removexattr.path", needed: 4000, available: 3))
        }
        // Every strict prefix of every valid payload fails cleanly.
        for message in Fixtures.messages {
            let full = message.encodePayload()
            for cut in 0..<full.readableBytes {
                XCTAssertThrowsError(try PeerMessage.decode(type: message.type, payload: full.getSlice(at: 0, length: cut)!))
            }
        }
    }

    /// Only removals, renames, attribute, xattr and create changes are guarded: a guarded write
    /// or commit (content goes by stable id and hash) is malformed.
    func testAGuardedChangeThatCannotBeGuardedIsRefused() {
        let expect = [EntryExpectation(path: "a/x", stableID: 1 << 56 | 5, xxh128: [])]
        for change in [PeerMessage.commit(path: "a/x", stableID: 1 << 56 | 5, size: 0, xxh128: Array(repeating: 1, count: 16), mtimeNs: 0),
                       .syncDir(path: "a"), .link(path: "a/x", newParent: "", newName: "y")] {
            let m = PeerMessage.guarded(expect: expect, change: change)
            XCTAssertThrowsError(try PeerMessage.decode(type: .guarded, payload: m.encodePayload()), "\(change.type)") {
                guard case .malformedField("guarded.changeType", _)? = $0 as? PeerProtocolError else { return XCTFail("\($0)") }
            }
        }
    }

    func testSetattrPresenceMaskRejectsUnknownBits() {
        var payload = ByteBuffer()
        payload.writeInteger(UInt32(1)); payload.writeString("a")
        payload.writeInteger(UInt8(0x40))
        XCTAssertThrowsError(try PeerMessage.decode(type: .setattr, payload: payload)) {
            guard case .malformedField("setattr.presence", _)? = $0 as? PeerProtocolError else { return XCTFail("\($0)") }
        }
    }

    func testErrorDescriptionsAreOneEscapedLine() {
        let errors: [PeerProtocolError] = [
            .badMagic(0x4745_5420), .unsupportedVersion(9), .oversizedFrame(length: 1 << 32, limit: Frame.maxPayload),
            .truncatedPayload(field: "frame", needed: 30, available: 2), .unknownMessageType(999),
            .malformedField("mkdir.mode", reason: "x"), .authFailed("y"),
        ]
        for e in errors { XCTAssertFalse(e.description.contains("\n"), e.description) }
        do {
            _ = try PeerPath.validate("evil\nforged log line/\u{0}")
            XCTFail("accepted")
        } catch {
            XCTAssertFalse(error.description.contains("\n"), error.description)
            XCTAssertTrue(error.description.contains("\\n"), error.description)
        }
    }
}
