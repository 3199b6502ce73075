import Foundation
import Glibc
import Replication
import ReplicationTesting
import TwinCore
import Volume
import XCTest

/// The smallest sequences behind the randomized test's failing seeds (issue 13), each a
/// deterministic test over the in-process pair. Both failed before a guarded replay compared
/// content only for a version the peer held exactly (the peer's stale copy of a file its
/// sender rewrote while apart was taken for the peer's own rewrite).
final class RandomizedFindingsTests: InProcessPairTestCase {

    func write(_ n: SimNode, _ path: String, _ bytes: [UInt8]) throws {
        let (p, name) = ReplicatedVolume.split(path)
        let parent = try XCTUnwrap(n.ref(p))
        let h: UInt64
        if let id = n.local.brick.readID(rel: path) {
            h = try n.volume.open(NodeRef(id: id, path: path), flags: O_WRONLY | O_TRUNC)
        } else {
            h = try n.volume.create(parent: parent, name: name, mode: 0o644, flags: O_WRONLY | O_CREAT, ctx: ctx).1
        }
        let r = bytes.withUnsafeBytes { b in Result { () throws(FSError) -> Int in try n.volume.write(handle: h, offset: 0, data: b) } }
        _ = try r.get()
        try n.volume.flush(handle: h)
        try n.volume.release(handle: h)
    }

    /// Seeds 2, 3, 5: a file created while apart and renamed while apart. The owed rename is
    /// replayed (guarded) before the owed file's bytes are sent, so the peer's empty copy
    /// from the replayed create fails the guard ("rewritten here"): a split brain on both
    /// nodes for a file only one node ever wrote, and the peer keeps an empty, dirty,
    /// never-completed copy (the pair never settles without the healer).
    func testAFileWrittenAndRenamedWhileApartArrivesWhole() throws {
        link.setPartitioned(true)
        let bytes = payload(20_000, seed: 3)
        try write(a, "f", bytes)
        try a.volume.rename(parent: .root, name: "f", newParent: .root, newName: "g", flags: 0)
        link.setPartitioned(false)
        waitSettled()
        XCTAssertEqual(try a.journal.splitBrains().map(\.path), [])
        XCTAssertEqual(try? readBytes(b.local.brick.absolute("g")), bytes)
        XCTAssertNil(b.kind("f"))
        XCTAssertEqual(try b.journal.dirtyInodes(), [])
    }

    /// Seed 2: a file both nodes hold, rewritten and then deleted on one node while the other
    /// is down. The owed unlink's guard sees the peer's older copy as "rewritten here": split
    /// brain, and the deleted file comes back on the peer.
    func testAFileRewrittenThenDeletedWhileApartIsDeletedOnThePeer() throws {
        try write(a, "f", payload(10_000, seed: 1))
        XCTAssertEqual(b.kind("f"), .file)
        link.setPartitioned(true)
        try write(a, "f", payload(12_000, seed: 2))
        try a.volume.unlink(parent: .root, name: "f")
        link.setPartitioned(false)
        waitSettled()
        XCTAssertEqual(try a.journal.splitBrains().map(\.path), [])
        XCTAssertNil(b.kind("f"), "the file deleted on a is deleted on b")
    }
}
