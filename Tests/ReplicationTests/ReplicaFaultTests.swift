import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import NIOCore
import NIOPosix
import PeerLink
import PeerProtocol
import Replication
import TwinCore
import Volume
import XCTest

/// The receiving side under the faults a hospital meets: its disk full or read-only, the
/// sender gone mid-file, a file deleted while open. Real filesystems (a small tmpfs mounted
/// as B's brick), no FUSE. Needs root.
final class ReplicaFaultTests: XCTestCase {
    /// A pair whose B brick is a tmpfs of `size` bytes (B's journal stays on the real disk).
    func pair(brickBytes size: Int) throws -> Pair {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs brick needs root") }
        let dir = try tempDir(self)
        let brick = dir + "/b/brick"
        try FileManager.default.createDirectory(atPath: brick, withIntermediateDirectories: true)
        guard sh("/bin/mount", "-t", "tmpfs", "-o", "size=\(size)", "tmpfs", brick) == 0 else {
            throw XCTSkip("cannot mount a tmpfs here")
        }
        addTeardownBlock { _ = sh("/bin/umount", "-l", brick) }
        return try Pair(self, dir: dir)
    }

    /// B's disk fills up in the middle of a file the peer sends: the write is refused, and B
    /// never records what it holds (a prefix, then zeros up to the sender's size) as a clean
    /// copy: the file stays an incomplete replica awaiting the peer, until a whole copy is
    /// committed. (Before, releasing the handle committed the zeros' hash as clean.)
    func testAReceiptCutShortByAFullDiskIsNeverRecordedAsACleanCopy() throws {
        let p = try pair(brickBytes: 2 << 20)
        defer { p.close() }
        let abandoned = Locked<[UInt64]>([])
        let applier = ReplicaApplier(volume: p.b, logger: LogStore().logger)
        applier.onAbandoned { id in abandoned.with { $0.append(id) } }
        let id = StableID.make(nodeOrdinal: 1, counter: 700)
        let bytes = payload(4 << 20, seed: 21)
        XCTAssertEqual(errnoOf(applier.apply(.create(parentPath: "", name: "CT.dcm", mode: 0o644, uid: 0, gid: 0, stableID: id))), 0)
        // The sender's whole-file push sets the size first (sparse: it fits), then the bytes.
        XCTAssertEqual(errnoOf(applier.apply(.setattr(path: "CT.dcm", changes: AttrUpdate(size: Int64(bytes.count))))), 0)
        var refused: Int32 = 0
        for off in stride(from: 0, to: bytes.count, by: 512 << 10) {
            let e = errnoOf(applier.apply(.write(path: "CT.dcm", stableID: id, offset: Int64(off),
                                                 data: ByteBuffer(bytes: bytes[off..<off + (512 << 10)])))) ?? -1
            if e != 0 { refused = e; break }
        }
        XCTAssertEqual(refused, ENOSPC, "the full disk refuses the write")
        applier.releaseAll()
        XCTAssertEqual(applier.openFiles, 0)
        try p.jb.sync()
        XCTAssertEqual(try p.jb.healPendingRow(id)?.kind, .incompleteReplica, "B knows its copy is not the peer's")
        XCTAssertEqual(abandoned.with { $0 }, [id], "the healer is told to fetch it")
        let rec = try XCTUnwrap(try p.jb.inode(id))
        XCTAssertTrue(rec.dirty, "B never records the cut-off copy as clean")

        // Space is freed (here: the disk grows); the sender sends the file whole again.
        XCTAssertEqual(sh("/bin/mount", "-o", "remount,size=16m", p.b.brick.path), 0)
        for off in stride(from: 0, to: bytes.count, by: 1 << 20) {
            XCTAssertEqual(errnoOf(applier.apply(.write(path: "CT.dcm", stableID: id, offset: Int64(off),
                                                        data: ByteBuffer(bytes: bytes[off..<off + (1 << 20)])))), 0)
        }
        XCTAssertEqual(errnoOf(applier.apply(.commit(path: "CT.dcm", stableID: id, size: Int64(bytes.count),
                                                      xxh128: XXH128Hasher.hash(bytes).bytes, mtimeNs: 0))), 0)
        try p.jb.sync()
        XCTAssertNil(try p.jb.healPendingRow(id), "a verified commit ends the wait")
        XCTAssertEqual(try p.jb.inode(id)?.hash, XXH128Hasher.hash(bytes).bytes)
        XCTAssertEqual(try readBytes(p.b.brick.absolute("CT.dcm")), bytes)
        // Every file of b's brick re-read and checked against its journal's XXH3-128.
        XCTAssertEqual(try Verifier(brick: p.b.brick, journal: p.jb).run().problems, [])
    }

    /// A read-only brick refuses namespace changes and writes with EROFS: a storage fault,
    /// not a difference between the replicas (the sender keeps the change owed).
    func testAReadOnlyBrickRefusesWithEROFSAndKeepsNothingHalfDone() throws {
        let p = try pair(brickBytes: 8 << 20)
        defer { p.close() }
        let applier = ReplicaApplier(volume: p.b, logger: LogStore().logger)
        let id = StableID.make(nodeOrdinal: 1, counter: 800)
        let bytes: [UInt8] = [1, 2, 3]
        XCTAssertEqual(errnoOf(applier.apply(.create(parentPath: "", name: "x.dcm", mode: 0o644, uid: 0, gid: 0, stableID: id))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.write(path: "x.dcm", stableID: id, offset: 0, data: ByteBuffer(bytes: bytes)))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.commit(path: "x.dcm", stableID: id, size: 3, xxh128: XXH128Hasher.hash(bytes).bytes,
                                                      mtimeNs: 0))), 0)
        XCTAssertEqual(sh("/bin/mount", "-o", "remount,ro", p.b.brick.path), 0)
        let dirID = StableID.make(nodeOrdinal: 1, counter: 801)
        let e = errnoOf(applier.apply(.mkdir(parentPath: "", name: "s", mode: 0o755, uid: 0, gid: 0, stableID: dirID)))
        XCTAssertEqual(e, EROFS)
        XCTAssertEqual(PeerRefusal(errno: e ?? 0), .storageFault, "the sender owes it instead of calling it a split brain")
        let w = errnoOf(applier.apply(.write(path: "x.dcm", stableID: id, offset: 3, data: ByteBuffer(bytes: [4])))) ?? 0
        XCTAssertEqual(PeerRefusal(errno: w), .storageFault, "errno \(w)")
        XCTAssertEqual(applier.openFiles, 0)
        try p.jb.sync()
        XCTAssertEqual(try p.jb.healPendingRow(id)?.kind, .incompleteReplica, "a refused write leaves the copy stale, and known to be")
        XCTAssertEqual(sh("/bin/mount", "-o", "remount,rw", p.b.brick.path), 0)
        XCTAssertEqual(errnoOf(applier.apply(.mkdir(parentPath: "", name: "s", mode: 0o755, uid: 0, gid: 0, stableID: dirID))), 0,
                       "the owed change applies once the disk takes it")
    }

    /// smbd's delete-on-close: the file is unlinked while the sender still has it open, then
    /// closed. Its commit is not a mismatch (nothing is left to compare), and nothing critical
    /// is logged.
    func testCommitOfAFileDeletedWhileOpenIsNotAMismatch() throws {
        let p = try Pair(self)
        defer { p.close() }
        let logs = LogStore()
        let applier = ReplicaApplier(volume: p.b, logger: logs.logger)
        let id = StableID.make(nodeOrdinal: 1, counter: 900)
        let bytes = payload(100_000, seed: 4)
        XCTAssertEqual(errnoOf(applier.apply(.create(parentPath: "", name: "~tmp", mode: 0o644, uid: 0, gid: 0, stableID: id))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.write(path: "~tmp", stableID: id, offset: 0, data: ByteBuffer(bytes: bytes)))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.unlink(parentPath: "", name: "~tmp"))), 0)
        XCTAssertEqual(errnoOf(applier.apply(.commit(path: "~tmp", stableID: id, size: Int64(bytes.count),
                                                      xxh128: XXH128Hasher.hash(bytes).bytes, mtimeNs: 0))), 0)
        XCTAssertEqual(applier.statistics.hashMismatches, 0)
        XCTAssertFalse(logs.all.contains { $0.0 == .critical }, "no alarm for ordinary work: \(logs.all)")
        XCTAssertEqual(applier.openFiles, 0)
    }

    /// The sender dies (or its link breaks) in the middle of a file: the listener's
    /// `disconnected` hook runs, and the receiver lets go of the file at once (before, it
    /// stayed open until this node stopped, and every read of it waited for a commit that
    /// could never come), marked as an incomplete replica.
    func testALostLinkReleasesTheFilesItWasSending() async throws {
        let p = try Pair(self)
        defer { p.close() }
        let applier = ReplicaApplier(volume: p.b, logger: LogStore().logger)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = PeerLinkIdentity(node: "node-b", volume: "v", secret: secret, peerNode: "node-a")
        let l = try await PeerListener(configuration: .init(identity: server, host: "127.0.0.1", port: 0), group: group,
                                       logger: Logger(label: "test.listener"),
                                       disconnected: { Thread.detachNewThread { applier.releaseAll() } }) { m, _, reply in
            DispatchQueue.global().async { reply(applier.apply(m)) }
        }
        let cc = PeerClient.Configuration(identity: PeerLinkIdentity(node: "node-a", volume: "v", secret: secret, peerNode: "node-b"),
                                          host: "127.0.0.1", port: l.port)
        let c = PeerClient(configuration: cc, group: group, logger: Logger(label: "test.client"))
        let up = await c.waitUntilUp(timeout: .seconds(10))
        XCTAssertTrue(up)
        let id = StableID.make(nodeOrdinal: 1, counter: 950)
        _ = try await c.send(.create(parentPath: "", name: "half.dcm", mode: 0o644, uid: 0, gid: 0, stableID: id))
        _ = try await c.send(.write(path: "half.dcm", stableID: id, offset: 0, data: ByteBuffer(bytes: payload(65536, seed: 2))))
        XCTAssertEqual(applier.openFiles, 1, "held open for the sender's next write")
        await c.shutdown()
        let deadline = ContinuousClock.now + .seconds(10)
        while applier.openFiles > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        XCTAssertEqual(applier.openFiles, 0, "the dead sender's file is released")
        try p.jb.sync()
        XCTAssertEqual(try p.jb.healPendingRow(id)?.kind, .incompleteReplica)
        await l.close()
        try await group.shutdownGracefully()
    }

    func testPeerRefusalsSplitStorageFaultsFromConflicts() {
        for e in [ENOSPC, EDQUOT, EROFS, EIO] { XCTAssertEqual(PeerRefusal(errno: e), .storageFault, "errno \(e)") }
        for e in [EEXIST, ENOENT, ENOTEMPTY, ESTALE, EINVAL, splitBrainErrno] { XCTAssertEqual(PeerRefusal(errno: e), .conflict, "errno \(e)") }
    }
}

@discardableResult
func sh(_ tool: String, _ args: String...) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}
