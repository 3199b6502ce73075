import BrickStore
import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import ObjectStore
import TwinConfig
import TwinCore
import Volume
import XCTest
@testable import Tier

/// The tier below the mount on one node's LocalVolume (no FUSE): the journal's tier rows, a
/// pass replacing files by stubs, getattr of a stub, recall on open, retention. Needs root
/// for the trusted.* xattrs (skipped otherwise).
final class TierVolumeTests: XCTestCase {
    /// Content commits journaled durably, or sealed in the brick (issue 16's `seal_commits`) with
    /// TIER_TEST_SEAL_COMMITS=1 (Linux's test discovery runs no inherited tests, so no subclass).
    var sealCommits: Bool { ProcessInfo.processInfo.environment["TIER_TEST_SEAL_COMMITS"] == "1" }

    let identity = VolumeIdentity(volume: "v", node: "a")

    struct Fixture {
        let dir: String
        let volume: LocalVolume
        let journal: Journal
        let store: InMemoryObjectStore
        func brickFile(_ rel: String) -> String { dir + "/brick/" + rel }
    }

    func fixture() throws -> Fixture {
        let store = InMemoryObjectStore()
        let (dir, v, j) = try makeTierVolume(self, store: store, pieceSize: 4096, sealCommits: sealCommits)
        return Fixture(dir: dir, volume: v, journal: j, store: store)
    }

    func bytes(_ n: Int, seed: Int = 1) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &+ $0 >> 9) } }

    /// A closed file written through the volume; answers its id.
    @discardableResult
    func write(_ f: Fixture, _ name: String, _ data: [UInt8], mode: mode_t = 0o640) throws -> UInt64 {
        let (st, h) = try f.volume.create(parent: .root, name: name, mode: mode, flags: O_WRONLY, ctx: .root)
        _ = try data.withUnsafeBytes { try f.volume.write(handle: h, offset: 0, data: $0) }
        try f.volume.release(handle: h)
        return UInt64(st.st_ino)
    }

    func pass(_ f: Fixture, retention: TierConfig.Retention = .off, batch: Int = 10) -> TierPass {
        TierPass(volume: f.volume, archiver: Archiver(store: f.store, bucket: "b", retention: retention),
                 policy: CandidatePolicy(prefix: "pacs/", qualifyAfterDays: 0, paths: []), node: "a", batchSize: batch)
    }

    /// now + 1 s: everything written so far qualifies with qualify_after_days = 0.
    var later: UTCTime { UTCTime.now().adding(seconds: 1) }


    // MARK: - 2. A pass tiers files behind their stubs

    func testAPassReplacesFilesByStubsAfterTheStoresProof() async throws {
        let f = try fixture()
        let data = bytes(10_000)
        let id = try write(f, "a.dcm", data, mode: 0o640)
        try write(f, "b.dcm", bytes(5000, seed: 2))
        chown(f.brickFile("a.dcm"), 1234, 5678)
        var before = stat()
        lstat(f.brickFile("a.dcm"), &before)
        let report = try await pass(f, batch: 1).run(limit: 10, now: later)
        XCTAssertEqual(report.tiered, 2, "\(report.outcomes)")
        XCTAssertEqual(report.manifests.count, 2, "one manifest segment per batch")

        // The store holds the bytes; the manifest names them.
        let stored = try await f.store.get("pacs/a.dcm", range: nil)
        XCTAssertEqual(stored, data)
        let segment = try await f.store.get(report.manifests[0], range: nil)
        XCTAssertEqual(try Manifest.decode(segment).map(\.path), ["a.dcm"])

        // The brick holds the stub: its text, its xattr, the file's id, owner, mode and mtime.
        let row = try XCTUnwrap(try f.journal.tierRow(id))
        XCTAssertEqual(row.residence, .tiered)
        XCTAssertEqual(row.key, "pacs/a.dcm")
        XCTAssertEqual(row.xxh3, XXH128Hasher.hash(data).bytes)
        let brickBytes = try XCTUnwrap(FileManager.default.contents(atPath: f.brickFile("a.dcm")).map(Array.init))
        let xattr = try XCTUnwrap(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
        let state = TierStub.recognise(xattr: xattr, size: Int64(brickBytes.count), content: { brickBytes })
        guard case .stub(let stub) = state else { return XCTFail("not a stub: \(state)") }
        XCTAssertEqual(stub.size, 10_000)
        XCTAssertEqual(f.volume.brick.readID(rel: "a.dcm"), id)
        var after = stat()
        lstat(f.brickFile("a.dcm"), &after)
        XCTAssertEqual([after.st_mode, after.st_uid, after.st_gid], [before.st_mode, before.st_uid, before.st_gid])
        XCTAssertEqual(after.st_mtim.tv_sec, before.st_mtim.tv_sec)
        XCTAssertEqual(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec)

        let again = try await pass(f).run(limit: 10, now: later)
        XCTAssertEqual(again.outcomes.count, 0, "a tiered file is no candidate")

        // The next pass's segment is numbered on: it never replaces one written the same second.
        try write(f, "c.dcm", bytes(700, seed: 3))
        let third = try await pass(f).run(limit: 10, now: later)
        XCTAssertEqual(third.manifests.count, 1)
        XCTAssertTrue(third.manifests[0].hasSuffix("-a-000003.jsonl"), third.manifests[0])
        let segments = try await f.store.list(prefix: TierLayout.manifestPrefix("pacs/"), continuation: nil, maxKeys: 100).objects
        XCTAssertEqual(segments.count, 3)
    }

    /// The store refuses: nothing leaves the brick, the journal records nothing.
    func testAFailedUploadLeavesTheFileHot() async throws {
        let f = try fixture()
        let data = bytes(3000)
        let id = try write(f, "a.dcm", data)
        await f.store.setUnreachable(true)
        let report = try await pass(f).run(limit: 10, now: later)
        XCTAssertEqual(report.tiered, 0)
        guard case .failed? = report.outcomes.first else { return XCTFail("\(report.outcomes)") }
        XCTAssertEqual(FileManager.default.contents(atPath: f.brickFile("a.dcm")).map(Array.init), data)
        XCTAssertNil(try f.journal.tierRow(id))
        XCTAssertNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
    }

    /// The stub goes in only over the file that was uploaded: a file written since, or open
    /// for writing, stays as it is.
    func testAFileChangedOrOpenForWritingSinceItsUploadIsNotReplaced() async throws {
        let f = try fixture()
        let data = bytes(3000)
        let id = try write(f, "a.dcm", data)
        let rec = try XCTUnwrap(try f.journal.inode(id))
        let row = TierRow(id: id, residence: .tiered, bucket: "b", key: "pacs/a.dcm", versionId: nil, size: rec.size,
                          xxh3: rec.hash!, retainUntil: nil)
        let expect = TierExpectation(size: rec.size, hash: rec.hash!, mtimeNs: rec.mtimeNs)
        let stub = TierStub(bucket: "b", key: "pacs/a.dcm", versionId: nil, size: rec.size, xxh3: XXH128Digest(bytes: rec.hash!), retainUntil: nil)

        let h = try f.volume.open(NodeRef(id: id, path: "a.dcm"), flags: O_RDWR)
        XCTAssertEqual(try f.volume.replaceWithStub(id: id, expect: expect, row: row, stubContent: stub.content, stubXattr: stub.xattrValue),
                       .writerOpen)
        _ = try [UInt8]([7]).withUnsafeBytes { try f.volume.write(handle: h, offset: 0, data: $0) }
        try f.volume.release(handle: h)
        let outcome = try f.volume.replaceWithStub(id: id, expect: expect, row: row, stubContent: stub.content, stubXattr: stub.xattrValue)
        guard case .changed = outcome else { return XCTFail("\(outcome)") }
        XCTAssertEqual(try readFile(f.brickFile("a.dcm")).count, 3000)
        XCTAssertNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
        XCTAssertNil(try f.journal.tierRow(id))
    }

    /// What a crash leaves of a stub swap or a recall in the staging area goes at start, with
    /// the replication's staged copies (one cleanup of the staging area, run by recovery);
    /// nothing else there is touched.
    func testStaleStubsAndRecallsInTheStagingAreaAreRemoved() throws {
        let f = try fixture()
        let tmp = f.dir + "/brick/.twinfs/tmp/"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        for n in ["stub-2a-1", "recall-2a-2", "stage-2a-3", "other"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: tmp + n, contents: Data([1])))
        }
        f.volume.removeStaleStaging()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp), ["other"])
    }

    // MARK: - 3. Getattr and readdir show the file, not its stub

    func testATieredFileShowsItsRealSizeAndTimes() async throws {
        let f = try fixture()
        let id = try write(f, "a.dcm", bytes(100_000))
        let rec = try XCTUnwrap(try f.journal.inode(id))
        _ = try await pass(f).run(limit: 10, now: later)
        let node = NodeRef(id: id, path: "a.dcm")
        for st in [try f.volume.getattr(node, handle: nil), try f.volume.lookup(parent: .root, name: "a.dcm")] {
            XCTAssertEqual(st.st_size, 100_000)
            XCTAssertGreaterThanOrEqual(Int(st.st_blocks) * 512, 100_000)
            XCTAssertEqual(Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), rec.mtimeNs)
            XCTAssertEqual(Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec), rec.ctimeNs)
            XCTAssertEqual(st.st_mode, 0o100640)
        }
        let dh = try f.volume.opendir(.root)
        defer { f.volume.releasedir(handle: dh) }
        var sizes: [String: Int] = [:]
        try f.volume.readdir(handle: dh, offset: 0, plus: true) { e in
            if let a = e.attributes { sizes[e.name] = Int(a.st_size) }
            return true
        }
        XCTAssertEqual(sizes["a.dcm"], 100_000)
    }

    // MARK: - 4. Recall on open

    func testOpenForReadRecallsTheVerifiedBytes() async throws {
        let f = try fixture()
        let data = bytes(20_000)
        let id = try write(f, "a.dcm", data)
        _ = try await pass(f).run(limit: 10, now: later)
        let v = f.volume
        let got = try await blocking { try readAll(v, NodeRef(id: id, path: "a.dcm"), size: 20_000) }
        XCTAssertEqual(got, data)
        XCTAssertEqual(try readFile(f.brickFile("a.dcm")), data, "the brick holds the bytes again")
        XCTAssertNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
        XCTAssertEqual(f.volume.brick.readID(rel: "a.dcm"), id)
        XCTAssertEqual(try f.journal.tierRow(id)?.residence, .recalled)
        XCTAssertEqual(try f.volume.getattr(NodeRef(id: id, path: "a.dcm"), handle: nil).st_size, 20_000)
    }

    /// A crash between the journal's tier row and the stub's exchange leaves the row over the
    /// file itself: an open serves it and records it recalled; nothing is fetched.
    func testARowOverAFileThatIsNoStubMeansItIsHot() async throws {
        let f = try fixture()
        let data = bytes(3000)
        let id = try write(f, "a.dcm", data)
        let rec = try XCTUnwrap(try f.journal.inode(id))
        try f.journal.submit([.tierRow(TierRow(id: id, residence: .tiered, bucket: "b", key: "pacs/a.dcm", versionId: nil,
                                                size: rec.size, xxh3: rec.hash!, retainUntil: nil))], wait: .durable)
        await f.store.setUnreachable(true)
        let v = f.volume
        let got = try await blocking { try readAll(v, NodeRef(id: id, path: "a.dcm"), size: 3000) }
        XCTAssertEqual(got, data)
        XCTAssertEqual(try f.journal.tierRow(id)?.residence, .recalled)
    }

    /// A stub in the brick that the journal does not record (put there or changed behind
    /// TwinFS) is never served as the file's content.
    func testAStubTheJournalDoesNotKnowIsNotServed() async throws {
        let f = try fixture()
        let stub = TierStub(bucket: "b", key: "pacs/a.dcm", versionId: nil, size: 9999, xxh3: XXH128Hasher.hash([1]), retainUntil: nil)
        let id = try write(f, "a.dcm", stub.content)
        let xattr = stub.xattrValue
        XCTAssertEqual(twin_setxattr(f.brickFile("a.dcm"), TierStub.xattrName, xattr, xattr.count, 0), 0)
        let v = f.volume
        let e = try await blocking { errno(of: { _ = try v.open(NodeRef(id: id, path: "a.dcm"), flags: O_RDONLY) }) }
        XCTAssertEqual(e, EIO)
    }

    func testStoreDownFailsTheOpenWithETIMEDOUTAndKeepsTheStub() async throws {
        let f = try fixture()
        let id = try write(f, "a.dcm", bytes(5000))
        _ = try await pass(f).run(limit: 10, now: later)
        await f.store.setUnreachable(true)
        let v = f.volume
        let e = try await blocking { errno(of: { _ = try v.open(NodeRef(id: id, path: "a.dcm"), flags: O_RDONLY) }) }
        XCTAssertEqual(e, ETIMEDOUT)
        XCTAssertNotNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName), "the stub stays")
        XCTAssertEqual(try f.journal.tierRow(id)?.residence, .tiered)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: f.dir + "/brick/.twinfs/tmp"), [], "no partial recall left")
    }

    func testAChangedObjectIsNeverServed() async throws {
        let f = try fixture()
        let id = try write(f, "a.dcm", bytes(5000))
        _ = try await pass(f).run(limit: 10, now: later)
        var other = bytes(5000)
        other[10] ^= 1
        await f.store.corrupt("pacs/a.dcm", with: other)
        let v = f.volume
        let e = try await blocking { errno(of: { _ = try v.open(NodeRef(id: id, path: "a.dcm"), flags: O_RDONLY) }) }
        XCTAssertEqual(e, EIO)
        XCTAssertNotNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
    }

    /// A write to a tiered file (no retention) recalls it first; its object then no longer
    /// holds its content, so the tier row goes.
    func testWritingATieredFileRecallsItFirst() async throws {
        let f = try fixture()
        let data = bytes(8000)
        let id = try write(f, "a.dcm", data)
        _ = try await pass(f).run(limit: 10, now: later)
        let v = f.volume
        try await blocking {
            let h = try v.open(NodeRef(id: id, path: "a.dcm"), flags: O_RDWR)
            _ = try [UInt8]([0xAB]).withUnsafeBytes { try v.write(handle: h, offset: 8000, data: $0) }
            try v.release(handle: h)
        }
        XCTAssertEqual(try readFile(f.brickFile("a.dcm")), data + [0xAB])
        XCTAssertNil(try f.journal.tierRow(id))
        XCTAssertEqual(try f.journal.inode(id)?.hash, XXH128Hasher.hash(data + [0xAB]).bytes)
    }

    /// A truncate by path of a tiered file recalls it first: the bytes kept are the file's.
    func testTruncatingATieredFileRecallsItFirst() async throws {
        let f = try fixture()
        let data = bytes(8000)
        let id = try write(f, "a.dcm", data)
        _ = try await pass(f).run(limit: 10, now: later)
        let v = f.volume
        _ = try await blocking { try v.setattr(NodeRef(id: id, path: "a.dcm"), handle: nil, changes: AttrChanges(size: 100)) }
        XCTAssertEqual(try readFile(f.brickFile("a.dcm")), Array(data[0..<100]))
        XCTAssertNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName))
        XCTAssertNil(try f.journal.tierRow(id))
        XCTAssertEqual(try f.journal.inode(id)?.hash, XXH128Hasher.hash(Array(data[0..<100])).bytes)
    }

    // MARK: - 5. Retention

    func testAFileUnderRetentionCannotBeDeletedOrOverwritten() async throws {
        let f = try fixture()
        let id = try write(f, "a.dcm", bytes(4000))
        try write(f, "other.dcm", bytes(10))
        _ = try await pass(f, retention: .locked(mode: .compliance, years: 10)).run(limit: 1, now: later)
        let row = try XCTUnwrap(try f.journal.tierRow(id))
        XCTAssertNotNil(row.retainUntil)
        let v = f.volume
        let node = NodeRef(id: id, path: "a.dcm")
        XCTAssertEqual(errno(of: { try v.unlink(parent: .root, name: "a.dcm") }), EPERM)
        XCTAssertEqual(errno(of: { try v.rename(parent: .root, name: "other.dcm", newParent: .root, newName: "a.dcm", flags: 0) }), EPERM)
        XCTAssertEqual(errno(of: { _ = try v.open(node, flags: O_WRONLY) }), EPERM)
        XCTAssertEqual(errno(of: { _ = try v.open(node, flags: O_RDONLY | O_TRUNC) }), EPERM)
        XCTAssertEqual(errno(of: { _ = try v.setattr(node, handle: nil, changes: AttrChanges(size: 0)) }), EPERM)
        XCTAssertNotNil(getXattr(f.brickFile("a.dcm"), TierStub.xattrName), "still the stub: nothing recalled for a refused write")

        // Reading is allowed, and recalling does not lift the retention.
        let got = try await blocking { try readAll(v, node, size: 4000) }
        XCTAssertEqual(got, bytes(4000))
        XCTAssertEqual(errno(of: { try v.unlink(parent: .root, name: "a.dcm") }), EPERM)

        // After the retain-until date the file is an ordinary one again.
        let until = row.retainUntil!
        v.setTierClock { until + 1 }
        XCTAssertNil(errno(of: { try v.unlink(parent: .root, name: "a.dcm") }))
    }

    /// The volume skips tier checks until its journal holds a tier row; a journal reopened with
    /// rows must know at once (a restarted node keeps refusing deletes and showing real sizes).
    func testARestartedVolumeKnowsItsTieredFilesAtOnce() async throws {
        let f = try fixture()
        let id = try write(f, "a.dcm", bytes(4000))
        _ = try await pass(f, retention: .locked(mode: .compliance, years: 10)).run(limit: 1, now: later)
        XCTAssertNotNil(try f.journal.tierRow(id))
        f.journal.close(cleanShutdown: true)

        let j = try Journal(path: f.dir + "/j.db", identity: identity, create: false)
        defer { j.close(cleanShutdown: true) }
        let v = LocalVolume(brick: f.volume.brick, journal: j, nodeOrdinal: 1, logger: Logger(label: "tier-test"), sealCommits: sealCommits)
        XCTAssertTrue(j.mayHaveTieredFiles)
        XCTAssertEqual(try v.getattr(NodeRef(id: id, path: "a.dcm"), handle: nil).st_size, 4000)
        XCTAssertEqual(errno(of: { try v.unlink(parent: .root, name: "a.dcm") }), EPERM)
    }
}

/// A fresh LocalVolume (brick and journal under /var/tmp) recalling from `store`; closed and
/// removed when the test ends. Skips without root (trusted.* xattrs).
func makeTierVolume(_ test: XCTestCase, store: any ObjectStore, pieceSize: Int, sealCommits: Bool = false) throws -> (String, LocalVolume, Journal) {
    guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
    let dir = "/var/tmp/twinfs-tiervol-" + UUID().uuidString.prefix(8)
    try FileManager.default.createDirectory(atPath: dir + "/brick", withIntermediateDirectories: true)
    let brick = try Brick(path: dir + "/brick")
    try brick.writeMarker(VolumeIdentity(volume: "v", node: "a"))
    let j = try Journal(path: dir + "/j.db", identity: VolumeIdentity(volume: "v", node: "a"), create: true)
    try j.submit([.insertInode(LocalVolume.record(try brick.lstat(""), id: StableID.root))], durable: true)
    let v = LocalVolume(brick: brick, journal: j, nodeOrdinal: 1, logger: Logger(label: "tier-test"), sealCommits: sealCommits)
    v.setTierSource(StoreRecallSource(recaller: Recaller(store: store, pieceSize: pieceSize)))
    test.addTeardownBlock {
        j.close(cleanShutdown: true)
        try? FileManager.default.removeItem(atPath: dir)
    }
    return (dir, v, j)
}

/// Runs blocking volume calls on a thread of their own, never on the concurrency pool the
/// recall's fetch needs.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        Thread { c.resume(with: Result { try body() }) }.start()
    }
}

func errno(of body: () throws -> Void) -> Int32? {
    do { try body(); return nil } catch let e as FSError { return e.errno } catch { return -1 }
}

func readAll(_ v: LocalVolume, _ node: NodeRef, size: Int) throws -> [UInt8] {
    let h = try v.open(node, flags: O_RDONLY)
    defer { try? v.release(handle: h) }
    var out = [UInt8](repeating: 0, count: size + 1)
    let n = try out.withUnsafeMutableBytes { try v.read(handle: h, offset: 0, into: $0) }
    return Array(out[0..<n])
}

func getXattr(_ path: String, _ name: String) -> [UInt8]? {
    var buf = [UInt8](repeating: 0, count: 65536)
    let n = twin_getxattr(path, name, &buf, buf.count)
    return n < 0 ? nil : Array(buf[0..<n])
}

func readFile(_ path: String) throws -> [UInt8] {
    guard let d = FileManager.default.contents(atPath: path) else { throw FSError.notFound }
    return Array(d)
}
