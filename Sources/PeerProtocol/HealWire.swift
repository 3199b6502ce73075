import NIOCore

// Reply payloads of the healing requests. They come from the peer, so they are decoded with
// the same bounds checks as messages: a name that could leave the brick, a hash of the wrong
// size or trailing bytes are refused before anything is created.

/// One entry of a directory as the sender's journal has it.
public struct ListedEntry: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case file = 1, directory = 2, symlink = 3, special = 4 }
    public var name: String
    public var id: UInt64
    public var kind: Kind
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: Int64
    public var mtimeNs: Int64
    /// XXH3-128 of the content (files, symlink targets); empty while unknown.
    public var hash: [UInt8]
    /// The symlink's target; empty for other kinds.
    public var target: String
    /// Being written, or its last change has not reached the receiver yet: not comparable now.
    public var busy: Bool
    /// A special file's device number (0 unless a device; on the wire for specials only).
    public var rdev: UInt64

    public init(name: String, id: UInt64, kind: Kind, mode: UInt32, uid: UInt32, gid: UInt32, size: Int64,
                mtimeNs: Int64, hash: [UInt8], target: String = "", busy: Bool = false, rdev: UInt64 = 0) {
        self.name = name; self.id = id; self.kind = kind; self.mode = mode; self.uid = uid; self.gid = gid
        self.size = size; self.mtimeNs = mtimeNs; self.hash = hash; self.target = target; self.busy = busy
        self.rdev = rdev
    }
}

/// A page of a directory listing (`listDir`): entries in byte order of their names.
public struct DirListing: Sendable, Equatable {
    public static let maxEntries = 4096
    public var entries: [ListedEntry]
    /// More entries follow the last one.
    public var more: Bool

    public init(entries: [ListedEntry], more: Bool) {
        self.entries = entries
        self.more = more
    }

    public func encode() -> ByteBuffer {
        var w = PayloadWriter()
        w.integer(UInt8(more ? 1 : 0))
        w.integer(UInt32(entries.count))
        for e in entries {
            w.string(e.name); w.integer(e.id); w.integer(e.kind.rawValue); w.integer(e.mode); w.integer(e.uid)
            w.integer(e.gid); w.integer(e.size); w.integer(e.mtimeNs); w.bytes(e.hash); w.string(e.target)
            w.integer(UInt8(e.busy ? 1 : 0))
            if e.kind == .special { w.integer(e.rdev) }
        }
        return w.buffer
    }

    public static func decode(_ b: ByteBuffer) throws(PeerProtocolError) -> DirListing {
        var r = PayloadReader(b, message: "listDir reply")
        let more = try r.bool("more")
        let n = Int(try r.integer("count", as: UInt32.self))
        guard n <= maxEntries else { throw r.malformed("count", "\(n) entries (at most \(maxEntries))") }
        var out: [ListedEntry] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let name = try PeerPath.validateName(utf8: r.bytes("name", max: PeerPath.maxNameBytes))
            let id = try r.stableID()
            guard let kind = ListedEntry.Kind(rawValue: try r.integer("kind", as: UInt8.self)) else {
                throw r.malformed("kind", "not a file, directory, symlink or special file")
            }
            let mode = try r.integer("mode", as: UInt32.self)
            guard mode <= 0o177777 else { throw r.malformed("mode", "not a file mode") }
            let uid = try r.integer("uid", as: UInt32.self), gid = try r.integer("gid", as: UInt32.self)
            let size = try r.integer("size", as: Int64.self)
            guard size >= 0 else { throw r.malformed("size", "negative") }
            let mtime = try r.integer("mtimeNs", as: Int64.self)
            let hash = try r.bytes("hash", max: PeerMessage.digestSize)
            guard hash.isEmpty || hash.count == PeerMessage.digestSize else { throw r.malformed("hash", "\(hash.count) bytes") }
            let target = try r.text("target", max: PeerMessage.maxSymlinkTarget)
            guard kind == .symlink ? !target.isEmpty : target.isEmpty else { throw r.malformed("target", "does not fit the kind") }
            let busy = try r.bool("busy")
            let rdev = kind == .special ? try r.integer("rdev", as: UInt64.self) : 0
            out.append(ListedEntry(name: name, id: id, kind: kind, mode: mode, uid: uid, gid: gid, size: size,
                                   mtimeNs: mtime, hash: hash, target: target, busy: busy, rdev: rdev))
        }
        try r.finish()
        return DirListing(entries: out, more: more)
    }
}

/// How one file is on the sender's brick (`fileState`).
public struct FileStateReport: Sendable, Equatable {
    public var exists: Bool
    public var size: Int64
    public var mtimeNs: Int64
    /// What the sender's journal records (empty: no clean record).
    public var journalHash: [UInt8]
    /// The hash of the bytes as read just now (empty unless asked to re-hash, or unreadable).
    public var bytesHash: [UInt8]
    /// Being written, owed to the receiver, or in split brain on the sender.
    public var busy: Bool
    public var splitBrain: Bool

    public init(exists: Bool, size: Int64 = 0, mtimeNs: Int64 = 0, journalHash: [UInt8] = [], bytesHash: [UInt8] = [],
                busy: Bool = false, splitBrain: Bool = false) {
        self.exists = exists; self.size = size; self.mtimeNs = mtimeNs; self.journalHash = journalHash
        self.bytesHash = bytesHash; self.busy = busy; self.splitBrain = splitBrain
    }

    public func encode() -> ByteBuffer {
        var w = PayloadWriter()
        w.integer(UInt8(exists ? 1 : 0)); w.integer(size); w.integer(mtimeNs); w.bytes(journalHash); w.bytes(bytesHash)
        w.integer(UInt8(busy ? 1 : 0)); w.integer(UInt8(splitBrain ? 1 : 0))
        return w.buffer
    }

    public static func decode(_ b: ByteBuffer) throws(PeerProtocolError) -> FileStateReport {
        var r = PayloadReader(b, message: "fileState reply")
        let exists = try r.bool("exists")
        let size = try r.integer("size", as: Int64.self), mtime = try r.integer("mtimeNs", as: Int64.self)
        guard size >= 0 else { throw r.malformed("size", "negative") }
        let jh = try r.bytes("journalHash", max: PeerMessage.digestSize)
        let bh = try r.bytes("bytesHash", max: PeerMessage.digestSize)
        for (f, h) in [("journalHash", jh), ("bytesHash", bh)] where !(h.isEmpty || h.count == PeerMessage.digestSize) {
            throw r.malformed(f, "\(h.count) bytes")
        }
        let busy = try r.bool("busy"), split = try r.bool("splitBrain")
        try r.finish()
        return FileStateReport(exists: exists, size: size, mtimeNs: mtime, journalHash: jh, bytesHash: bh, busy: busy, splitBrain: split)
    }
}

/// The answer to `volumeInfo`.
public struct VolumeInfo: Sendable, Equatable {
    /// The highest id counter of the asked node found in the sender's journal and brick (0: none).
    public var highestCounter: UInt64
    public var files: Int64
    public var bytes: Int64
    /// The volume root's mode bits and owner (a rebuilt brick takes them over).
    public var rootMode: UInt32
    public var rootUid: UInt32
    public var rootGid: UInt32

    public init(highestCounter: UInt64, files: Int64, bytes: Int64, rootMode: UInt32, rootUid: UInt32, rootGid: UInt32) {
        self.highestCounter = highestCounter; self.files = files; self.bytes = bytes
        self.rootMode = rootMode; self.rootUid = rootUid; self.rootGid = rootGid
    }

    public func encode() -> ByteBuffer {
        var w = PayloadWriter()
        w.integer(highestCounter); w.integer(files); w.integer(bytes); w.integer(rootMode); w.integer(rootUid); w.integer(rootGid)
        return w.buffer
    }

    public static func decode(_ b: ByteBuffer) throws(PeerProtocolError) -> VolumeInfo {
        var r = PayloadReader(b, message: "volumeInfo reply")
        let v = VolumeInfo(highestCounter: try r.integer("highestCounter"), files: try r.integer("files"), bytes: try r.integer("bytes"),
                           rootMode: try r.integer("rootMode"), rootUid: try r.integer("rootUid"), rootGid: try r.integer("rootGid"))
        guard v.rootMode <= 0o7777 else { throw r.malformed("rootMode", "not permission bits") }
        try r.finish()
        return v
    }
}
