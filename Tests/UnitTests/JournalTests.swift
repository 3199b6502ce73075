import Fixity
import Foundation
import Glibc
import Journal
import TwinCore
import XCTest

func tempDir(_ test: XCTestCase) throws -> String {
    let d = "/var/tmp/twinfs-unit-" + UUID().uuidString.prefix(8)
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
    return d
}

final class FixityTests: XCTestCase {
    /// Reference values from the xxhsum tool (xxhsum -H2).
    func testKnownXXH3_128Vectors() {
        XCTAssertEqual(XXH128Digest.empty.hex, "99aa06d3014798d86001c324468d497f")
        XCTAssertEqual(XXH128Hasher.hash(Array("hello\n".utf8)).hex, "6bba86c7e069f56d5a10b435f1c8e49c")
    }

    func testStreamingEqualsOneShotForAnySplit() {
        let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 2654435761) }
        let one = XXH128Hasher.hash(data)
        for chunk in [1, 7, 4096, 131_072, 299_999] {
            let h = XXH128Hasher()
            var i = 0
            while i < data.count {
                h.update(Array(data[i..<min(i + chunk, data.count)]))
                i += chunk
            }
            XCTAssertEqual(h.digest(), one, "chunk \(chunk)")
        }
        XCTAssertEqual(XXH128Digest(hex: one.hex), one)
    }
}

final class JournalTests: XCTestCase {
    let id = VolumeIdentity(volume: "v", node: "a")

    func record(_ id: UInt64, _ kind: EntryKind = .file, size: Int64 = 0) -> InodeRecord {
        InodeRecord(id: id, kind: kind, size: size, mode: 0o100644, uid: 0, gid: 0, mtimeNs: 0, ctimeNs: 0)
    }

    func testNamespaceOpsAndTotals() throws {
        let d = try tempDir(self)
        let j = try Journal(path: d + "/j.db", identity: id, create: true)
        defer { j.close(cleanShutdown: true) }
        try j.submit([.insertInode(record(1, .directory)), .insertInode(record(10, size: 100)),
                      .link(parent: 1, name: "a", id: 10), .insertInode(record(11, size: 5)),
                      .link(parent: 1, name: "b", id: 11)], durable: true)
        var s = try j.stats()
        XCTAssertEqual(s.files, 2)
        XCTAssertEqual(s.bytes, 105)
        // Rename over an existing target drops the target's inode.
        try j.submit([.move(fromParent: 1, fromName: "a", toParent: 1, toName: "b")], durable: true)
        XCTAssertEqual(try j.lookup(parent: 1, name: "b"), 10)
        XCTAssertNil(try j.lookup(parent: 1, name: "a"))
        XCTAssertNil(try j.inode(11))
        s = try j.stats()
        XCTAssertEqual(s.files, 1)
        XCTAssertEqual(s.bytes, 100)
        // A second name keeps the inode alive when the first goes.
        try j.submit([.link(parent: 1, name: "c", id: 10), .unlink(parent: 1, name: "b")], durable: true)
        XCTAssertNotNil(try j.inode(10))
        XCTAssertEqual(try j.path(of: 10), "c")
        // Exchange swaps.
        try j.submit([.insertInode(record(12)), .link(parent: 1, name: "d", id: 12),
                      .exchange(parentA: 1, nameA: "c", parentB: 1, nameB: "d")], durable: true)
        XCTAssertEqual(try j.lookup(parent: 1, name: "c"), 12)
        XCTAssertEqual(try j.lookup(parent: 1, name: "d"), 10)
        // Content: dirty until the hash is recorded.
        try j.submit([.markDirty(id: 10)], durable: true)
        XCTAssertEqual(try j.dirtyInodes(), [10])
        try j.submit([.setContent(id: 10, size: 3, hash: XXH128Hasher.hash([1, 2, 3]).bytes, mtimeNs: 5, ctimeNs: 6)], durable: true)
        XCTAssertEqual(try j.dirtyInodes(), [])
        XCTAssertEqual(try j.inode(10)?.hash, XXH128Hasher.hash([1, 2, 3]).bytes)
        XCTAssertEqual(try j.stats().bytes, 3)
    }

    /// Many threads committing at once are grouped: all become durable, none is lost.
    func testGroupCommitFromManyThreads() throws {
        let d = try tempDir(self)
        let j = try Journal(path: d + "/j.db", identity: id, create: true)
        let records = (0..<400).map { record(UInt64(100 + $0), size: 1) }
        DispatchQueue.concurrentPerform(iterations: 400) { i in
            try? j.submit([.insertInode(records[i]),
                           .link(parent: 1, name: "f\(i)", id: UInt64(100 + i))], durable: true)
        }
        XCTAssertEqual(try j.stats().files, 400)
        j.close(cleanShutdown: true)
        let again = try Journal(path: d + "/j.db", identity: id, create: false)
        XCTAssertEqual(try again.children(of: 1).count, 400)
        again.close(cleanShutdown: true)
    }

    func testWrongIdentityLockedAndCorruptJournalsAreRefused() throws {
        let d = try tempDir(self)
        let j = try Journal(path: d + "/j.db", identity: id, create: true)
        XCTAssertThrowsError(try Journal(path: d + "/j.db", identity: id, create: false)) { e in
            guard case JournalError.locked = e else { return XCTFail("\(e)") }
        }
        // A reader beside the writer is fine (verify, status of a stopped node).
        XCTAssertEqual(try Journal(readOnlyPath: d + "/j.db").identity, id)
        j.close(cleanShutdown: true)
        XCTAssertThrowsError(try Journal(path: d + "/j.db", identity: VolumeIdentity(volume: "v", node: "b"), create: false)) { e in
            guard case JournalError.foreign = e else { return XCTFail("\(e)") }
            XCTAssertTrue("\(e)".contains("belongs to volume 'v', node 'a'"))
        }
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: d + "/bad.db"))
        XCTAssertThrowsError(try Journal.storedIdentity(path: d + "/bad.db")) { e in
            guard case JournalError.corrupt = e else { return XCTFail("\(e)") }
        }
    }
}
