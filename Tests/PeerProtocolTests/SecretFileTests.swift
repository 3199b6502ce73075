import Foundation
import XCTest
import PeerProtocol
import TwinCore

final class SecretFileTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "twinfs-secret-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func file(_ content: [UInt8], mode: mode_t) -> String {
        let path = dir + "/secret"
        _ = FileManager.default.createFile(atPath: path, contents: Data(content))
        chmod(path, mode)
        return path
    }

    func testLoadsPrivateFileAndDropsTrailingNewline() throws {
        let key = Array("0123456789abcdef0123456789abcdef".utf8)
        XCTAssertEqual(try SecretFile.load(path: file(key, mode: 0o600)), key)
        XCTAssertEqual(try SecretFile.load(path: file(key + [0x0A], mode: 0o640)), key)
        XCTAssertEqual(try SecretFile.load(path: file(key + [0x0D, 0x0A], mode: 0o400)), key)
        let binary: [UInt8] = (0..<32).map { UInt8($0 * 7) }
        XCTAssertEqual(try SecretFile.load(path: file(binary, mode: 0o600)), binary)
    }

    private func refusal(_ path: String) -> AdminError? {
        do {
            _ = try SecretFile.load(path: path)
            return nil
        } catch {
            return error
        }
    }

    func testRefusesWorldReadableFile() throws {
        let path = file(Array(repeating: 0x41, count: 32), mode: 0o644)
        let e = try XCTUnwrap(refusal(path))
        XCTAssertTrue(e.problem.contains("readable"), e.description)
        XCTAssertTrue(e.fix.contains("chmod 600 \(path)"), e.description)
        XCTAssertFalse(e.description.contains("\n"))
        XCTAssertNotNil(refusal(file(Array(repeating: 0x41, count: 32), mode: 0o602)), "world-writable")
    }

    func testRefusesShortFile() throws {
        let e = try XCTUnwrap(refusal(file(Array("short\n".utf8), mode: 0o600)))
        XCTAssertTrue(e.problem.contains("5 bytes"), e.description)
        XCTAssertTrue(e.fix.contains("/dev/urandom"), e.description)
        XCTAssertNotNil(refusal(file(Array(repeating: 0x41, count: 15), mode: 0o600)))
    }

    func testRefusesMissingFileDirectoryAndHugeFile() throws {
        XCTAssertTrue(try XCTUnwrap(refusal(dir + "/absent")).problem.contains("cannot read"))
        XCTAssertNotNil(refusal(dir))
        XCTAssertTrue(try XCTUnwrap(refusal(file(Array(repeating: 0x41, count: 70_000), mode: 0o600))).problem.contains("70000"))
    }
}
