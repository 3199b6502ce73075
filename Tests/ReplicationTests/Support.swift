import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import NIOCore
import PeerProtocol
import Replication
import TwinCore
import Volume
import XCTest

func tempDir(_ test: XCTestCase) throws -> String {
    let d = NSTemporaryDirectory() + "twinfs-repl-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
    return d
}

/// One node's volume over a fresh brick and journal in `dir` (as LocalVolumeTests builds it).
func makeVolume(_ dir: String, node: String, ordinal: UInt8, logger: Logger? = nil) throws -> (LocalVolume, Journal) {
    guard getuid() == 0 else { throw XCTSkip("trusted.* xattrs need root") }
    let identity = VolumeIdentity(volume: "v", node: node)
    try FileManager.default.createDirectory(atPath: dir + "/brick", withIntermediateDirectories: true)
    let brick = try Brick(path: dir + "/brick")
    if case .empty = Brick.inspect(path: dir + "/brick") { try brick.writeMarker(identity) }
    let create = !FileManager.default.fileExists(atPath: dir + "/j.db")
    let j = try Journal(path: dir + "/j.db", identity: identity, create: create)
    if create { try j.submit([.insertInode(LocalVolume.record(try brick.lstat(""), id: StableID.root))], durable: true) }
    return (LocalVolume(brick: brick, journal: j, nodeOrdinal: ordinal, logger: logger ?? Logger(label: "test.\(node)")), j)
}

/// Two nodes: A is driven directly, B only through replication messages.
struct Pair {
    let dir: String
    let a: LocalVolume
    let ja: Journal
    let b: LocalVolume
    let jb: Journal

    init(_ test: XCTestCase, dir given: String? = nil) throws {
        dir = try given ?? tempDir(test)
        try FileManager.default.createDirectory(atPath: dir + "/a", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/b", withIntermediateDirectories: true)
        (a, ja) = try makeVolume(dir + "/a", node: "a", ordinal: 1)
        (b, jb) = try makeVolume(dir + "/b", node: "b", ordinal: 2)
    }

    func close() {
        ja.close(cleanShutdown: true)
        jb.close(cleanShutdown: true)
    }
}

/// Log lines kept for assertions.
final class LogStore: Sendable {
    private let lines = Locked<[(Logger.Level, String)]>([])
    func append(_ level: Logger.Level, _ line: String) { lines.with { $0.append((level, line)) } }
    var all: [(Logger.Level, String)] { lines.with { $0 } }
    func contains(_ level: Logger.Level, _ text: String) -> Bool {
        all.contains { $0.0 == level && $0.1.contains(text) }
    }
    var logger: Logger {
        Logger(label: "test.replica") { _ in CapturingHandler(store: self) }
    }
}

struct CapturingHandler: LogHandler {
    let store: LogStore
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        store.append(event.level, event.message.description)
    }
}

func errnoOf(_ reply: PeerMessage) -> Int32? {
    if case .reply(_, let e, _) = reply { return e }
    return nil
}

typealias Send = @Sendable (PeerMessage) async throws -> PeerMessage

/// Performs each operation on volume A (as the FUSE adapter would) and sends the equivalent
/// replication message, built from A's results, expecting errno 0.
final class Mirror {
    let a: LocalVolume
    let ja: Journal
    let send: Send
    let ctx = RequestContext(uid: 1234, gid: 5678, pid: 0)
    private(set) var messages = 0

    init(a: LocalVolume, ja: Journal, send: @escaping Send) {
        self.a = a
        self.ja = ja
        self.send = send
    }

    func ref(_ path: String) throws -> NodeRef {
        if path.isEmpty { return .root }
        return NodeRef(id: try XCTUnwrap(a.brick.readID(rel: path), "A has an id for \(path)"), path: path)
    }

    static func join(_ p: String, _ n: String) -> String { p.isEmpty ? n : p + "/" + n }

    func ok(_ m: PeerMessage, file: StaticString = #filePath, line: UInt = #line) async throws {
        let reply = try await send(m)
        messages += 1
        XCTAssertEqual(errnoOf(reply), 0, "\(m.type) was applied on B", file: file, line: line)
    }

    func mkdir(_ parent: String, _ name: String, mode: mode_t = 0o755) async throws {
        let st = try a.mkdir(parent: ref(parent), name: name, mode: mode, ctx: ctx)
        try await ok(.mkdir(parentPath: parent, name: name, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid,
                            stableID: UInt64(st.st_ino)))
    }

    /// create, writes in `chunk`-byte pieces (in `order`), close: create/write.../commit.
    func writeFile(_ parent: String, _ name: String, bytes: [UInt8], chunk: Int, mode: mode_t = 0o644,
                   backwards: Bool = false) async throws {
        let (st, h) = try a.create(parent: ref(parent), name: name, mode: mode, flags: O_WRONLY, ctx: ctx)
        let id = UInt64(st.st_ino)
        let path = Self.join(parent, name)
        try await ok(.create(parentPath: parent, name: name, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid,
                             stableID: id))
        var offsets = Array(stride(from: 0, to: bytes.count, by: chunk))
        if backwards { offsets.reverse() }
        for off in offsets {
            let piece = Array(bytes[off..<min(off + chunk, bytes.count)])
            let n = try piece.withUnsafeBytes { try a.write(handle: h, offset: Int64(off), data: $0) }
            XCTAssertEqual(n, piece.count)
            try await ok(.write(path: path, stableID: id, offset: Int64(off), data: ByteBuffer(bytes: piece)))
        }
        try a.flush(handle: h)
        let rec = try XCTUnwrap(try ja.inode(id))
        XCTAssertEqual(rec.hash, XXH128Hasher.hash(bytes).bytes, "A recorded the hash of what it wrote")
        let after = try a.getattr(NodeRef(id: id, path: path), handle: h)
        try a.release(handle: h)
        try await ok(.commit(path: path, stableID: id, size: rec.size, xxh128: try XCTUnwrap(rec.hash),
                             mtimeNs: after.mtimeNs))
    }

    func symlink(_ parent: String, _ name: String, target: String) async throws {
        let st = try a.symlink(parent: ref(parent), name: name, target: target, ctx: ctx)
        try await ok(.symlink(parentPath: parent, name: name, target: target, uid: st.st_uid, gid: st.st_gid,
                              stableID: UInt64(st.st_ino)))
    }

    func rename(_ fp: String, _ fn: String, _ tp: String, _ tn: String, flags: UInt32 = 0) async throws {
        try a.rename(parent: ref(fp), name: fn, newParent: ref(tp), newName: tn, flags: flags)
        try await ok(.rename(fromParent: fp, fromName: fn, toParent: tp, toName: tn, flags: flags))
    }

    func link(_ path: String, _ np: String, _ nn: String) async throws {
        _ = try a.link(ref(path), newParent: ref(np), newName: nn)
        try await ok(.link(path: path, newParent: np, newName: nn))
    }

    func setattr(_ path: String, _ u: AttrUpdate) async throws {
        var c = AttrChanges()
        c.mode = u.mode.map { mode_t($0) }
        c.uid = u.uid
        c.gid = u.gid
        c.size = u.size
        func ts(_ ns: Int64) -> timespec { timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000)) }
        c.atime = u.atimeNs.map { .at(ts($0)) }
        c.mtime = u.mtimeNs.map { .at(ts($0)) }
        _ = try a.setattr(ref(path), handle: nil, changes: c)
        try await ok(.setattr(path: path, changes: u))
    }

    func setxattr(_ path: String, _ name: String, _ value: [UInt8], flags: UInt32 = 0) async throws {
        try value.withUnsafeBytes { try a.setxattr(ref(path), name: name, value: $0, flags: Int32(flags)) }
        try await ok(.setxattr(path: path, name: name, value: value, flags: flags))
    }

    func removexattr(_ path: String, _ name: String) async throws {
        try a.removexattr(ref(path), name: name)
        try await ok(.removexattr(path: path, name: name))
    }

    func unlink(_ parent: String, _ name: String) async throws {
        try a.unlink(parent: ref(parent), name: name)
        try await ok(.unlink(parentPath: parent, name: name))
    }

    func rmdir(_ parent: String, _ name: String) async throws {
        try a.rmdir(parent: ref(parent), name: name)
        try await ok(.rmdir(parentPath: parent, name: name))
    }
}

/// Deterministic pseudo-random bytes (a DICOM-sized payload without a real one).
func payload(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// A realistic PACS ingest and reorganisation, mirrored from A to B.
func runScenario(_ m: Mirror) async throws {
    let small = payload(512 << 10, seed: 7)
    let big = payload(3 << 20, seed: 11)
    try await m.mkdir("", "Study", mode: 0o755)
    try await m.mkdir("Study", "Series", mode: 0o750)
    try await m.writeFile("Study/Series", "IM1.dcm", bytes: small, chunk: 64 << 10)
    try await m.writeFile("Study/Series", "IM2.dcm", bytes: big, chunk: 1 << 20)
    // Written back to front: both sides re-hash from disk at commit.
    try await m.writeFile("Study/Series", "IM3.dcm", bytes: payload(300_000, seed: 3), chunk: 128 << 10, backwards: true)
    try await m.writeFile("Study", "empty.txt", bytes: [], chunk: 1)
    try await m.symlink("Study", "latest", target: "Series/IM1.dcm")
    try await m.rename("Study/Series", "IM2.dcm", "Study/Series", "IM2-final.dcm")
    try await m.link("Study/Series/IM1.dcm", "Study", "IM1-link.dcm")
    try await m.setattr("Study/Series/IM1.dcm", AttrUpdate(mode: 0o600))
    try await m.setattr("Study/Series/IM3.dcm", AttrUpdate(uid: 4321, gid: 8765))
    try await m.setattr("Study/Series/IM2-final.dcm", AttrUpdate(atimeNs: 1_600_000_000_123_456_789,
                                                                 mtimeNs: 1_700_000_000_987_654_321))
    try await m.setxattr("Study/Series/IM2-final.dcm", "user.DOSATTRIB", Array("0x20".utf8) + [0])
    try await m.setxattr("Study/Series/IM1.dcm", "user.scratch", [1, 2, 3])
    try await m.removexattr("Study/Series/IM1.dcm", "user.scratch")
    try await m.writeFile("Study", "upload.part", bytes: payload(10_000, seed: 5), chunk: 4096)
    try await m.unlink("Study", "upload.part")
    try await m.mkdir("Study", "Trash")
    try await m.rmdir("Study", "Trash")
    try await m.mkdir("", "Moved")
    try await m.rename("Study", "IM1-link.dcm", "Moved", "IM1-again.dcm")
    // Last, so no later change in the directory moves its mtime.
    try await m.setattr("Study/Series", AttrUpdate(mtimeNs: 1_650_000_000_000_000_000))
}

/// Both bricks hold the same tree: names, kinds, modes, owners, sizes, link counts, content
/// (XXH3-128), symlink targets, file mtimes, user xattrs and the stable id of every entry.
func assertMirrored(_ p: Pair, file: StaticString = #filePath, line: UInt = #line) throws {
    let ta = try tree(p.a), tb = try tree(p.b)
    XCTAssertEqual(ta.keys.sorted(), tb.keys.sorted(), "same names", file: file, line: line)
    XCTAssertEqual(p.a.brick.readID(rel: ""), p.b.brick.readID(rel: ""))
    for (rel, ea) in ta {
        guard let eb = tb[rel] else { continue }
        XCTAssertEqual(ea, eb, "\(rel) is the same on both bricks", file: file, line: line)
        XCTAssertNotNil(ea.id, "\(rel) has an id")
        if ea.kind == .file || ea.kind == .symlink {
            XCTAssertEqual(try p.ja.inode(ea.id!)?.hash, try p.jb.inode(eb.id!)?.hash, "\(rel): same journal hash")
        }
    }
}

struct Entry: Equatable {
    var kind: EntryKind
    var mode: mode_t
    var uid: uid_t
    var gid: gid_t
    var size: Int
    var nlink: Int
    var id: UInt64?
    var content: String?      // XXH3-128 of a file, or a symlink's target
    var mtimeNs: Int64?       // files only (directory mtimes move with every entry change)
    var xattrs: [String: [UInt8]]
}

func tree(_ v: LocalVolume) throws -> [String: Entry] {
    let brick = v.brick
    var out: [String: Entry] = [:]
    var stack = [""]
    while let dir = stack.popLast() {
        for name in try FileManager.default.contentsOfDirectory(atPath: brick.absolute(dir)) {
            if dir.isEmpty && name == Brick.privateDir { continue }
            let rel = dir.isEmpty ? name : dir + "/" + name
            let abs = brick.absolute(rel)
            var st = stat()
            guard lstat(abs, &st) == 0 else { XCTFail("lstat \(abs)"); continue }
            var e = Entry(kind: st.kind, mode: st.st_mode, uid: st.st_uid, gid: st.st_gid, size: Int(st.st_size),
                          nlink: Int(st.st_nlink), id: brick.readID(rel: rel), content: nil, mtimeNs: nil,
                          xattrs: userXattrs(v, rel))
            switch st.kind {
            case .directory:
                stack.append(rel)
            case .file:
                let fd = open(abs, O_RDONLY)
                defer { close(fd) }
                e.content = try XXH128Hasher.hash(fd: fd).0.hex
                e.mtimeNs = st.mtimeNs
            case .symlink:
                var buf = [CChar](repeating: 0, count: 4097)
                let n = readlink(abs, &buf, 4096)
                e.content = String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            case .other:
                break
            }
            out[rel] = e
        }
    }
    return out
}

/// user.* xattrs of an entry, read through the volume (which never follows a symlink).
func userXattrs(_ v: LocalVolume, _ rel: String) -> [String: [UInt8]] {
    let node = NodeRef(id: 0, path: rel)
    guard let names = try? v.listxattr(node) else { return [:] }
    var out: [String: [UInt8]] = [:]
    for name in names where name.hasPrefix("user.") {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = (try? buf.withUnsafeMutableBytes { try v.getxattr(node, name: name, into: $0) }) ?? -1
        out[name] = n >= 0 ? Array(buf[0..<n]) : []
    }
    return out
}

/// Verifier on both volumes, after the journals committed everything queued.
func assertVerifierClean(_ p: Pair, file: StaticString = #filePath, line: UInt = #line) throws {
    for (v, j, name) in [(p.a, p.ja, "A"), (p.b, p.jb, "B")] {
        try j.sync()
        let report = try Verifier(brick: v.brick, journal: j).run()
        XCTAssertEqual(report.problems, [], "verify of \(name)", file: file, line: line)
        XCTAssertGreaterThan(report.filesChecked, 0, file: file, line: line)
        XCTAssertEqual(report.inProgress, 0, "no dirty rows left on \(name)", file: file, line: line)
    }
}

/// The entries (relative paths) under a directory outside any brick, to show nothing appeared.
func listing(_ path: String) -> [String] {
    (FileManager.default.subpaths(atPath: path) ?? []).sorted()
}
