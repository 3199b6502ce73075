import NIOCore

/// The message type in a frame header. Numbers are part of the wire format: never reuse one.
public enum MessageType: UInt16, Sendable, CaseIterable {
    // Link management.
    case hello = 1
    case authChallengeResponse = 2
    case authOK = 3
    case authFailed = 4
    case ping = 5
    case pong = 6
    case reply = 7
    // Replication: one per namespace change, plus file data.
    case mkdir = 16
    case create = 17
    case write = 18
    case commit = 19
    case unlink = 20
    case rmdir = 21
    case rename = 22
    case link = 23
    case symlink = 24
    case setattr = 25
    case setxattr = 26
    case removexattr = 27
    // Cluster coordination.
    case lock = 28
    case unlock = 29
    case pull = 30
    case catchUpState = 31
    // Healing: the namespace and files as the peer has them, and asks to send them.
    case listDir = 32
    case healFile = 33
    case fileState = 34
    case volumeInfo = 35
    case healInfo = 36
    case resolveSplit = 37
    case syncDir = 38
    case guarded = 39
    case noteSplit = 40
    case stageWhole = 41
    case mknod = 42
}

/// renameat2's flags, as a rename message carries them.
public struct RenameFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let noReplace = RenameFlags(rawValue: 1)
    /// The two names swap their entries (both must exist).
    public static let exchange = RenameFlags(rawValue: 2)
    public static let whiteout = RenameFlags(rawValue: 4)
}

/// The attribute changes of a mirrored setattr. Times are absolute nanoseconds since the epoch:
/// the sender resolves "now" to the time it applied, so both bricks end up identical.
public struct AttrUpdate: Sendable, Equatable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: Int64?
    public var atimeNs: Int64?
    public var mtimeNs: Int64?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: Int64? = nil,
                atimeNs: Int64? = nil, mtimeNs: Int64? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.size = size; self.atimeNs = atimeNs; self.mtimeNs = mtimeNs
    }
}

/// One message on the peer link. Paths are brick-relative ("" is the root) and were checked by
/// `PeerPath` when decoded; ids are stable ids (see TwinCore's `StableID`).
public enum PeerMessage: Sendable, Equatable {
    /// Sent first by both sides; `nonce` is 32 fresh random bytes (see `Handshake`).
    case hello(node: String, volume: String, protocolVersion: UInt16, nonce: [UInt8])
    /// The sender's HMAC-SHA256 proof that it holds the cluster secret.
    case authChallengeResponse(proof: [UInt8])
    case authOK
    case authFailed(reason: String)
    case ping
    case pong

    case mkdir(parentPath: String, name: String, mode: UInt32, uid: UInt32, gid: UInt32, stableID: UInt64)
    case create(parentPath: String, name: String, mode: UInt32, uid: UInt32, gid: UInt32, stableID: UInt64)
    /// At most `PeerMessage.maxWriteChunk` bytes of file data at `offset`.
    case write(path: String, stableID: UInt64, offset: Int64, data: ByteBuffer)
    /// "fsync the file, check it has `size` bytes hashing to `xxh128` (canonical bytes), set mtime".
    case commit(path: String, stableID: UInt64, size: Int64, xxh128: [UInt8], mtimeNs: Int64)
    case unlink(parentPath: String, name: String)
    case rmdir(parentPath: String, name: String)
    /// `flags` are renameat2 flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
    case rename(fromParent: String, fromName: String, toParent: String, toName: String, flags: UInt32)
    case link(path: String, newParent: String, newName: String)
    case symlink(parentPath: String, name: String, target: String, uid: UInt32, gid: UInt32, stableID: UInt64)
    case setattr(path: String, changes: AttrUpdate)
    /// `flags` are XATTR_CREATE / XATTR_REPLACE.
    case setxattr(path: String, name: String, value: [UInt8], flags: UInt32)
    case removexattr(path: String, name: String)
    /// Takes the cluster-wide name locks `keys` ("<parent id>/<name>") on the node that serves
    /// them (ordinal 1) for `leaseMs` milliseconds or until `unlock(token)`: racing namespace
    /// changes of one name on both nodes are applied in one order on both bricks.
    case lock(token: UInt64, keys: [String], leaseMs: UInt32)
    case unlock(token: UInt64)
    /// "If you owe me file `stableID` (changed while we could not talk), send it now": asked
    /// before this node serves a file the peer may hold a newer copy of.
    case pull(stableID: UInt64)
    /// The sender's catch-up towards the receiver: namespace changes and files still to send.
    case catchUpState(ops: UInt64, files: UInt64)
    /// "List directory `dirID` as your journal has it": names after `after` (in byte order), at
    /// most `limit`; the reply payload is a `DirListing`.
    case listDir(dirID: UInt64, after: String, limit: UInt32)
    /// "Send me file `stableID` whole, now, if your bytes hash to `expected`" (16 zero bytes:
    /// to your journal's hash). The sender re-hashes its copy first and never sends bytes that
    /// do not match (answered EIO), so a heal cannot spread a bad copy.
    case healFile(stableID: UInt64, expected: [UInt8])
    /// "How is file `stableID` on your brick?" With `rehash`, the bytes are read and hashed.
    /// The reply payload is a `FileStateReport`.
    case fileState(stableID: UInt64, rehash: Bool)
    /// "What is the highest id counter of node `ordinal` your journal knows?" (a node on a new,
    /// empty brick must never hand out an id it gave out before). Reply payload: `VolumeInfo`.
    case volumeInfo(ordinal: UInt8)
    /// "Your heal state, as JSON" (`twinfs heal info` shows both nodes). Reply payload: UTF-8 JSON.
    case healInfo(summary: Bool)
    /// Split-brain resolution of file `stableID`: `role` 1 = "yours loses: keep it in quarantine
    /// and take mine"; 2 = "yours wins: send it to me".
    case resolveSplit(stableID: UInt64, role: UInt8)
    /// fsync of a directory (a client's fsyncdir): the peer makes the directory's entries and
    /// its journal durable before it answers.
    case syncDir(path: String)
    /// A change the peer may receive late (a replay of an owed change, one of `guardable`):
    /// applied only if the peer's entries at the expected paths are still the ones the sender
    /// saw, so a replay never deletes, replaces or changes a version its sender did not see,
    /// and never creates in a directory other than the one its sender created in.
    indirect case guarded(expect: [EntryExpectation], change: PeerMessage)
    /// The sender found this entry in split brain while replaying or sending a change the
    /// receiver refused: the receiver lists it too (id 0: known by path only), so both nodes
    /// say SPLIT-BRAIN for it and neither serves it as settled.
    case noteSplit(stableID: UInt64, path: String, reason: String)
    /// The start of a whole-file send (catch-up, pull, heal) of file `stableID` at
    /// `parentPath/name` (created empty, as `create`, if missing): the `write`s that follow go
    /// to a private staged copy with this mode and owner and `size` bytes, which replaces the
    /// live file in one rename at the verified `commit`. Until then readers keep the old
    /// version whole; a send that breaks off leaves the live file as it was.
    case stageWhole(parentPath: String, name: String, mode: UInt32, uid: UInt32, gid: UInt32, stableID: UInt64, size: Int64)
    /// A special file (FIFO, socket, character or block device) with its device number.
    case mknod(parentPath: String, name: String, mode: UInt32, rdev: UInt64, uid: UInt32, gid: UInt32, stableID: UInt64)
    /// The answer to request `requestID`: errno 0 for success, with an optional result.
    case reply(requestID: UInt64, errno: Int32, payload: ByteBuffer?)

    public static let nonceSize = 32
    public static let proofSize = 32
    public static let digestSize = 16
    /// `healFile`'s `expected` meaning "whatever your journal records" (16 zero bytes: no
    /// XXH3-128 of real data is expected to be all zeros).
    public static let journalHashOnPeer = [UInt8](repeating: 0, count: digestSize)
    public static let maxWriteChunk = 4 << 20
    /// Linux's XATTR_SIZE_MAX and XATTR_NAME_MAX.
    public static let maxXattrValue = 65536
    public static let maxXattrName = 255
    /// PATH_MAX without its NUL.
    public static let maxSymlinkTarget = 4095
    public static let maxReasonBytes = 512
    /// Node and volume names, as the config accepts them.
    public static let maxLabelBytes = 64
    /// Name locks per request (a rename takes two) and the longest key ("<id>/<name>").
    public static let maxLockKeys = 4
    public static let maxLockKey = 21 + 255

    public var type: MessageType {
        switch self {
        case .hello: return .hello
        case .authChallengeResponse: return .authChallengeResponse
        case .authOK: return .authOK
        case .authFailed: return .authFailed
        case .ping: return .ping
        case .pong: return .pong
        case .mkdir: return .mkdir
        case .create: return .create
        case .write: return .write
        case .commit: return .commit
        case .unlink: return .unlink
        case .rmdir: return .rmdir
        case .rename: return .rename
        case .link: return .link
        case .symlink: return .symlink
        case .setattr: return .setattr
        case .setxattr: return .setxattr
        case .removexattr: return .removexattr
        case .reply: return .reply
        case .lock: return .lock
        case .unlock: return .unlock
        case .pull: return .pull
        case .catchUpState: return .catchUpState
        case .listDir: return .listDir
        case .healFile: return .healFile
        case .fileState: return .fileState
        case .volumeInfo: return .volumeInfo
        case .healInfo: return .healInfo
        case .resolveSplit: return .resolveSplit
        case .syncDir: return .syncDir
        case .guarded: return .guarded
        case .noteSplit: return .noteSplit
        case .stageWhole: return .stageWhole
        case .mknod: return .mknod
        }
    }
}

/// What a node saw at a name when it made a change its peer may get late.
public struct EntryExpectation: Sendable, Equatable {
    public var path: String
    public var stableID: UInt64
    /// The file's XXH3-128 as the sender's journal had it; empty for a directory, a symlink or
    /// a file without a clean hash (then only the id is compared).
    public var xxh128: [UInt8]

    public init(path: String, stableID: UInt64, xxh128: [UInt8]) {
        self.path = path
        self.stableID = stableID
        self.xxh128 = xxh128
    }
}

extension PeerMessage {
    /// Guarded expectations at most per message (a rename names a source, a target and the
    /// directory it moves into; protocol 5).
    public static let maxExpectations = 3

    /// The changes a `guarded` message may carry: removals and renames (the entries they
    /// remove or replace), attribute and xattr changes (the entry they change), and creates
    /// (the directory they create in), so that a late replay never lands on another entry
    /// that took the name meanwhile.
    public static let guardable: Set<MessageType> = [
        .unlink, .rmdir, .rename, .setattr, .setxattr, .removexattr, .create, .mkdir, .symlink, .mknod
    ]

    /// The change itself, without its guard.
    public var unguarded: PeerMessage {
        if case let .guarded(_, change) = self { return change }
        return self
    }
}
