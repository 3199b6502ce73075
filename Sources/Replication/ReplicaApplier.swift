import BrickStore
import Glibc
import Journal
import Logging
import NIOCore
import PeerProtocol
import TwinCore
import Volume

/// The receiving side of replication: applies the peer's replication messages to this node's
/// brick and journal through `LocalVolume`, so that both bricks carry the same names, bytes,
/// owners, modes and stable ids.
///
/// - Paths arrive brick-relative and are checked again with `PeerPath` (the decoder already
///   did): "..", absolute paths, NUL and `.twinfs/...` are refused with `EINVAL` and a log
///   line, before any file is touched. The volume then resolves every path beneath the brick
///   without following symlinks.
/// - New entries get the sender's stable id and the owner the message names.
/// - `create` opens a handle kept in a bounded table keyed by stable id; `write` goes through
///   it (or opens the file by path, checking its id); `commit` makes the bytes durable through
///   the volume (fsync, hash recorded in the journal), compares the journal's XXH3-128 and size
///   with the sender's and releases the handle. A mismatch is answered `EIO` and logged as
///   critical: a commit is never accepted without both bricks agreeing.
/// - Cheap idempotence: mkdir, create and symlink of an entry that already exists with the
///   same id (and kind) succeed; a link that already exists with the same id succeeds.
///
/// `apply` is synchronous and blocks on disk I/O (fsync, hashing, journal commits). Callers
/// on Swift concurrency's cooperative pool should hop to a thread that may block.
/// Thread-safe: messages may be applied concurrently. Renames and removals exclude every other
/// path-resolving message for their duration (as the FUSE adapter's namespace lock does).
public final class ReplicaApplier: Sendable {
    public struct Statistics: Sendable, Equatable {
        /// Messages answered with errno 0.
        public var applied = 0
        /// Messages answered with an errno (refusals and hash mismatches included).
        public var failed = 0
        /// Paths, names or fields refused before anything was touched.
        public var refused = 0
        /// Commits whose size or XXH3-128 differed from the sender's.
        public var hashMismatches = 0
        /// The latest mismatched commits, newest last (at most 16): the files to heal.
        public var recentMismatches: [Mismatch] = []
    }

    public struct Mismatch: Sendable, Equatable {
        public var path: String
        public var stableID: UInt64
        public var expectedSize: Int64
        public var expectedHash: [UInt8]
        /// What this node's journal recorded for its brick's bytes (nil: no clean record).
        public var localSize: Int64?
        public var localHash: [UInt8]?
    }

    public let volume: LocalVolume
    /// Files kept open between create/write and commit; the least recently used idle one is
    /// released (its content committed locally) when more are open.
    public let maxOpenFiles: Int
    private let log: Logger
    // Lock order: namespace -> handles, namespace -> recent; then the local volume's and the
    // journal's own locks. handles, recent, stats and abandonedHandler are leaves (a handle is
    // closed only after `handles` is released).
    /// Guards the open receipts by stable id.
    private let handles = Locked(HandleTable())
    /// Renames and removals hold it exclusively, every other path-resolving message shared.
    private let namespace = RWLocked<Int>(0)
    /// Guards the counters. Leaf.
    private let stats = Locked(Statistics())
    /// Guards the ids created moments ago. Leaf, taken inside `namespace`.
    private let recent = Locked(RecentIDs(capacity: 65536))
    /// Guards the ids whose creation is under way here. Leaf, taken inside `namespace`.
    private let creating = Locked<Set<UInt64>>([])
    /// Told of each file whose receipt broke off before its commit (see `abandon`).
    private let abandonedHandler = Locked<(@Sendable (UInt64) -> Void)?>(nil)
    /// Whether this node owes the peer a change of file id's owner or mode. Leaf.
    private let owesOwnerOrMode = Locked<(@Sendable (UInt64) -> Bool)?>(nil)

    public init(volume: LocalVolume, maxOpenFiles: Int = 256,
                logger: Logger = Logger(label: "twinfs.replica")) {
        self.volume = volume
        self.maxOpenFiles = max(1, maxOpenFiles)
        self.log = logger
    }

    public var statistics: Statistics { stats.with { $0 } }

    /// Files currently held open by the applier.
    public var openFiles: Int { handles.with { $0.byID.count } }
    /// The ids of the files being received (names what keeps a pair from settling).
    public var openIDs: [UInt64] { handles.with { $0.byID.keys.sorted() } }

    /// Applies one message and answers `.reply(requestID: 0, errno:, payload: nil)`: errno 0 on
    /// success, else the errno of the failure. (`PeerListener` rewrites the request id.)
    public func apply(_ msg: PeerMessage) -> PeerMessage {
        apply(msg, requestID: 0)
    }

    public func apply(_ msg: PeerMessage, requestID: UInt64) -> PeerMessage {
        let errno: Int32
        do throws(FSError) {
            try dispatch(msg)
            errno = 0
        } catch {
            errno = error.errno
        }
        stats.with { s in if errno == 0 { s.applied += 1 } else { s.failed += 1 } }
        return .reply(requestID: requestID, errno: errno, payload: nil)
    }

    /// Called with the id of every file whose receipt broke off before the sender's commit:
    /// its bytes are not a verified copy (the healer fetches the file whole).
    public func onAbandoned(_ handler: @escaping @Sendable (UInt64) -> Void) {
        abandonedHandler.with { $0 = handler }
    }

    /// See `commitStaged`: a staged copy keeps the live file's owner and mode while this
    /// node owes the peer a change of them.
    public func owesOwnerOrMode(_ check: @escaping @Sendable (UInt64) -> Bool) {
        owesOwnerOrMode.with { $0 = check }
    }

    /// Releases every handle the applier holds. A file whose commit never came stays what it
    /// is, an incomplete replica awaiting the peer's copy. For shutdown, or when the link to
    /// the sender is lost mid-file (the sender may be dead: its files must not stay open here).
    public func releaseAll() {
        let all = handles.with { t -> [OpenReplica] in
            let all = Array(t.byID.values)
            for e in all { t.drop(e) }
            return all.filter { $0.users == 0 }
        }
        for e in all { closeHandle(e) }
    }

    /// Releases, as `releaseAll` does, the idle receipts whose id `stale` picks (called
    /// outside the table's lock): files the sender will never commit.
    public func release(where stale: (UInt64) -> Bool) {
        let idle = handles.with { t in t.byID.values.filter { $0.users == 0 && !$0.committed }.map(\.id) }
        let picked = Set(idle.filter(stale))
        guard !picked.isEmpty else { return }
        let gone = handles.with { t -> [OpenReplica] in
            let gone = t.byID.values.filter { picked.contains($0.id) && $0.users == 0 }
            for e in gone {
                t.byID[e.id] = nil
                e.retired = true
            }
            return gone
        }
        for e in gone { closeHandle(e) }
    }

    // MARK: - Dispatch

    private func dispatch(_ msg: PeerMessage) throws(FSError) {
        switch msg {
        case let .mkdir(parentPath, name, mode, uid, gid, stableID):
            try mkdir(parentPath, name, mode: mode, uid: uid, gid: gid, id: stableID)
            try durable(parentPath)
        case let .create(parentPath, name, mode, uid, gid, stableID):
            try create(parentPath, name, mode: mode, uid: uid, gid: gid, id: stableID)
        case let .write(path, stableID, offset, data):
            try write(path, id: stableID, offset: offset, data: data)
        case let .commit(path, stableID, size, xxh128, mtimeNs):
            try commit(path, id: stableID, size: size, hash: xxh128, mtimeNs: mtimeNs)
        case let .unlink(parentPath, name):
            try remove(parentPath, name, directory: false)
            try durable(parentPath)
        case let .rmdir(parentPath, name):
            try remove(parentPath, name, directory: true)
            try durable(parentPath)
        case let .rename(fromParent, fromName, toParent, toName, flags):
            try rename(fromParent, fromName, toParent, toName, flags: flags)
            try durable(fromParent, toParent)
        case let .link(path, newParent, newName):
            try link(path, newParent, newName)
            try durable(newParent)
        case let .symlink(parentPath, name, target, uid, gid, stableID):
            try symlink(parentPath, name, target: target, uid: uid, gid: gid, id: stableID)
            try durable(parentPath)
        case let .setattr(path, changes):
            try setattr(path, changes)
        case let .setxattr(path, name, value, flags):
            try setxattr(path, name, value: value, flags: flags)
        case let .removexattr(path, name):
            try removexattr(path, name)
        case let .syncDir(path):
            try syncDir(path)
        case let .mknod(parentPath, name, mode, rdev, uid, gid, stableID):
            try mknod(parentPath, name, mode: mode, rdev: rdev, uid: uid, gid: gid, id: stableID)
            try durable(parentPath)
        case let .stageWhole(parent, name, mode, uid, gid, id, size):
            try stageWhole(parent, name, mode: mode, uid: uid, gid: gid, id: id, size: size)
        case .hello, .authChallengeResponse, .authOK, .authFailed, .ping, .pong, .reply,
             .lock, .unlock, .pull, .catchUpState, .listDir, .healFile, .fileState, .volumeInfo, .healInfo, .resolveSplit, .guarded, .noteSplit:
            log.error("peer sent a \(msg.type) message as a replication request; refused")
            stats.with { $0.refused += 1 }
            throw FSError.invalid
        }
    }

    // MARK: - Checks

    /// A brick-relative path from the peer, refused (EINVAL, logged) unless `PeerPath` accepts it.
    private func checked(_ op: MessageType, path: String, allowRoot: Bool) throws(FSError) -> String {
        do { return try PeerPath.validate(path, allowRoot: allowRoot) } catch {
            throw refusal(op, "\(error)")
        }
    }

    /// A directory and a name in it; returns the joined brick-relative path.
    private func checked(_ op: MessageType, parent: String, name: String) throws(FSError) -> String {
        do {
            _ = try PeerPath.validate(parent, allowRoot: true)
            return try PeerPath.join(parent, name)
        } catch {
            throw refusal(op, "\(error)")
        }
    }

    private func checkedID(_ op: MessageType, _ id: UInt64) throws(FSError) {
        if id <= StableID.root { throw refusal(op, "stable id \(id) is not a file or directory id") }
    }

    /// Logs and counts a refusal; the caller throws the result (EINVAL).
    private func refusal(_ op: MessageType, _ why: String) -> FSError {
        log.error("refused the peer's \(op): \(why)")
        stats.with { $0.refused += 1 }
        return FSError.invalid
    }

    /// Logs a failure to apply (not a refusal) and passes it on.
    private func failed(_ op: MessageType, _ path: String, _ error: FSError) -> FSError {
        log.warning("replicated \(op) of \(path.debugDescription) failed: \(error) (errno \(error.errno))")
        return error
    }

    // MARK: - Resolution

    /// The stable id of an existing brick-relative path: its id xattr (always current: the
    /// journal's namespace results are committed in the background), else the journal's names
    /// walked from the root.
    private func resolve(_ rel: String) throws(FSError) -> UInt64 {
        if rel.isEmpty { return StableID.root }
        if let id = volume.brick.readID(rel: rel) { return id }
        let found: UInt64?
        do { found = try volume.journal.id(atPath: rel) } catch { throw FSError.io }
        guard let id = found else { throw FSError.notFound }
        // The journal may be ahead of a brick entry that lost its xattr; the brick must hold it.
        _ = try volume.brick.lstat(rel)
        return id
    }

    private func node(_ rel: String) throws(FSError) -> NodeRef {
        NodeRef(id: try resolve(rel), path: rel)
    }

    /// What already sits at `rel`: nil if nothing.
    private func existing(_ rel: String) throws(FSError) -> (stat, UInt64?)? {
        do throws(FSError) { return try volume.brick.statAndID(rel) } catch where error.errno == ENOENT { return nil }
    }

    /// Claims `id` for a new entry at `rel`, refusing an id this node already gives to another
    /// entry (two entries with one id would corrupt the journal's rows). The journal alone is
    /// not enough: namespace results are committed in the background, so an id being created
    /// now is refused, and for one created moments ago the journal is read once its queue is
    /// written. `release` the claim when the creation ends.
    private func claim(_ op: MessageType, _ rel: String, _ id: UInt64) throws(FSError) -> IDClaim {
        // Ids are never reused: an id this node already holds under another name is that very
        // entry, placed by an earlier replay whose answer was lost (and renamed since) or by a
        // rebuild's walk. Answered EALREADY, which a replay takes as done; never a second entry.
        guard creating.with({ $0.insert(id).inserted }) else {
            log.notice("peer's \(op) of \(rel.debugDescription) (id \(id)): this node is creating that entry now; already applied")
            throw FSError(EALREADY)
        }
        let rec: InodeRecord?
        // Created here moments ago: its row may not be readable yet. Created and removed
        // since, it is not held: a whole-file send brings back a file this node removed while
        // the sender kept and changed it (seed 2958: refused EALREADY for as long as the id
        // stayed in `recent`, so the sender owed the file forever).
        let fresh = recent.with { $0.contains(id) }
        do {
            if fresh { try volume.journal.submit([], wait: .written) }
            rec = try volume.journal.inode(id)
        } catch {
            creating.with { _ = $0.remove(id) }
            throw FSError.io
        }
        // A row whose file vanished from the brick under this very name (the caller found
        // nothing there): the peer's copy restores it under its own id.
        if rec != nil, fresh || ((try? volume.journal.path(of: id)) ?? nil) != rel {
            creating.with { _ = $0.remove(id) }
            log.notice("peer's \(op) of \(rel.debugDescription) (id \(id)): this node holds that entry under another name already; already applied")
            throw FSError(EALREADY)
        }
        return IDClaim(id: id)
    }

    struct IDClaim { let id: UInt64 }

    /// Ends a claim; a created entry's id is remembered until its row is surely readable.
    private func release(_ claim: IDClaim, created: Bool) {
        if created { recent.with { _ = $0.insert(claim.id) } }
        creating.with { _ = $0.remove(claim.id) }
    }

    /// Runs `create` with `id` claimed.
    private func withClaim(_ op: MessageType, _ rel: String, _ id: UInt64, _ create: () throws(FSError) -> Void) throws(FSError) {
        let c = try claim(op, rel, id)
        do throws(FSError) { try create() } catch {
            release(c, created: false)
            throw error
        }
        release(c, created: true)
    }

    private func shared<R>(_ body: () throws(FSError) -> R) throws(FSError) -> R {
        try namespace.read { (_: Int) throws(FSError) -> R in try body() }
    }

    private func exclusive<R>(_ body: () throws(FSError) -> R) throws(FSError) -> R {
        try namespace.write { (_: inout Int) throws(FSError) -> R in try body() }
    }

    private static func context(uid: UInt32, gid: UInt32) -> RequestContext {
        RequestContext(uid: uid_t(uid), gid: gid_t(gid), pid: 0)
    }

    // MARK: - Namespace

    private func mkdir(_ parent: String, _ name: String, mode: UInt32, uid: UInt32, gid: UInt32, id: UInt64) throws(FSError) {
        let rel = try checked(.mkdir, parent: parent, name: name)
        try checkedID(.mkdir, id)
        do throws(FSError) {
            try shared { () throws(FSError) in
                if let (st, found) = try existing(rel) {
                    if found == id && st.kind == .directory { return }   // already applied
                    log.error("peer's mkdir of \(rel.debugDescription) (id \(id)): this node already has a \(st.kind) there with id \(found.map { String($0) } ?? "none")")
                    throw FSError.exists
                }
                let p = try node(parent)
                try withClaim(.mkdir, rel, id) { () throws(FSError) in
                    _ = try volume.mkdir(parent: p, name: name, mode: mode_t(mode & 0o7777),
                                         ctx: Self.context(uid: uid, gid: gid), id: id)
                }
            }
        } catch {
            throw failed(.mkdir, rel, error)
        }
    }

    private func symlink(_ parent: String, _ name: String, target: String, uid: UInt32, gid: UInt32, id: UInt64) throws(FSError) {
        let rel = try checked(.symlink, parent: parent, name: name)
        try checkedID(.symlink, id)
        let t = target.utf8
        if t.isEmpty || t.count > PeerMessage.maxSymlinkTarget || t.contains(0) {
            throw refusal(.symlink, "symlink target of \(rel.debugDescription) is empty, too long or holds a NUL byte")
        }
        do throws(FSError) {
            try shared { () throws(FSError) in
                if let (st, found) = try existing(rel) {
                    if found == id && st.kind == .symlink,
                       (try? volume.readlink(NodeRef(id: id, path: rel))).map({ Array($0.utf8) == Array(t) }) == true {
                        return
                    }
                    throw FSError.exists
                }
                let p = try node(parent)
                try withClaim(.symlink, rel, id) { () throws(FSError) in
                    _ = try volume.symlink(parent: p, name: name, target: target, ctx: Self.context(uid: uid, gid: gid), id: id)
                }
            }
        } catch {
            throw failed(.symlink, rel, error)
        }
    }

    private func mknod(_ parent: String, _ name: String, mode: UInt32, rdev: UInt64, uid: UInt32, gid: UInt32, id: UInt64) throws(FSError) {
        let rel = try checked(.mknod, parent: parent, name: name)
        try checkedID(.mknod, id)
        do throws(FSError) {
            try shared { () throws(FSError) in
                if let (st, found) = try existing(rel) {
                    // Already applied: the same id, and a special file of the same type.
                    if found == id && st.st_mode & S_IFMT == mode_t(mode) & S_IFMT { return }
                    throw FSError.exists
                }
                let p = try node(parent)
                try withClaim(.mknod, rel, id) { () throws(FSError) in
                    _ = try volume.mknod(parent: p, name: name, mode: mode_t(mode), rdev: rdev,
                                         ctx: Self.context(uid: uid, gid: gid), id: id)
                }
            }
        } catch {
            throw failed(.mknod, rel, error)
        }
    }

    private func link(_ path: String, _ newParent: String, _ newName: String) throws(FSError) {
        let from = try checked(.link, path: path, allowRoot: false)
        let to = try checked(.link, parent: newParent, name: newName)
        do throws(FSError) {
            try shared { () throws(FSError) in
                let source = try node(from)
                if let (_, found) = try existing(to) {
                    if found == source.id { return }   // already applied
                    throw FSError.exists
                }
                let p = try node(newParent)
                _ = try volume.link(source, newParent: p, newName: newName)
            }
        } catch {
            throw failed(.link, to, error)
        }
    }

    private func remove(_ parent: String, _ name: String, directory: Bool) throws(FSError) {
        let op: MessageType = directory ? .rmdir : .unlink
        let rel = try checked(op, parent: parent, name: name)
        do throws(FSError) {
            try exclusive { () throws(FSError) in
                let p = try node(parent)
                if directory {
                    try volume.rmdir(parent: p, name: name)
                } else {
                    try volume.unlink(parent: p, name: name)
                }
            }
        } catch {
            throw failed(op, rel, error)
        }
    }

    private func rename(_ fromParent: String, _ fromName: String, _ toParent: String, _ toName: String,
                        flags: UInt32) throws(FSError) {
        let from = try checked(.rename, parent: fromParent, name: fromName)
        _ = try checked(.rename, parent: toParent, name: toName)
        do throws(FSError) {
            try exclusive { () throws(FSError) in
                let p1 = try node(fromParent)
                let p2 = try node(toParent)
                try volume.rename(parent: p1, name: fromName, newParent: p2, newName: toName, flags: flags)
            }
        } catch {
            throw failed(.rename, from, error)
        }
    }

    // MARK: - Attributes

    private func setattr(_ path: String, _ u: AttrUpdate) throws(FSError) {
        let rel = try checked(.setattr, path: path, allowRoot: true)
        if let m = u.mode, m & ~0o177777 != 0 { throw refusal(.setattr, "mode 0o\(String(m, radix: 8)) is not a file mode") }
        if let s = u.size, s < 0 { throw refusal(.setattr, "negative size \(s)") }
        var changes = AttrChanges()
        changes.mode = u.mode.map { mode_t($0 & 0o7777) }
        changes.uid = u.uid.map { uid_t($0) }
        changes.gid = u.gid.map { gid_t($0) }
        changes.size = u.size
        changes.atime = u.atimeNs.map { .at(Self.timespec(ns: $0)) }
        changes.mtime = u.mtimeNs.map { .at(Self.timespec(ns: $0)) }
        do throws(FSError) {
            try shared { () throws(FSError) in
                let n = try node(rel)
                // A truncate of a file being received goes through its handle (shared content state).
                var open = u.size != nil ? use(n.id) : nil
                if let e = open, e.staged {
                    // The live file is truncated; the copy being staged is sent again after it.
                    handles.with { _ in e.superseded = true }
                    done(e)
                    open = nil
                }
                defer { if let e = open { done(e) } }
                _ = try volume.setattr(n, handle: open?.handle, changes: changes)
            }
        } catch {
            throw failed(.setattr, rel, error)
        }
    }

    private func checkedXattr(_ op: MessageType, _ name: String) throws(FSError) {
        let b = name.utf8
        if b.isEmpty || b.count > PeerMessage.maxXattrName || b.contains(0) {
            throw refusal(op, "xattr name is empty, longer than \(PeerMessage.maxXattrName) bytes or holds a NUL byte")
        }
    }

    private func setxattr(_ path: String, _ name: String, value: [UInt8], flags: UInt32) throws(FSError) {
        let rel = try checked(.setxattr, path: path, allowRoot: true)
        try checkedXattr(.setxattr, name)
        if value.count > PeerMessage.maxXattrValue { throw refusal(.setxattr, "xattr value of \(value.count) bytes") }
        // XATTR_CREATE = 1, XATTR_REPLACE = 2.
        if flags & ~3 != 0 { throw refusal(.setxattr, "xattr flags 0x\(String(flags, radix: 16))") }
        do throws(FSError) {
            try shared { () throws(FSError) in
                let n = try node(rel)
                let result: Result<Void, FSError> = value.withUnsafeBytes { v in
                    Result { () throws(FSError) in try volume.setxattr(n, name: name, value: v, flags: Int32(flags)) }
                }
                try result.get()
            }
        } catch {
            throw failed(.setxattr, rel, error)
        }
    }

    private func removexattr(_ path: String, _ name: String) throws(FSError) {
        let rel = try checked(.removexattr, path: path, allowRoot: true)
        try checkedXattr(.removexattr, name)
        do throws(FSError) {
            try shared { () throws(FSError) in
                try volume.removexattr(try node(rel), name: name)
            }
        } catch {
            throw failed(.removexattr, rel, error)
        }
    }

    private func syncDir(_ path: String) throws(FSError) {
        let rel = try checked(.syncDir, path: path, allowRoot: true)
        do throws(FSError) {
            try shared { () throws(FSError) in try volume.fsyncdir(try node(rel)) }
        } catch {
            throw failed(.syncDir, rel, error)
        }
    }

    /// A namespace change applied for the peer is on this disk before the reply: its
    /// directories are fsynced and the journal is made durable. Otherwise a power cut here
    /// right after the reply loses a change the sender has already forgotten, and the two
    /// nodes differ with nothing owed. (Not under the namespace lock: other changes go on.)
    /// A directory gone meanwhile (renamed or removed by a later change) has nothing to keep.
    private func durable(_ dirs: String...) throws(FSError) {
        for d in Set(dirs) {
            do throws(FSError) { try volume.brick.syncDirectory(d) } catch where error.errno == ENOENT || error.errno == ENOTDIR {
                continue
            } catch {
                log.error("fsync of directory \(d.debugDescription) failed: \(error)")
                throw error
            }
        }
        try submit([], wait: .durable)
    }

    static func timespec(ns: Int64) -> Glibc.timespec {
        var sec = ns / 1_000_000_000
        var rem = ns % 1_000_000_000
        if rem < 0 { sec -= 1; rem += 1_000_000_000 }
        return Glibc.timespec(tv_sec: Int(sec), tv_nsec: Int(rem))
    }

    // MARK: - File content

    /// What a create finds already here under the name, with the same id, is for.
    private enum ExistingFile {
        /// A create sent again (its answer was lost, or catch-up replays it): the file is
        /// here already, nothing changes. Its bytes, if owed, follow as a whole-file send,
        /// which opens its own receipt; this node may hold them whole already (seed 348).
        case leftAsIs
        /// The start of a whole-file send received in place (`stageWhole`): its bytes follow.
        case receivedInPlace
    }

    private func create(_ parent: String, _ name: String, mode: UInt32, uid: UInt32, gid: UInt32, id: UInt64,
                        existing use: ExistingFile = .leftAsIs) throws(FSError) {
        let rel = try checked(.create, parent: parent, name: name)
        try checkedID(.create, id)
        do throws(FSError) {
            try shared { () throws(FSError) in
                if let (st, current) = try existing(rel) {
                    guard current == id && st.kind == .file else {
                        log.error("peer's create of \(rel.debugDescription) (id \(id)): this node already has a \(st.kind) there with id \(current.map { String($0) } ?? "none")")
                        throw FSError.exists
                    }
                    // A receipt here would mark the file incomplete until a commit that, for a
                    // create sent again, may never come.
                    if use == .receivedInPlace { done(try acquire(id, path: rel)) }
                    return
                }
                let p = try node(parent)
                try withClaim(.create, rel, id) { () throws(FSError) in
                    try markIncomplete(id)
                    let (_, h) = try volume.create(parent: p, name: name, mode: mode_t(mode & 0o7777), flags: O_RDWR,
                                                   ctx: Self.context(uid: uid, gid: gid), id: id)
                    insert(id, handle: h)
                }
            }
        } catch {
            throw failed(.create, rel, error)
        }
    }

    private func write(_ path: String, id: UInt64, offset: Int64, data: ByteBuffer) throws(FSError) {
        let rel = try checked(.write, path: path, allowRoot: false)
        try checkedID(.write, id)
        if offset < 0 || data.readableBytes > PeerMessage.maxWriteChunk {
            throw refusal(.write, "write of \(data.readableBytes) bytes at offset \(offset) to \(rel.debugDescription)")
        }
        do throws(FSError) {
            let e = try acquireLocked(id, path: rel)
            defer { done(e) }
            let result: Result<Int, FSError> = data.withUnsafeReadableBytes { bytes in
                Result { () throws(FSError) -> Int in try volume.write(handle: e.handle, offset: offset, data: bytes) }
            }
            let n: Int
            do throws(FSError) { n = try result.get() } catch {
                // This copy is now missing bytes the sender has (disk full, read-only, I/O
                // error): it stops being received; the sender owes the file and sends it whole.
                retireAfterUse(e)
                throw error
            }
            if n != data.readableBytes {
                log.error("replicated write to \(rel.debugDescription) stored \(n) of \(data.readableBytes) bytes at offset \(offset)")
                retireAfterUse(e)
                throw FSError.io
            }
        } catch {
            throw failed(.write, rel, error)
        }
    }

    private func commit(_ path: String, id: UInt64, size: Int64, hash: [UInt8], mtimeNs: Int64) throws(FSError) {
        let rel = try checked(.commit, path: path, allowRoot: false)
        try checkedID(.commit, id)
        if size < 0 || hash.count != PeerMessage.digestSize {
            throw refusal(.commit, "commit of \(rel.debugDescription) with size \(size) and a \(hash.count)-byte digest")
        }
        let e: OpenReplica
        do throws(FSError) { e = try acquireLocked(id, path: rel) } catch { throw failed(.commit, rel, error) }
        // Whatever happens, the handle goes (released once no write still uses it).
        defer { retire(e) }
        if e.staged { return try commitStaged(e, rel, size: size, hash: hash, mtimeNs: mtimeNs) }
        // The incomplete mark goes with the content commit's durable batch (queued first, so
        // never later than it); a refused commit marks the file again below.
        do throws(FSError) {
            try submit([.replicaCommitted(id: id)], wait: .queued)
            try volume.commit(handle: e.handle, expect: ContentSeal(size: size, hash: hash))
        } catch {
            try? submit([.receivingReplica(id: id)], wait: .written)
            throw failed(.commit, rel, error)
        }
        let rec: InodeRecord?
        do { rec = try volume.journal.inode(id) } catch {
            log.error("replicated commit of \(rel.debugDescription): journal read failed: \(error)")
            throw FSError.io
        }
        // Deleted while open on both nodes (smbd's delete-on-close): its row went with its last
        // name on each side and there is no copy left to compare.
        if rec == nil, let st = try? volume.getattr(NodeRef(id: id, path: rel), handle: e.handle), st.st_nlink == 0 {
            handles.with { _ in e.committed = true }
            return
        }
        guard let r = rec, !r.dirty, r.size == size, r.hash == hash else {
            try? submit([.receivingReplica(id: id)], wait: .written)
            noteMismatch(Mismatch(path: rel, stableID: id, expectedSize: size, expectedHash: hash,
                                  localSize: rec?.size, localHash: rec?.dirty == false ? rec?.hash : nil))
            log.critical("""
                REPLICA MISMATCH: commit of \(rel.debugDescription) (id \(id)) refused: the peer has \(size) bytes \
                xxh3-128 \(Self.hex(hash)), this node's brick has \(rec.map { String($0.size) } ?? "?") bytes \
                xxh3-128 \(rec?.hash.map(Self.hex) ?? "none")\(rec?.dirty == true ? " (still dirty)" : ""); \
                the two copies differ and the file needs healing
                """)
            throw FSError.io
        }
        handles.with { _ in e.committed = true }
        // The sender's mtime, so both bricks end up identical (after the bytes, which change it).
        do throws(FSError) {
            _ = try volume.setattr(NodeRef(id: id, path: rel), handle: e.handle,
                                   changes: AttrChanges(mtime: .at(Self.timespec(ns: mtimeNs))))
        } catch {
            throw failed(.commit, rel, error)
        }
    }

    private func noteMismatch(_ m: Mismatch) {
        stats.with { s in
            s.hashMismatches += 1
            s.recentMismatches.append(m)
            if s.recentMismatches.count > 16 { s.recentMismatches.removeFirst() }
        }
    }

    // MARK: - Whole-file sends (staged)

    /// The start of a whole-file send: the bytes go to a staged copy that replaces the live
    /// file at the verified commit, so no reader here ever sees part of each version. A file
    /// missing here (nothing to tear) or with other hard links (a rename would split them) is
    /// received in place instead, as a create and a truncate, marked incomplete until then.
    private func stageWhole(_ parent: String, _ name: String, mode: UInt32, uid: UInt32, gid: UInt32,
                            id: UInt64, size: Int64) throws(FSError) {
        let rel = try checked(.stageWhole, parent: parent, name: name)
        try checkedID(.stageWhole, id)
        let found: (stat, UInt64?)?
        do throws(FSError) { found = try shared { () throws(FSError) in try existing(rel) } } catch { throw failed(.stageWhole, rel, error) }
        guard let (st, current) = found, st.kind == .file, current == id, st.st_nlink == 1 else {
            try create(parent, name, mode: mode, uid: uid, gid: gid, id: id, existing: .receivedInPlace)
            try setattr(rel, AttrUpdate(mode: mode & 0o7777, uid: uid, gid: gid, size: size))
            return
        }
        let h: UInt64
        do throws(FSError) {
            h = try volume.openStaged(NodeRef(id: id, path: rel), mode: mode_t(mode), uid: uid, gid: gid, size: size)
        } catch {
            throw failed(.stageWhole, rel, error)
        }
        // In one step: a receipt of this file still open (a stream or send cut short) ends
        // unfinished, the new one takes its place, and the file stops counting as aborted.
        let stale = handles.with { t -> OpenReplica? in
            let old = t.byID[id]
            if let o = old { t.drop(o) }
            t.abortedStaged.remove(id)
            t.clock += 1
            let e = OpenReplica(id: id, handle: h, staged: true)
            e.lastUse = t.clock
            t.byID[id] = e
            return old.flatMap { $0.users == 0 ? $0 : nil }
        }
        if let e = stale { closeHandle(e) }
    }

    /// The commit of a staged copy: its bytes are checked against the sender's size and
    /// XXH3-128, then swapped in for the live file; on any refusal the live file is as it was.
    private func commitStaged(_ e: OpenReplica, _ rel: String, size: Int64, hash: [UInt8], mtimeNs: Int64) throws(FSError) {
        if handles.with({ _ in e.superseded }) {
            log.notice("the peer's copy of \(rel.debugDescription) (id \(e.id)) was truncated by the peer while it was sent; it is sent again")
            throw FSError(EBUSY)
        }
        let got: (size: Int64, hash: [UInt8])
        do throws(FSError) { got = try volume.stagedContent(handle: e.handle) } catch { throw failed(.commit, rel, error) }
        guard got.size == size, got.hash == hash else {
            noteMismatch(Mismatch(path: rel, stableID: e.id, expectedSize: size, expectedHash: hash, localSize: got.size, localHash: got.hash))
            log.critical("""
                REPLICA MISMATCH: the whole copy of \(rel.debugDescription) (id \(e.id)) received from the peer has \(got.size) \
                bytes xxh3-128 \(Self.hex(got.hash)), the peer sent \(size) bytes xxh3-128 \(Self.hex(hash)); it was not \
                swapped in (this node keeps its previous copy) and the peer sends it again
                """)
            throw FSError.io
        }
        // The sender read the file's owner and mode when its send began; a change of them made
        // here that it has not received yet (owed, replayed after) must not be replaced by
        // them here while the replay gives the sender this node's (seed 394).
        // Asked only where they differ: the question scans what this node owes.
        let owes = owesOwnerOrMode.with { $0 }
        let refusal: LocalVolume.SwapRefusal?
        do throws(FSError) {
            refusal = try exclusive { () throws(FSError) in
                try volume.swapStaged(handle: e.handle, size: size, hash: hash) { owes?(e.id) ?? false }
            }
        } catch {
            throw failed(.commit, rel, error)
        }
        switch refusal {
        case nil: break
        case .writerOpen?:
            log.notice("the peer's copy of \(rel.debugDescription) (id \(e.id)) waits: a client here has the file open for writing")
            throw FSError(EBUSY)
        case .liveFileChanged(let why)?:
            log.notice("the peer's copy of \(rel.debugDescription) (id \(e.id)) was not swapped in: \(why); it is sent again")
            throw FSError(EBUSY)
        }
        // Verified and in place: any incomplete mark of an earlier receipt no longer applies.
        try submit([.replicaCommitted(id: e.id)], wait: .queued)
        handles.with { _ in e.committed = true }
        do throws(FSError) {
            _ = try volume.setattr(NodeRef(id: e.id, path: rel), handle: e.handle,
                                   changes: AttrChanges(mtime: .at(Self.timespec(ns: mtimeNs))))
        } catch {
            throw failed(.commit, rel, error)
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: - Handle table

    /// A volume handle held for one stable id. Fields are guarded by the table's lock.
    final class OpenReplica: @unchecked Sendable {
        let id: UInt64
        let handle: UInt64
        /// Messages using the handle right now.
        var users = 0
        var lastUse: UInt64 = 0
        /// Out of the table: released when the last user is done.
        var retired = false
        /// The sender's commit was verified: released normally. Otherwise the handle is
        /// abandoned and the file stays an incomplete replica.
        var committed = false
        /// A staged copy (see `stageWhole`): the live file is untouched until the commit.
        let staged: Bool
        /// The live file's size changed (a truncate from the peer) while this staged copy was
        /// received: the copy may be older than that change, so its commit is refused.
        var superseded = false
        init(id: UInt64, handle: UInt64, staged: Bool = false) {
            self.id = id
            self.handle = handle
            self.staged = staged
        }
    }

    struct HandleTable {
        var byID: [UInt64: OpenReplica] = [:]
        var clock: UInt64 = 0
        /// Files whose staged receipt ended unfinished (link lost, evicted): a write or commit
        /// of one of them still arriving from that send must not fall back to the live file,
        /// which would tear it. Cleared by the next `stageWhole`; bounded.
        var abortedStaged: Set<UInt64> = []

        /// Takes `e` out of the table (if still there) and marks it retired. A staged receipt
        /// leaving uncommitted is recorded as aborted in the same step, so no message of its
        /// send finds neither the entry nor the mark.
        mutating func drop(_ e: OpenReplica) {
            if byID[e.id] === e { byID[e.id] = nil }
            e.retired = true
            if e.staged && !e.committed {
                if abortedStaged.count >= 4096 { abortedStaged.removeAll() }
                abortedStaged.insert(e.id)
            }
        }
    }

    /// The open entry of `id`, in use by the caller, or nil.
    private func use(_ id: UInt64) -> OpenReplica? {
        handles.with { t in
            guard let e = t.byID[id] else { return nil }
            t.clock += 1
            e.users += 1
            e.lastUse = t.clock
            return e
        }
    }

    /// `acquire` under the shared namespace lock (the path may be used to open the file).
    private func acquireLocked(_ id: UInt64, path: String) throws(FSError) -> OpenReplica {
        if let e = use(id) { return e }
        return try shared { () throws(FSError) -> OpenReplica in try acquire(id, path: path) }
    }

    /// The open entry of `id`, opening the file at `path` if none is (after checking that the
    /// name still refers to that id). The caller calls `done` when finished with it.
    private func acquire(_ id: UInt64, path: String) throws(FSError) -> OpenReplica {
        if let e = use(id) { return e }
        if handles.with({ $0.abortedStaged.contains(id) }) { throw FSError(ESTALE) }
        guard let found = volume.brick.readID(rel: path) else {
            _ = try volume.brick.lstat(path)   // ENOENT and friends
            throw FSError(ESTALE)
        }
        guard found == id else {
            log.error("peer's data for id \(id) names \(path.debugDescription), which is id \(found) on this node")
            throw FSError(ESTALE)
        }
        // Before its first byte changes: from here until the sender's verified commit, these
        // bytes are not a copy to serve or to send (a crash, a lost link, a full disk).
        try markIncomplete(id)
        let h = try volume.open(NodeRef(id: id, path: path), flags: O_RDWR)
        return insert(id, handle: h, inUse: true)
    }

    /// Adds a fresh handle to the table (or drops it if another thread opened `id` meanwhile),
    /// and releases the least recently used idle handles over the bound.
    @discardableResult
    private func insert(_ id: UInt64, handle: UInt64, inUse: Bool = false, staged: Bool = false) -> OpenReplica {
        var extra: [OpenReplica] = []
        let e = handles.with { t -> OpenReplica in
            t.clock += 1
            let e: OpenReplica
            if let other = t.byID[id] {
                extra.append(OpenReplica(id: id, handle: handle, staged: staged))
                e = other
            } else {
                e = OpenReplica(id: id, handle: handle, staged: staged)
                t.byID[id] = e
            }
            if inUse { e.users += 1 }
            e.lastUse = t.clock
            while t.byID.count > maxOpenFiles {
                guard let victim = t.byID.values.filter({ $0.users == 0 && $0 !== e }).min(by: { $0.lastUse < $1.lastUse })
                else { break }
                t.drop(victim)
                extra.append(victim)
            }
            return e
        }
        for x in extra { closeHandle(x) }
        return e
    }

    /// The caller is finished with `e`.
    private func done(_ e: OpenReplica) {
        let close = handles.with { _ -> Bool in
            e.users -= 1
            return e.retired && e.users == 0
        }
        if close { closeHandle(e) }
    }

    /// Takes `e` out of the table and finishes the caller's use of it.
    private func retire(_ e: OpenReplica) {
        let close = handles.with { t -> Bool in
            t.drop(e)
            e.users -= 1
            return e.users == 0
        }
        if close { closeHandle(e) }
    }

    /// Takes `e` out of the table (as `retire`) after a failed change, without a commit.
    private func retireAfterUse(_ e: OpenReplica) {
        handles.with { t in t.drop(e) }
    }

    private func closeHandle(_ e: OpenReplica) {
        if handles.with({ _ in e.committed }) {
            do { try volume.release(handle: e.handle) } catch {
                log.error("releasing the replica handle of id \(e.id) failed: \(error)")
            }
            return
        }
        abandon(e)
    }

    /// A file whose receipt ended without the sender's verified commit: its descriptor is
    /// closed without recording its bytes as clean (they may be zeros where a write failed,
    /// or a prefix of the sender's file), and the healer is told to fetch it whole.
    private func abandon(_ e: OpenReplica) {
        volume.abandon(handle: e.handle)
        // A staged copy vanishes with its descriptor; the live file was never touched (the
        // send counts as aborted since it left the table, see `HandleTable.drop`).
        if e.staged { return }
        try? submit([.receivingReplica(id: e.id)], wait: .written)
        log.warning("the peer's copy of file id \(e.id) was not completed here (no verified commit); it is not served until the peer sends it whole")
        abandonedHandler.with { $0 }?(e.id)
    }

    /// Records that file `id` is being received (see `AwaitKind.incompleteReplica`); queued,
    /// so it reaches the WAL with the dirty mark of the first byte, never after it.
    private func markIncomplete(_ id: UInt64) throws(FSError) {
        try submit([.receivingReplica(id: id)], wait: .queued)
    }

    private func submit(_ ops: [JournalOp], wait: Journal.Wait) throws(FSError) {
        do { try volume.journal.submit(ops, wait: wait) } catch {
            log.error("journal write failed while applying the peer's change: \(error)")
            throw FSError.io
        }
    }
}

/// The ids of the latest entries created, bounded: a set with a ring for eviction. Covers the
/// moments before the journal's group commit makes a new row visible to readers.
struct RecentIDs {
    private var set: Set<UInt64> = []
    private var ring: [UInt64] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// False if `id` is already there.
    mutating func insert(_ id: UInt64) -> Bool {
        guard set.insert(id).inserted else { return false }
        if ring.count < capacity {
            ring.append(id)
        } else {
            set.remove(ring[next])
            ring[next] = id
            next = (next + 1) % capacity
        }
        return true
    }

    func contains(_ id: UInt64) -> Bool { set.contains(id) }
}
