import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// Issue 13, case 7: a node receiving a newer version whole (catch-up after a partition) never
/// lets a reader see part of each version. Before, the bytes were written over the live file:
/// a read during the send returned the new version's head and the old version's tail, exit 0.
final class TornReadTests: XCTestCase {
    func testReadsDuringACatchUpSendSeeOneVersionWhole() throws {
        let c = try cluster(timeout: 1.5)
        waitHealthy(c)
        let size = 24 << 20
        let v1 = pseudoRandomBytes(size, seed: 1), v2 = pseudoRandomBytes(size, seed: 2)
        try put(c.a.mnt + "/CT.dcm", v1)
        waitUntil("CT.dcm on b", timeout: 30) { (try? readFile(c.b.brick + "/CT.dcm")) == v1 }
        c.cut(.reset)
        waitUntil("both DEGRADED", timeout: 30) { state(c.a) == "DEGRADED" && state(c.b) == "DEGRADED" }
        try put(c.a.mnt + "/CT.dcm", v2)

        // A reader on b opened the file before the send, and reads it slowly during it.
        let fd = open(c.b.mnt + "/CT.dcm", O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        // A link of about 12 MB/s: the send takes about two seconds.
        c.relayToA.limitRate(12_000_000)
        c.relayToB.limitRate(12_000_000)
        c.restore()
        let slow = readSlowly(fd, size: size, chunk: 1 << 20, pause: 100_000)
        // Fresh reads while the send runs: each is one version, whole.
        var fresh: [String] = []
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            guard let got = try? readFile(c.b.mnt + "/CT.dcm") else { fresh.append("error"); usleep(50_000); continue }
            fresh.append(got == v1 ? "v1" : got == v2 ? "v2" : "MIXED")
            if got == v2 { break }
        }
        XCTAssertTrue(slow == v1 || slow == v2, "a read spanning the send returned neither version whole (\(slow.count) bytes)")
        XCTAssertFalse(fresh.contains("MIXED"), "fresh reads during the send: \(fresh)")
        XCTAssertEqual(fresh.last, "v2", "b serves the new version once it has it: \(fresh)")
        c.relayToA.limitRate(0)
        c.relayToB.limitRate(0)
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }

    /// Reads `size` bytes from `fd` in `chunk`s with `pause` microseconds between them.
    func readSlowly(_ fd: Int32, size: Int, chunk: Int, pause: UInt32) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var off = 0
        while off < size {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + off, min(chunk, size - off), off_t(off)) }
            if n <= 0 { break }
            off += n
            usleep(pause)
        }
        return Array(out[0..<off])
    }
}
