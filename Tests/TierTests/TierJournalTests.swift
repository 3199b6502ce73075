import Foundation
import Journal
import TwinCore
import XCTest

/// The journal's record of where a file lives: one `tiered` row per file id, read by id, gone
/// with the inode row, and added to journals made before it existed.
final class TierJournalTests: XCTestCase {
    let identity = VolumeIdentity(volume: "v", node: "a")

    func dir() throws -> String {
        let d = "/var/tmp/twinfs-tierj-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func row(_ id: UInt64, retainUntil: Int64? = nil) -> TierRow {
        TierRow(id: id, residence: .tiered, bucket: "b", key: "pacs/a.dcm", versionId: "v-1", size: 100,
                xxh3: Array(repeating: 7, count: 16), retainUntil: retainUntil)
    }

    func testTierRowIsReadByIdAndGoesWithTheLastName() throws {
        let j = try Journal(path: try dir() + "/j.db", identity: identity, create: true)
        defer { j.close(cleanShutdown: true) }
        let id: UInt64 = 42
        let rec = InodeRecord(id: id, kind: .file, size: 100, mode: 0o100644, uid: 0, gid: 0, mtimeNs: 1, ctimeNs: 1,
                              hash: Array(repeating: 7, count: 16))
        try j.submit([.insertInode(rec), .link(parent: StableID.root, name: "a.dcm", id: id), .tierRow(row(id))], wait: .durable)
        XCTAssertEqual(try j.tierRow(id), row(id))
        XCTAssertNil(try j.tierRow(43))
        try j.submit([.tierResidence(id: id, residence: .recalled)], wait: .durable)
        XCTAssertEqual(try j.tierRow(id)?.residence, .recalled)
        XCTAssertEqual(try j.tierScan(after: 0, limit: 10).map(\.residence), [.recalled])
        try j.submit([.unlink(parent: StableID.root, name: "a.dcm")], wait: .durable)
        XCTAssertNil(try j.tierRow(id), "the tier row goes with the inode row")
    }

    func testRetentionIsJudgedByItsDate() {
        XCTAssertTrue(row(1, retainUntil: 100).isRetained(nowSeconds: 99))
        XCTAssertFalse(row(1, retainUntil: 100).isRetained(nowSeconds: 100))
        XCTAssertFalse(row(1).isRetained(nowSeconds: 0))
    }

    /// A journal made before the tier table existed gains it when a node opens it.
    func testAJournalWithoutTheTierTableGainsItOnOpen() throws {
        let path = try dir() + "/j.db"
        try Journal(path: path, identity: identity, create: true).close(cleanShutdown: true)
        let drop = Process()
        drop.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        drop.arguments = [path, "DROP TABLE tiered;"]
        try drop.run()
        drop.waitUntilExit()
        XCTAssertEqual(drop.terminationStatus, 0)
        XCTAssertNil(try Journal(readOnlyPath: path).tierRow(5), "an old journal read-only: nothing tiered")
        let j = try Journal(path: path, identity: identity, create: false)
        defer { j.close(cleanShutdown: true) }
        try j.submit([.tierRow(row(5))], wait: .durable)
        XCTAssertEqual(try j.tierRow(5), row(5))
    }
}
