import Fixity
import Foundation
import Glibc
import NIOCore
import PeerProtocol
import Replication
import TwinCore
import XCTest

/// Seed 2958: b created f (id X), replicated live, so a's applier created it with id X. Apart,
/// a renamed another file onto f (X gone on a) and b rewrote f (owed). Back in step, b's
/// whole-file send of X reached a, which refused its create with EALREADY ("created moments
/// ago under another name"): its applier remembered every id it ever created (up to 65,536),
/// whether or not the entry still existed. b owed the file for ever; the pair never settled.
/// Now an id created here is refused only while its entry is still held (or being created).
final class ReceiptOfAFileRemovedHereTests: XCTestCase {
    func testAWholeFileSendRestoresAFileThisNodeCreatedAndRemoved() throws {
        let p = try Pair(self)
        defer { p.close() }
        let applier = ReplicaApplier(volume: p.b, logger: LogStore().logger)
        let id = StableID.make(nodeOrdinal: 1, counter: 2958)
        let first = payload(3000, seed: 1)
        XCTAssertEqual(errnoOf(applier.apply(.create(parentPath: "", name: "f", mode: 0o644, uid: 0, gid: 0, stableID: id))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.write(path: "f", stableID: id, offset: 0, data: ByteBuffer(bytes: first)))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.commit(path: "f", stableID: id, size: Int64(first.count),
                                                      xxh128: XXH128Hasher.hash(first).bytes, mtimeNs: 0))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.unlink(parentPath: "", name: "f"))), 0)
        // The sender kept f and changed it: it sends the file whole.
        let second = payload(5000, seed: 2)
        XCTAssertEqual(errnoOf(applier.apply(.stageWhole(parentPath: "", name: "f", mode: 0o100644, uid: 0, gid: 0,
                                                          stableID: id, size: Int64(second.count)))), 0,
                       "a file removed here is created again by the send that brings it back")
        XCTAssertEqual(errnoOf(applier.apply(.write(path: "f", stableID: id, offset: 0, data: ByteBuffer(bytes: second)))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.commit(path: "f", stableID: id, size: Int64(second.count),
                                                      xxh128: XXH128Hasher.hash(second).bytes, mtimeNs: 0))), 0)
        XCTAssertEqual(applier.openFiles, 0)
        XCTAssertEqual((try? readBytes(p.b.brick.absolute("f"))).map { XXH128Hasher.hash($0) }, XXH128Hasher.hash(second), "the sender's version")
        XCTAssertEqual(p.b.brick.readID(rel: "f"), id)
    }

    /// What the claim still refuses: the id of an entry held here under another name.
    func testACreateOfAnIdHeldUnderAnotherNameIsAlreadyApplied() throws {
        let p = try Pair(self)
        defer { p.close() }
        let applier = ReplicaApplier(volume: p.b, logger: LogStore().logger)
        let id = StableID.make(nodeOrdinal: 1, counter: 2959)
        let cr = PeerMessage.create(parentPath: "", name: "f", mode: 0o644, uid: 0, gid: 0, stableID: id)
        XCTAssertEqual(errnoOf(applier.apply(cr)), 0)
        XCTAssertEqual(errnoOf(applier.apply(.rename(fromParent: "", fromName: "f", toParent: "", toName: "g", flags: 0))), 0)
        XCTAssertEqual(errnoOf(applier.apply(cr)), EALREADY, "never a second entry with one id")
        XCTAssertNil(p.b.brick.readID(rel: "f"))
    }
}
