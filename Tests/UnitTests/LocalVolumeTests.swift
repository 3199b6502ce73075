import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import TwinCore
import Volume
import XCTest

/// The local volume driven directly (no FUSE): crash recovery from intents and dirty marks,
/// and the streamed hash. Needs root for the trusted.* id xattrs.
final class LocalVolumeTests: XCTestCase {
    let identity = VolumeIdentity(volume: "v", node: "a")

    /// `sealCommits`: the opt-in one-flush commits (`seal_commits`); the other tests run the
    /// default, journaled commits.
    func makeVolume(_ dir: String, sealCommits: Bool = false) throws -> (LocalVolume, Journal) {
        guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
        try FileManager.default.createDirectory(atPath: dir + "/brick", withIntermediateDirectories: true)
        let brick = try Brick(path: dir + "/brick")
        if case .empty = Brick.inspect(path: dir + "/brick") { try brick.writeMarker(identity) }
        let create = !FileManager.default.fileExists(atPath: dir + "/j.db")
        let j = try Journal(path: dir + "/j.db", identity: identity, create: create)
        if create { try j.submit([.insertInode(LocalVolume.record(try brick.lstat(""), id: StableID.root))], durable: true) }
        return (LocalVolume(brick: brick, journal: j, nodeOrdinal: 1, logger: Logger(label: "test"), sealCommits: sealCommits), j)
    }

    /// A directory entry's name is read in place. readdir's records are only as long as their
    /// names; the last one can end right before unmapped memory (node a crashed so under
    /// smbtorture when the whole 256-byte name field was copied).
    func testADirectoryEntryAtTheEndOfMappedMemoryIsReadInPlace() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let base = try XCTUnwrap(mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        XCTAssertNotEqual(base, MAP_FAILED)
        defer { munmap(base, 2 * page) }
        XCTAssertEqual(mprotect(base + page, page, PROT_NONE), 0)
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let record = base + page - 8 - nameOffset // "ja" and its NUL end 5 bytes before the guard page
        memcpy(record + nameOffset, "ja", 3)
        XCTAssertEqual(dirent.name(record.assumingMemoryBound(to: dirent.self)), "ja")
    }

    func testStreamedAndRehashedContentHashes() throws {
        let d = try tempDir(self)
        let (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        let (st, h) = try v.create(parent: .root, name: "f", mode: 0o644, flags: O_WRONLY, ctx: .root)
        let data = (0..<500_000).map { UInt8(truncatingIfNeeded: $0 * 31) }
        for off in stride(from: 0, to: data.count, by: 65536) {
            let chunk = Array(data[off..<min(off + 65536, data.count)])
            _ = try chunk.withUnsafeBytes { try v.write(handle: h, offset: Int64(off), data: $0) }
        }
        try v.flush(handle: h)
        XCTAssertEqual(try readFileBytes(d + "/brick/f"), data, "the brick holds the bytes")
        XCTAssertEqual(try j.inode(UInt64(st.st_ino))?.hash, XXH128Hasher.hash(data).bytes)
        // A write back into the middle: the hash is recomputed from the brick at the next flush.
        _ = try [UInt8]([9, 9, 9]).withUnsafeBytes { try v.write(handle: h, offset: 10, data: $0) }
        XCTAssertEqual(try j.inode(UInt64(st.st_ino))?.dirty, true, "dirty before the bytes reach the brick")
        try v.release(handle: h)
        var expected = data
        expected.replaceSubrange(10..<13, with: [9, 9, 9])
        let rec = try XCTUnwrap(try j.inode(UInt64(st.st_ino)))
        XCTAssertEqual(rec.hash, XXH128Hasher.hash(expected).bytes)
        XCTAssertFalse(rec.dirty)
    }

    /// readdir and readdirplus give every entry its stable id (the brick xattr), the same as a
    /// lookup: from the open directory for entries with an id, through a lookup (which adopts
    /// it) for one put into the brick behind TwinFS.
    func testReaddirGivesEveryEntryItsStableID() throws {
        let d = try tempDir(self)
        let (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        let (fst, h) = try v.create(parent: .root, name: "file", mode: 0o644, flags: O_WRONLY, ctx: .root)
        try v.release(handle: h)
        let dst = try v.mkdir(parent: .root, name: "dir", mode: 0o755, ctx: .root)
        let lst = try v.symlink(parent: .root, name: "link", target: "file", ctx: .root)
        XCTAssertTrue(FileManager.default.createFile(atPath: d + "/brick/adopted", contents: Data([1, 2])))
        let want = ["file": UInt64(fst.st_ino), "dir": UInt64(dst.st_ino), "link": UInt64(lst.st_ino)]
        // readdirplus first: its lookup adopts the file put into the brick (gives it an id).
        for plus in [true, false] {
            let dh = try v.opendir(.root)
            var got: [String: (UInt64, stat?)] = [:]
            try v.readdir(handle: dh, offset: 0, plus: plus) { e in
                if e.name != "." && e.name != ".." { got[e.name] = (e.id, e.attributes) }
                return true
            }
            v.releasedir(handle: dh)
            XCTAssertEqual(Set(got.keys), ["file", "dir", "link", "adopted"], "plus \(plus)")
            for (name, id) in want {
                XCTAssertEqual(got[name]?.0, id, "\(name), plus \(plus)")
                if plus { XCTAssertEqual(got[name]?.1.map { UInt64($0.st_ino) }, id, "\(name)'s attributes, plus \(plus)") }
            }
            if plus { XCTAssertEqual((got["link"]?.1?.st_mode ?? 0) & S_IFMT, S_IFLNK, "a symlink's own stat, not its target's") }
            // The adopted file: the id a lookup gives, now held in the brick.
            let adopted = UInt64(try v.lookup(parent: .root, name: "adopted").st_ino)
            XCTAssertEqual(got["adopted"]?.0, adopted, "adopted, plus \(plus)")
            XCTAssertEqual(v.brick.readID(rel: "adopted"), adopted)
        }
    }

    /// A crash between the intent and the journal's result: recovery reads the brick.
    func testRecoveryReplaysIntentsOfCreateRenameAndUnlink() throws {
        let d = try tempDir(self)
        var (v, j) = try makeVolume(d)
        _ = try v.mkdir(parent: .root, name: "dir", mode: 0o755, ctx: .root)
        let (st, h) = try v.create(parent: .root, name: "old", mode: 0o644, flags: O_WRONLY, ctx: .root)
        _ = try [UInt8]([1, 2, 3]).withUnsafeBytes { try v.write(handle: h, offset: 0, data: $0) }
        try v.release(handle: h)
        XCTAssertThrowsError(try v.unlink(parent: .root, name: "nothing"), "unlink of a missing name fails")
        j.close(cleanShutdown: false)

        // Behind the journal's back, as if the process died right after these syscalls:
        let b = d + "/brick"
        XCTAssertEqual(rename(b + "/old", b + "/dir/new"), 0)                 // a rename
        _ = FileManager.default.createFile(atPath: b + "/fresh", contents: Data([7, 7]))  // a create (no id yet)
        let id = UInt64(st.st_ino)
        // ...with the intents the volume had written first.
        let j2 = try Journal(path: d + "/j.db", identity: identity, create: false)
        let dirID = try XCTUnwrap(try j2.lookup(parent: 1, name: "dir"))
        try j2.submit([.intent(seq: 100, parent: 1, name: "old"), .intent(seq: 101, parent: dirID, name: "new"),
                       .intent(seq: 102, parent: 1, name: "fresh")], durable: true)
        j2.close(cleanShutdown: false)

        (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        let report = try v.recover()
        XCTAssertEqual(report.intentsReplayed, 3)
        XCTAssertNil(try j.lookup(parent: 1, name: "old"))
        XCTAssertEqual(try j.lookup(parent: dirID, name: "new"), id, "the renamed file keeps its id")
        XCTAssertEqual(try j.inode(id)?.hash, XXH128Hasher.hash([1, 2, 3]).bytes)
        let freshID = try XCTUnwrap(try j.lookup(parent: 1, name: "fresh"))
        XCTAssertEqual(try j.inode(freshID)?.hash, XXH128Hasher.hash([7, 7]).bytes)
        XCTAssertEqual(v.brick.readID(rel: "fresh"), freshID, "the adopted file got its id xattr")
        XCTAssertTrue(try j.pendingIntents().isEmpty)
        let verify = try Verifier(brick: v.brick, journal: j).run()
        XCTAssertEqual(verify.problems, [])
    }

    /// An intent in the append-only log whose result never committed (the process died
    /// between the brick change and the group commit) is replayed at the next start.
    func testIntentLogLeftoversAreReplayedAndThenCleared() throws {
        let d = try tempDir(self)
        var (v, j) = try makeVolume(d)
        let seq = try j.recordIntent(parent: StableID.root, name: "late.dcm")
        XCTAssertGreaterThan(seq, 0)
        _ = FileManager.default.createFile(atPath: d + "/brick/late.dcm", contents: Data([4, 5, 6]))
        j.close(cleanShutdown: false)   // the result never reached the journal
        (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        XCTAssertEqual(try j.pendingIntents().map { $0.name }, ["late.dcm"])
        let report = try v.recover()
        XCTAssertEqual(report.intentsReplayed, 1)
        let id = try XCTUnwrap(try j.lookup(parent: StableID.root, name: "late.dcm"))
        XCTAssertEqual(try j.inode(id)?.hash, XXH128Hasher.hash([4, 5, 6]).bytes)
        XCTAssertTrue(try j.pendingIntents().isEmpty, "the log is empty after recovery")
        var st = stat()
        XCTAssertEqual(stat(d + "/j.db.intents", &st), 0)
        XCTAssertEqual(st.st_size, 0)
    }

    /// Ids of deleted entries never come back, not even after the journal is rebuilt from a
    /// brick that no longer holds them (a peer may still know those ids).
    func testIdsAreNeverReusedAfterDeletesAndARebuild() throws {
        let d = try tempDir(self)
        var (v, j) = try makeVolume(d)
        var handedOut: [UInt64] = []
        for i in 0..<3 {
            let (st, h) = try v.create(parent: .root, name: "f\(i)", mode: 0o644, flags: O_WRONLY, ctx: .root)
            try v.release(handle: h)
            handedOut.append(UInt64(st.st_ino))
            try v.unlink(parent: .root, name: "f\(i)")
        }
        j.close(cleanShutdown: true)
        let r = try JournalRebuilder(brickPath: d + "/brick", journalPath: d + "/j.db", identity: identity, nodeOrdinal: 1).run()
        XCTAssertEqual(r.files, 0)
        (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        let (st, h) = try v.create(parent: .root, name: "new", mode: 0o644, flags: O_WRONLY, ctx: .root)
        try v.release(handle: h)
        XCTAssertFalse(handedOut.contains(UInt64(st.st_ino)))
        XCTAssertGreaterThan(UInt64(st.st_ino) & 0x00FF_FFFF_FFFF_FFFF, 4096, "above the whole block reserved before")
    }

    /// A symlink inside the brick pointing outside can never be followed by the daemon, even
    /// when a path handed to the volume runs through it (a rename race).
    func testPathsNeverLeaveTheBrickThroughSymlinks() throws {
        let d = try tempDir(self)
        let (v, j) = try makeVolume(d)
        defer { j.close(cleanShutdown: true) }
        XCTAssertEqual(symlink("/etc", d + "/brick/evil"), 0)
        XCTAssertThrowsError(try v.brick.lstat("evil/passwd"))
        XCTAssertThrowsError(try v.open(NodeRef(id: 99, path: "evil/passwd"), flags: O_RDONLY))
        XCTAssertThrowsError(try v.getxattr(NodeRef(id: 99, path: "evil/passwd"), name: "user.x", into: nil))
        XCTAssertThrowsError(try v.setattr(NodeRef(id: 99, path: "evil"), handle: nil, changes: AttrChanges(mode: 0o777)),
                             "chmod of a symlink is refused, never applied to its target")
        XCTAssertThrowsError(try v.mkdir(parent: NodeRef(id: 99, path: "evil"), name: "x", mode: 0o755, ctx: .root))
        var st = stat()
        XCTAssertEqual(stat("/etc", &st), 0)
        XCTAssertNotEqual(st.st_mode & 0o777, 0o777)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/etc/x"))
        XCTAssertThrowsError(try v.rename(parent: .root, name: "evil", newParent: .root, newName: "w", flags: 4),
                             "RENAME_WHITEOUT is refused")
    }

    /// Writes `data` into a new file `name` of `parent` and closes it (one content commit).
    func storeFile(_ v: LocalVolume, _ parent: NodeRef, _ name: String, _ data: [UInt8]) throws -> UInt64 {
        let (st, h) = try v.create(parent: parent, name: name, mode: 0o644, flags: O_WRONLY, ctx: .root)
        _ = try data.withUnsafeBytes { try v.write(handle: h, offset: 0, data: $0) }
        try v.flush(handle: h)
        try v.release(handle: h)
        return UInt64(st.st_ino)
    }

    /// A content commit seals the brick file (size and XXH3-128 in its xattr, a marker naming
    /// it) before its one fsync, and writes its row without a flush. When a power loss takes
    /// the WAL's tail (here: the rows of the file and of its new directory removed behind the
    /// volume's back), recovery re-derives both from the brick and the seal, and the journal
    /// agrees with the brick again.
    func testRecoveryRederivesTheRowsOfASealedCommitThatTheJournalLost() throws {
        let d = try tempDir(self)
        var (v, j) = try makeVolume(d, sealCommits: true)
        let dst = try v.mkdir(parent: .root, name: "Study001", mode: 0o755, ctx: .root)
        let dirID = UInt64(dst.st_ino)
        let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let id = try storeFile(v, NodeRef(id: dirID, path: "Study001"), "IM00001.dcm", data)
        let fd = open(d + "/brick/Study001/IM00001.dcm", O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(v.brick.readSeal(fd: fd), ContentSeal(size: Int64(data.count), hash: XXH128Hasher.hash(data).bytes))
        close(fd)
        let markers = SealMarkers(brick: v.brick).list()
        // Two markers: one made before the file existed (its create), one with its seal.
        XCTAssertEqual(markers.map { $0.id }, [id, id])
        XCTAssertEqual(markers.map { $0.target }, ["Study001/IM00001.dcm", "Study001/IM00001.dcm"])

        // The power loss: the rows written after the last durable commit are gone.
        try j.submit([.unlink(parent: dirID, name: "IM00001.dcm"), .deleteInodeIfNameless(id: id),
                      .unlink(parent: StableID.root, name: "Study001"), .deleteInodeIfNameless(id: dirID)], durable: true)
        j.close(cleanShutdown: false)
        (v, j) = try makeVolume(d, sealCommits: true)
        defer { j.close(cleanShutdown: true) }
        XCTAssertNil(try j.lookup(parent: StableID.root, name: "Study001"))
        let report = try v.recover()
        XCTAssertEqual(report.sealsRederived, 1)
        XCTAssertEqual(try j.lookup(parent: StableID.root, name: "Study001"), dirID)
        XCTAssertEqual(try j.lookup(parent: dirID, name: "IM00001.dcm"), id)
        let row = try XCTUnwrap(try j.inode(id))
        XCTAssertFalse(row.dirty)
        XCTAssertEqual(row.size, Int64(data.count))
        XCTAssertEqual(row.hash, XXH128Hasher.hash(data).bytes)
        XCTAssertEqual(SealMarkers(brick: v.brick).list().count, 0, "recovery removes the markers it settled")
        XCTAssertEqual(try Verifier(brick: v.brick, journal: j).run().problems, [])
    }

    /// Seal markers go once a durable journal commit covers their rows (every 64th commit or
    /// after a second, see `SealLogTests`; a directory fsync; recovery). A clean restart finds
    /// the rows in agreement with the seals and re-derives nothing.
    func testSealMarkersGoWithTheDurableCommitThatCoversThem() throws {
        let d = try tempDir(self)
        var (v, j) = try makeVolume(d, sealCommits: true)
        for i in 0..<70 { _ = try storeFile(v, .root, "f\(i)", [UInt8(i)]) }
        XCTAssertLessThan(SealMarkers(brick: v.brick).list().count, 64, "a durable commit let markers go")
        j.close(cleanShutdown: true)
        (v, j) = try makeVolume(d, sealCommits: true)
        defer { j.close(cleanShutdown: true) }
        let report = try v.recover()
        XCTAssertEqual(report.sealsRederived, 0, "rows that agree with their seals are left alone")
        XCTAssertEqual(SealMarkers(brick: v.brick).list().count, 0)
        _ = try storeFile(v, .root, "g", [1, 2])
        XCTAssertEqual(SealMarkers(brick: v.brick).list().count, 2, "the create's marker and the seal's")
        try v.fsyncdir(.root)
        XCTAssertEqual(SealMarkers(brick: v.brick).list().count, 0)
        XCTAssertEqual(try Verifier(brick: v.brick, journal: j).run().problems, [])
    }

    func testContentSealRoundTrip() {
        let s = ContentSeal(size: 1 << 40, hash: Array(0..<16))
        XCTAssertEqual(s.encoded.count, 25)
        XCTAssertEqual(ContentSeal(encoded: s.encoded), s)
        XCTAssertNil(ContentSeal(encoded: Array(s.encoded.dropLast())))
        var wrongFormat = s.encoded
        wrongFormat[0] = 9
        XCTAssertNil(ContentSeal(encoded: wrongFormat))
    }
}

func readFileBytes(_ p: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
}
