import BrickStore
import Foundation
import Glibc
import TwinCore
import XCTest

/// Quarantine shares the archive's disk: a copy that would eat into the brick's reserve is
/// refused (ENOSPC, nothing copied), so setting copies aside can never be what fills the disk.
final class QuarantineTests: XCTestCase {
    func testACopyThatWouldFillTheBricksReserveIsRefusedAndNothingIsCopied() throws {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root") }
        let dir = NSTemporaryDirectory() + "twinfs-quarantine-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { _ = umount2(dir, Int32(MNT_DETACH)); try? FileManager.default.removeItem(atPath: dir) }
        let mounted = Process()
        mounted.executableURL = URL(fileURLWithPath: "/bin/mount")
        mounted.arguments = ["-t", "tmpfs", "-o", "size=20m", "tmpfs", dir]
        try mounted.run()
        mounted.waitUntilExit()
        guard mounted.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here") }
        let brick = try Brick(path: dir)
        let small = [UInt8](repeating: 1, count: 256 << 10), big = [UInt8](repeating: 2, count: 10 << 20)
        FileManager.default.createFile(atPath: dir + "/small.dcm", contents: Data(small))
        FileManager.default.createFile(atPath: dir + "/big.dcm", contents: Data(big))
        // 20 MiB brick, 10.25 MiB used: the small copy fits; a second 10 MiB would leave less than 1 MiB.
        let ok = try brick.quarantineCopy(rel: "small.dcm", id: 42, tag: "test")
        XCTAssertEqual(ok.size, Int64(small.count))
        XCTAssertNotNil(brick.quarantineRoomProblem(bytes: Int64(big.count)))
        XCTAssertThrowsError(try brick.quarantineCopy(rel: "big.dcm", id: 43, tag: "test")) { e in
            XCTAssertEqual((e as? FSError)?.errno, ENOSPC)
        }
        let kept = try FileManager.default.contentsOfDirectory(atPath: dir + "/" + Brick.quarantineDir)
        XCTAssertEqual(kept.count, 1, "only the copy that fitted: \(kept)")
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/big.dcm").map { [UInt8]($0) }, big, "the original is untouched")
    }
}
