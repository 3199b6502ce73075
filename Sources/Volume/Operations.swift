import Glibc
import TwinCore

/// A file or directory as the layers above know it: its stable id and the brick-relative path
/// of one of its names ("" for the root). The FUSE adapter resolves paths from its inode table.
public struct NodeRef: Sendable, Equatable {
    public let id: UInt64
    public let path: String
    public init(id: UInt64, path: String) {
        self.id = id
        self.path = path
    }
    public static let root = NodeRef(id: StableID.root, path: "")
}

/// Who is asking (from the kernel request).
public struct RequestContext: Sendable {
    public var uid: uid_t
    public var gid: gid_t
    public var pid: pid_t
    public init(uid: uid_t, gid: gid_t, pid: pid_t) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }
    public static let root = RequestContext(uid: 0, gid: 0, pid: 0)
}

/// The attribute changes of one setattr request.
public struct AttrChanges: Sendable {
    public enum Time: Sendable { case now, at(timespec) }
    public var mode: mode_t?
    public var uid: uid_t?
    public var gid: gid_t?
    public var size: Int64?
    public var atime: Time?
    public var mtime: Time?
    public init(mode: mode_t? = nil, uid: uid_t? = nil, gid: gid_t? = nil, size: Int64? = nil,
                atime: Time? = nil, mtime: Time? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.size = size; self.atime = atime; self.mtime = mtime
    }
}

/// One directory entry handed to a readdir consumer. `attributes` is set for readdirplus.
public struct DirEntry {
    public var name: String
    public var id: UInt64
    public var type: UInt8
    public var nextOffset: Int64
    public var attributes: stat?
}

/// The operations the FUSE adapter calls, one per kernel request kind. Everything below this
/// line is free of FUSE; the local volume applies them to brick + journal, and the replicated
/// volume of a two-node cluster wraps the same interface (as GlusterFS stacks translators).
/// Every returned `stat` carries the stable id as `st_ino`.
public protocol VolumeOperations: AnyObject, Sendable {
    func lookup(parent: NodeRef, name: String) throws(FSError) -> stat
    func getattr(_ node: NodeRef, handle: UInt64?) throws(FSError) -> stat
    func setattr(_ node: NodeRef, handle: UInt64?, changes: AttrChanges) throws(FSError) -> stat
    func readlink(_ node: NodeRef) throws(FSError) -> String
    func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext) throws(FSError) -> stat
    func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext) throws(FSError) -> stat
    func link(_ node: NodeRef, newParent: NodeRef, newName: String) throws(FSError) -> stat
    /// A FIFO, socket or device node (`SpecialFile`); regular files come through `create`.
    func mknod(parent: NodeRef, name: String, mode: mode_t, rdev: UInt64, ctx: RequestContext) throws(FSError) -> stat
    func unlink(parent: NodeRef, name: String) throws(FSError)
    func rmdir(parent: NodeRef, name: String) throws(FSError)
    func rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError)
    /// A removal or rename in two steps: this call applies it here while the caller holds its
    /// namespace lock exclusively (paths cannot change under it), and returns what is left,
    /// which the caller runs once it released that lock. A replicated volume leaves the peer's
    /// round trip for then, so that it does not hold up every other request of the node.
    func beginNameChange(_ change: NameChange) throws(FSError) -> NameChangeFinish
    func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext) throws(FSError) -> (stat, UInt64)
    func open(_ node: NodeRef, flags: Int32) throws(FSError) -> UInt64
    func read(handle: UInt64, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int
    func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int
    func flush(handle: UInt64) throws(FSError)
    func fsync(handle: UInt64, dataOnly: Bool) throws(FSError)
    func release(handle: UInt64) throws(FSError)
    func fallocate(handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(FSError)
    func opendir(_ node: NodeRef) throws(FSError) -> UInt64
    /// Calls `emit` for entries from `offset` on until it returns false (buffer full).
    func readdir(handle: UInt64, offset: Int64, plus: Bool, emit: (DirEntry) -> Bool) throws(FSError)
    func releasedir(handle: UInt64)
    func statfs() throws(FSError) -> statvfs
    func fsyncdir(_ node: NodeRef) throws(FSError)
    func getxattr(_ node: NodeRef, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int
    func setxattr(_ node: NodeRef, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError)
    func listxattr(_ node: NodeRef) throws(FSError) -> [String]
    func removexattr(_ node: NodeRef, name: String) throws(FSError)
    /// Any open handle of `id`: the kernel may ask about a file unlinked while open.
    func openHandle(for id: UInt64) -> UInt64?
    /// The xattrs of a file unlinked while open, through an open handle of it (no name is left
    /// to replicate by: the peer's copy went with the name).
    func getxattr(handle: UInt64, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int
    func setxattr(handle: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError)
    func listxattr(handle: UInt64) throws(FSError) -> [String]
    func removexattr(handle: UInt64, name: String) throws(FSError)
}

/// A removal or a rename, for `VolumeOperations.beginNameChange`.
public enum NameChange: Sendable {
    case unlink(parent: NodeRef, name: String)
    case rmdir(parent: NodeRef, name: String)
    case rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32)
}

/// What is left of a name change once it is applied locally; run it exactly once, outside
/// the caller's namespace lock. Its error is the change's error.
public struct NameChangeFinish {
    private let run: () throws(FSError) -> Void
    public init(_ run: @escaping () throws(FSError) -> Void) { self.run = run }
    public static var nothing: NameChangeFinish { NameChangeFinish {} }
    public func callAsFunction() throws(FSError) { try run() }
}

extension VolumeOperations {
    /// One step: the whole change now, nothing left.
    public func beginNameChange(_ change: NameChange) throws(FSError) -> NameChangeFinish {
        switch change {
        case let .unlink(parent, name): try unlink(parent: parent, name: name)
        case let .rmdir(parent, name): try rmdir(parent: parent, name: name)
        case let .rename(parent, name, newParent, newName, flags):
            try rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags)
        }
        return .nothing
    }
}
