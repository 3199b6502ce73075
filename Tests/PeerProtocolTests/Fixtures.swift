import NIOCore
import PeerProtocol
import TwinCore

/// A seeded generator (SplitMix64) so every random test is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) } }
}

enum Fixtures {
    static let id = StableID.make(nodeOrdinal: 1, counter: 7)

    /// At least one message of every type, with edge values (root paths, Unicode, empty buffers).
    static let messages: [PeerMessage] = [
        .hello(node: "pacs-a", volume: "archive", protocolVersion: 1, nonce: Array(0..<32)),
        .authChallengeResponse(proof: [UInt8](repeating: 0xAB, count: 32)),
        .authOK,
        .authFailed(reason: "volume mismatch"),
        .authFailed(reason: ""),
        .ping,
        .pong,
        .mkdir(parentPath: "", name: "studies", mode: 0o40755, uid: 0, gid: 0, stableID: id),
        .create(parentPath: "studies/2024", name: "IMG0001.dcm", mode: 0o100644, uid: 1000, gid: 1000, stableID: id + 1),
        .create(parentPath: "Patienten/Müller", name: "Röntgen 東京 🩻.dcm", mode: 0o644, uid: 1, gid: 2, stableID: .max),
        .write(path: "studies/2024/IMG0001.dcm", stableID: id + 1, offset: 1 << 32, data: ByteBuffer(bytes: [1, 2, 3])),
        .write(path: "a", stableID: 2, offset: 0, data: ByteBuffer()),
        .commit(path: "studies/2024/IMG0001.dcm", stableID: id + 1, size: 3, xxh128: Array(100..<116),
                mtimeNs: 1_700_000_000_123_456_789),
        .commit(path: "old", stableID: 2, size: 0, xxh128: [UInt8](repeating: 0, count: 16), mtimeNs: -1),
        .unlink(parentPath: "studies", name: "old.dcm"),
        .rmdir(parentPath: "", name: "tmp"),
        .rename(fromParent: "a", fromName: "x", toParent: "b/c", toName: "y", flags: 1),
        .link(path: "a/x", newParent: "", newName: "x-link"),
        .symlink(parentPath: "a", name: "latest", target: "../b/x", uid: 0, gid: 0, stableID: id + 2),
        .symlink(parentPath: "", name: "abs", target: "/etc/passwd", uid: 5, gid: 6, stableID: id + 3),
        .setattr(path: "a/x", changes: AttrUpdate(mode: 0o600, size: 0, mtimeNs: -5)),
        .setattr(path: "", changes: AttrUpdate()),
        .setattr(path: "a", changes: AttrUpdate(mode: 1, uid: 2, gid: 3, size: 4, atimeNs: 5, mtimeNs: 6)),
        .setxattr(path: "a/x", name: "user.dicom.study", value: Array("1.2.840".utf8), flags: 1),
        .setxattr(path: "", name: "user.empty", value: [], flags: 0),
        .removexattr(path: "a/x", name: "user.dicom.study"),
        .syncDir(path: "studies/2024"),
        .syncDir(path: ""),
        .noteSplit(stableID: id + 7, path: "st/P.dcm", reason: "changed on both nodes while apart"),
        .noteSplit(stableID: 0, path: "a/x -> b/y", reason: "the peer could not apply rename"),
        .mknod(parentPath: "tmp", name: "fifo", mode: 0o010644, rdev: 0, uid: 0, gid: 0, stableID: id + 9),
        .mknod(parentPath: "dev", name: "null", mode: 0o020666, rdev: 0x103, uid: 0, gid: 0, stableID: id + 10),
        .stageWhole(parentPath: "st", name: "CT1.dcm", mode: 0o100644, uid: 1000, gid: 1000, stableID: id + 8, size: 400 << 20),
        .guarded(expect: [EntryExpectation(path: "st/P.dcm", stableID: id + 4, xxh128: Array(0..<16))],
                 change: .unlink(parentPath: "st", name: "P.dcm")),
        .guarded(expect: [EntryExpectation(path: "a/x", stableID: id + 5, xxh128: []),
                          EntryExpectation(path: "b/y", stableID: id + 6, xxh128: Array(16..<32))],
                 change: .rename(fromParent: "a", fromName: "x", toParent: "b", toName: "y", flags: 0)),
        .guarded(expect: [EntryExpectation(path: "a/x", stableID: id + 5, xxh128: [])],
                 change: .setattr(path: "a/x", changes: AttrUpdate(mode: 0o600))),
        .guarded(expect: [EntryExpectation(path: "a/x", stableID: id + 5, xxh128: [])],
                 change: .setxattr(path: "a/x", name: "user.dicom.study", value: [1, 2], flags: 0)),
        .guarded(expect: [EntryExpectation(path: "st", stableID: id + 11, xxh128: [])],
                 change: .create(parentPath: "st", name: "CT2.dcm", mode: 0o100644, uid: 1000, gid: 1000, stableID: id + 12)),
        .guarded(expect: [EntryExpectation(path: "st", stableID: id + 11, xxh128: [])],
                 change: .mkdir(parentPath: "st", name: "series", mode: 0o040755, uid: 0, gid: 0, stableID: id + 13)),
        .lock(token: 7, keys: ["1/studies"], leaseMs: 5000),
        .lock(token: .max, keys: ["9/a", "12/Röntgen 🩻.dcm"], leaseMs: 1),
        .unlock(token: 7),
        .pull(stableID: id + 1),
        .catchUpState(ops: 0, files: 12),
        .listDir(dirID: 1, after: "", limit: 1024),
        .listDir(dirID: id, after: "Röntgen 🩻.dcm", limit: 1),
        .healFile(stableID: id, expected: [UInt8](repeating: 7, count: 16)),
        .fileState(stableID: id, rehash: true),
        .volumeInfo(ordinal: 2),
        .healInfo(summary: false),
        .resolveSplit(stableID: id, role: 1),
        .reply(requestID: 42, errno: 0, payload: nil),
        .reply(requestID: 43, errno: 2, payload: ByteBuffer(bytes: [9, 8])),
        .reply(requestID: 44, errno: 0, payload: ByteBuffer()),
    ]

    static func frameBytes(_ message: PeerMessage, requestID: UInt64 = 1) throws -> ByteBuffer {
        var out = ByteBuffer()
        try Frame(message, requestID: requestID).write(to: &out)
        return out
    }

    /// A frame header with arbitrary fields, for hostile-input tests.
    static func header(magic: UInt32 = Frame.magic, version: UInt16 = PeerProtocolVersion.current, type: UInt16,
                       flags: UInt16 = 0, requestID: UInt64 = 1, length: UInt32) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(magic); b.writeInteger(version); b.writeInteger(type)
        b.writeInteger(flags); b.writeInteger(requestID); b.writeInteger(length)
        return b
    }
}
