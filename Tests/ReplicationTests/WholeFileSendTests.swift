import Foundation
import Glibc
import PeerProtocol
import Replication
import ReplicationTesting
import TwinCore
import Volume
import XCTest

/// Issue 13, case 7: a whole-file send (catch-up, pull, heal) of a newer version must never let
/// a reader on the receiving node see part of each version. Before staging, the receiver wrote
/// the new bytes over the live file: a read during the send returned the new version's head and
/// the old version's tail, exit 0.
final class WholeFileSendTests: InProcessPairTestCase {
    static let size = 8 << 20

    /// After the scenario: both bricks (every file's XXH3-128, owner, mode, mtime, xattrs) and
    /// both journals the same.
    func assertPairIdentical(file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(try tree(a.local) == tree(b.local), "bricks differ", file: file, line: line)
        XCTAssertEqual(try JournalView(a.journal), try JournalView(b.journal), "journals differ", file: file, line: line)
    }

    /// Reads file `path` whole through a fresh handle of `n`'s local volume, as a FUSE read does.
    func readWhole(_ n: SimNode, _ path: String) throws -> [UInt8] {
        let id = try XCTUnwrap(n.local.brick.readID(rel: path))
        let h = try n.local.open(NodeRef(id: id, path: path), flags: O_RDONLY)
        defer { try? n.local.release(handle: h) }
        return try read(n, handle: h)
    }

    func read(_ n: SimNode, handle h: UInt64) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = try buf.withUnsafeMutableBytes { b in try n.local.read(handle: h, offset: Int64(out.count), into: b) }
            if got == 0 { return out }
            out += buf[0..<got]
        }
    }

    /// v1 on both nodes, v2 written on a while apart: b's copy is owed a whole new version.
    func prepareOwedRewrite() throws -> (v1: [UInt8], v2: [UInt8], id: UInt64) {
        let v1 = payload(Self.size, seed: 1), v2 = payload(Self.size, seed: 2)
        try write(a, "CT.dcm", v1)
        XCTAssertTrue(try readBytes(b.local.brick.absolute("CT.dcm")) == v1)
        link.setPartitioned(true)
        try write(a, "CT.dcm", v2)
        XCTAssertTrue(a.volume.isOwed(try XCTUnwrap(a.local.brick.readID(rel: "CT.dcm"))))
        return (v1, v2, try XCTUnwrap(a.local.brick.readID(rel: "CT.dcm")))
    }

    /// Slows the send's writes past its first 2 MiB, so readers on b meet it half done.
    func slowTheSend(of id: UInt64, writes: Int = 4) {
        for _ in 0..<writes {
            link.script(.delay(.milliseconds(80)), towards: .b) { m in
                if case let .write(_, i, offset, _) = m { return i == id && offset >= 2 << 20 }
                return false
            }
        }
    }

    func testAReaderDuringACatchUpSendSeesOneVersionWhole() throws {
        let (v1, v2, id) = try prepareOwedRewrite()
        slowTheSend(of: id)
        let oldHandle = try b.local.open(NodeRef(id: id, path: "CT.dcm"), flags: O_RDONLY)
        defer { try? b.local.release(handle: oldHandle) }
        link.setPartitioned(false)
        var reads = 0, torn = 0, sawNew = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !sawNew && ContinuousClock.now < deadline {
            let got = try readWhole(b, "CT.dcm")
            reads += 1
            if got == v2 { sawNew = true } else if got != v1 { torn += 1 }
        }
        waitSettled()
        XCTAssertEqual(torn, 0, "\(torn) of \(reads) reads on b during the send returned a mix of the two versions")
        XCTAssertTrue(sawNew)
        XCTAssertTrue(try readWhole(b, "CT.dcm") == v2)
        // A handle opened before the swap reads the version it opened, whole.
        XCTAssertTrue(try read(b, handle: oldHandle) == v1)
        let rec = try XCTUnwrap(try b.journal.inode(id))
        XCTAssertFalse(rec.dirty)
        XCTAssertEqual(rec.hash, try XCTUnwrap(try a.journal.inode(id)).hash)
        try assertPairIdentical()
    }

    func testASendCutOffLeavesThePeersCopyWholeAndClean() throws {
        let (v1, v2, id) = try prepareOwedRewrite()
        // Every send breaks off in its middle (the link drops a write past 4 MiB), retries too.
        for _ in 0..<100 {
            link.script(.dropRequest, towards: .b) { m in
                if case let .write(_, i, offset, _) = m { return i == id && offset >= 4 << 20 }
                return false
            }
        }
        link.setPartitioned(false)
        let deadline = ContinuousClock.now + .seconds(10)
        while link.stats.dropped < 2 && ContinuousClock.now < deadline { usleep(1000) }
        XCTAssertGreaterThanOrEqual(link.stats.dropped, 2, "the send was cut, and cut again when retried")
        b.service.applier.releaseAll()
        // b still has v1, whole and recorded clean; nothing of v2 is left on its brick.
        XCTAssertTrue(try readWhole(b, "CT.dcm") == v1)
        let rec = try XCTUnwrap(try b.journal.inode(id))
        XCTAssertFalse(rec.dirty)
        XCTAssertEqual(rec.size, Int64(v1.count))
        let staging = (try? FileManager.default.contentsOfDirectory(atPath: b.local.brick.absolute(".twinfs/tmp"))) ?? []
        XCTAssertEqual(staging.filter { $0.hasPrefix("stage-") }, [])
        link.healAll()
        waitSettled()
        XCTAssertTrue(try readWhole(b, "CT.dcm") == v2)
        try assertPairIdentical()
    }

    func testTheReplacedFileKeepsItsExtendedAttributes() throws {
        let (_, v2, id) = try prepareOwedRewrite()
        link.setPartitioned(false)
        waitSettled()
        link.setPartitioned(true)
        let value: [UInt8] = Array("0x20".utf8)
        try value.withUnsafeBytes { v in try b.volume.setxattr(NodeRef(id: id, path: "CT.dcm"), name: "user.DOSATTRIB", value: v, flags: 0) }
        try write(a, "CT.dcm", payload(Self.size, seed: 5))
        link.setPartitioned(false)
        waitSettled()
        XCTAssertTrue(try readWhole(b, "CT.dcm") != v2)
        XCTAssertTrue(try readWhole(b, "CT.dcm") == payload(Self.size, seed: 5))
        var buf = [UInt8](repeating: 0, count: 64)
        let n = try buf.withUnsafeMutableBytes { try b.local.getxattr(NodeRef(id: id, path: "CT.dcm"), name: "user.DOSATTRIB", into: $0) }
        XCTAssertEqual(Array(buf[0..<n]), value, "b's own xattr survives the swap")
        try assertPairIdentical()
    }
}
