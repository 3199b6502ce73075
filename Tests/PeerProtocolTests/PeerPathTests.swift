import XCTest
import PeerProtocol

final class PeerPathTests: XCTestCase {
    private func problem(_ body: () throws(PeerProtocolError) -> String) -> PeerPath.Problem? {
        do {
            _ = try body()
            return nil
        } catch {
            guard case .pathRejected(let p, _) = error else { XCTFail("\(error)"); return nil }
            return p
        }
    }

    func testPathTable() {
        let long = String(repeating: "x", count: 255)
        let deep = (0..<100).map { "level\($0)" }.joined(separator: "/")
        let table: [(String, PeerPath.Problem?)] = [
            ("../x", .dotDotComponent),
            ("/abs", .absolute),
            ("/", .absolute),
            ("a/../b", .dotDotComponent),
            ("a/..", .dotDotComponent),
            ("..", .dotDotComponent),
            ("a//b", .emptyComponent),
            ("a/", .emptyComponent),
            ("./a", .dotComponent),
            ("a/.", .dotComponent),
            (".twinfs", .privateDirectory),
            (".twinfs/x", .privateDirectory),
            (".twinfs/", .privateDirectory),
            ("a/.twinfs/x", nil),  // only the brick's own private directory is off limits
            (".twinfsx", nil),
            ("a/b\u{0}c", .containsNUL),
            ("\u{0}", .containsNUL),
            (long, nil),
            (long + "x", .componentTooLong),
            ("a/" + long + "x" + "/b", .componentTooLong),
            (deep, nil),
            (String(repeating: "abcdefg/", count: 512) + "x", .tooLong),  // 4097 bytes
            (String(repeating: "abcdefg/", count: 511) + "abcdefg", nil),  // 4095 bytes
            ("Patienten/Müller/Röntgen 東京 🩻.dcm", nil),
            ("...", nil),
            ("..a", nil),
            (" ", nil),
            ("", nil),  // the brick root
        ]
        for (path, expected) in table {
            XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validate(path) }, expected, path.debugDescription)
        }
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validate("", allowRoot: false) }, .empty)
    }

    func testNameTable() {
        let table: [(String, PeerPath.Problem?)] = [
            ("IMG0001.dcm", nil),
            ("Röntgen 東京 🩻", nil),
            (".twinfs", nil),  // a name alone is fine; `join` catches it at the brick root
            ("", .empty),
            (".", .dotComponent),
            ("..", .dotDotComponent),
            ("a/b", .containsSlash),
            ("/", .containsSlash),
            ("a\u{0}", .containsNUL),
            (String(repeating: "é", count: 128), .componentTooLong),  // 256 bytes, 128 characters
        ]
        for (name, expected) in table {
            XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validateName(name) }, expected, name.debugDescription)
        }
    }

    func testJoin() throws {
        XCTAssertEqual(try PeerPath.join("", "a"), "a")
        XCTAssertEqual(try PeerPath.join("a/b", "c"), "a/b/c")
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.join("", ".twinfs") }, .privateDirectory)
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.join("a", "..") }, .dotDotComponent)
        let parent = String(repeating: "abcdefg/", count: 511) + "abcdefg"  // 4095 bytes
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.join(parent, "x") }, .tooLong)
    }

    func testInvalidUTF8AndEquivalentSpellings() {
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validate(utf8: [0x61, 0xFF, 0x62]) }, .invalidUTF8)
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validate(utf8: [0xC0, 0xAE, 0xC0, 0xAE]) }, .invalidUTF8,
                       "overlong '..' must not pass")
        XCTAssertEqual(problem { () throws(PeerProtocolError) in try PeerPath.validateName(utf8: [0xED, 0xA0, 0x80]) }, .invalidUTF8,
                       "surrogate")
        // Precomposed and decomposed "é" are equal Swift strings but different names on disk: both kept as sent.
        XCTAssertEqual(Array(try PeerPath.validate("e\u{301}").utf8), [0x65, 0xCC, 0x81])
        XCTAssertEqual(Array(try PeerPath.validate("\u{E9}").utf8), [0xC3, 0xA9])
        // ".twinfs" with a combining mark is another name, not the private directory.
        XCTAssertNil(problem { () throws(PeerProtocolError) in try PeerPath.validate(".twinfs\u{301}/x") })
    }
}
