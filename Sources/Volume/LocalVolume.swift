import BrickStore
import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import TwinCore

/// An open file: a brick descriptor plus the inode's shared content state when writable.
final class OpenFile: @unchecked Sendable {
    let fd: Int32
    let id: UInt64
    let content: ContentState?
    /// A staged copy of file `id` (see `openStaged`): its content state is its own, not the
    /// live file's, and nothing it writes touches the live file's journal row until the swap.
    let staged: Bool
    /// The brick-relative path the file was opened or created under (a hint for the seal
    /// marker: checked against the descriptor's inode before use, as a rename may have moved it).
    let path: String?
    init(fd: Int32, id: UInt64, content: ContentState?, staged: Bool = false, path: String? = nil) {
        self.fd = fd
        self.id = id
        self.content = content
        self.staged = staged
        self.path = path
    }
    // Closed when the last reference goes, never under a concurrent user of the descriptor.
    deinit { close(fd) }
}

/// An open directory stream. Guarded by its own lock (the kernel may reuse a handle).
final class OpenDir: @unchecked Sendable {
    let dir: OpaquePointer
    let fd: Int32
    let node: NodeRef
    /// Guards `dir` and `position` (readdir of one stream). Leaf; taken after `dirs` is released.
    let lock = NSLock()
    /// Offset the stream is at, to avoid seekdir when reading on.
    var position: Int64 = 0
    init(dir: OpaquePointer, fd: Int32, node: NodeRef) {
        self.dir = dir
        self.fd = fd
        self.node = node
    }
}

/// Hands out stable ids: the node's ordinal in the top byte, a counter reserved durably in
/// blocks from the journal so that no id is ever handed out twice, even after a crash.
final class IDAllocator: Sendable {
    private struct Range { var next: UInt64; var limit: UInt64 }
    /// Guards the reserved block. Held across the journal's reservation and the brick's
    /// high-water write (both durable), so ids stay ordered: before the journal's own locks.
    private let range = Locked(Range(next: 0, limit: 0))
    private let journal: Journal
    private let brick: Brick
    private let ordinal: UInt8
    static let block: UInt64 = 4096

    init(journal: Journal, brick: Brick, ordinal: UInt8) {
        self.journal = journal
        self.brick = brick
        self.ordinal = ordinal
    }

    func next() throws(FSError) -> UInt64 {
        let counter: UInt64 = try range.with { (r: inout Range) throws(FSError) -> UInt64 in
            if r.next >= r.limit {
                do {
                    let first = try journal.reserveIDs(Self.block, atLeast: brick.readHighWater() ?? 0)
                    // The brick remembers the end of every reserved block too: a journal
                    // rebuilt or restored later starts above it, so no id ever comes back.
                    try brick.writeHighWater(first + Self.block)
                    r = Range(next: first, limit: first + Self.block)
                } catch {
                    throw FSError.io
                }
            }
            defer { r.next += 1 }
            return r.next
        }
        return StableID.make(nodeOrdinal: ordinal, counter: counter)
    }

    /// Never hand out a counter below `floor` from now on (a node on a new brick learns from
    /// its peer which ids it gave out before).
    func raise(atLeast floor: UInt64) throws(FSError) {
        try range.with { (r: inout Range) throws(FSError) in
            guard r.next < floor || r.limit == 0 else { return }
            do {
                let first = try journal.reserveIDs(Self.block, atLeast: max(floor, brick.readHighWater() ?? 0))
                try brick.writeHighWater(first + Self.block)
                r = Range(next: first, limit: first + Self.block)
            } catch {
                throw FSError.io
            }
        }
    }
}

/// The volume of one node on its own: applies every operation to the brick and records it in
/// the journal. Crash consistency (docs/ARCHITECTURE.md): a namespace change first writes an
/// intent naming the entries it touches, file content is marked dirty before its first byte
/// reaches the brick, and close/fsync record size and XXH3-128 durably after fsyncing the data.
public final class LocalVolume: VolumeOperations, @unchecked Sendable {
    public let brick: Brick
    public let journal: Journal
    let log: Logger
    let ids: IDAllocator
    // Lock order (outermost first): adoptLock -> IDAllocator.range -> the journal's locks;
    // ContentTracker's table -> the journal's (whileNoWriter); a ContentState's mutex -> the
    // journal's (markDirty, commit). files, dirs, handleCounter, fullWarned: leaves, held for
    // one dictionary access (an OpenFile's descriptor is used after `files` is released).
    let content = ContentTracker()
    /// Guards the open files by handle number. Leaf.
    let files = Locked<[UInt64: OpenFile]>([:])
    /// Guards the open directory streams by handle number. Leaf.
    private let dirs = Locked<[UInt64: OpenDir]>([:])
    /// Guards the last handle number given out. Leaf.
    private let handleCounter = Locked<UInt64>(0)
    /// Serialises adopting entries put into the brick behind TwinFS's back (one id each, even
    /// when two lookups find the entry at once). Outermost: before `range` and the journal.
    private let adoptLock = NSLock()
    /// When the admin was last told the brick is full (once a minute at most). Leaf.
    private let fullWarned = Locked<ContinuousClock.Instant?>(nil)
    /// Seal markers of content commits not yet durable in the journal (see `commitContent`).
    let seals: SealLog
    /// Whether content commits are sealed (one flush) or journaled durably (two flushes).
    let sealCommits: Bool
    /// The archive tier's store hook, clock and recall lock (see Tiering.swift).
    let tier = TierGate()

    public init(brick: Brick, journal: Journal, nodeOrdinal: UInt8, logger: Logger, sealCommits: Bool = false) {
        self.brick = brick
        self.journal = journal
        self.log = logger
        self.ids = IDAllocator(journal: journal, brick: brick, ordinal: nodeOrdinal)
        self.seals = SealLog(brick: brick)
        self.sealCommits = sealCommits
    }

    // MARK: - Helpers

    @inline(__always)
    func rel(_ parent: NodeRef, _ name: String) -> String { Brick.join(parent.path, name) }

    func checkName(_ parent: NodeRef, _ name: String) throws(FSError) {
        if name.isEmpty || name == "." || name == ".." || name.utf8.contains(UInt8(ascii: "/")) { throw FSError.invalid }
        if name.utf8.count > 255 { throw FSError(ENAMETOOLONG) }
        if Brick.isPrivate(parentPath: parent.path, name: name) { throw FSError(EPERM) }
    }

    /// The group a new entry gets: the caller's, unless the directory is setgid (shared PACS
    /// group directories), where the directory's group is kept as the kernel would.
    func owningGroup(_ dirFD: Int32, _ ctx: RequestContext) throws(FSError) -> gid_t {
        var st = stat()
        _ = try sys { fstat(dirFD, &st) }
        return st.st_mode & S_ISGID != 0 ? st.st_gid : ctx.gid
    }

    func submit(_ ops: [JournalOp], wait: Journal.Wait) throws(FSError) {
        do {
            try journal.submit(ops, wait: wait)
        } catch {
            log.error("journal write failed: \(error)")
            throw FSError.io
        }
    }

    /// Runs a namespace change under intents for the names it touches: the intents reach the
    /// intent log before the brick changes (one append, no transaction), and are cleared by
    /// the result ops in a later group commit.
    func withIntent<R>(_ names: [(UInt64, String)],
                       _ body: () throws(FSError) -> (R, [JournalOp])) throws(FSError) -> R {
        var seqs: [Int64] = []
        for (p, n) in names {
            do { seqs.append(try journal.recordIntent(parent: p, name: n)) } catch {
                log.error("intent log write failed: \(error)")
                throw FSError.io
            }
        }
        let clear = seqs.map { JournalOp.clearIntent(seq: $0) }
        do {
            let (r, result) = try body()
            try submit(result + clear, wait: .queued)
            return r
        } catch {
            try? submit(clear, wait: .queued)
            throw error
        }
    }

    public static func record(_ st: stat, id: UInt64, hash: [UInt8]? = nil, dirty: Bool = false) -> InodeRecord {
        InodeRecord(id: id, kind: st.kind, size: Int64(st.st_size), mode: st.st_mode, uid: st.st_uid, gid: st.st_gid,
                    mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, nlink: Int64(st.st_nlink), hash: hash, dirty: dirty)
    }

    func newHandle() -> UInt64 { handleCounter.with { $0 += 1; return $0 } }

    func file(_ h: UInt64) throws(FSError) -> OpenFile {
        guard let f = files.with({ $0[h] }) else { throw FSError.badHandle }
        return f
    }

    /// The stable id of a brick entry; an entry put into the brick behind TwinFS's back is
    /// adopted: given an id, hashed and journaled.
    func idOf(parent: NodeRef, name: String, rel: String, st: stat) throws(FSError) -> UInt64 {
        if let id = brick.readID(rel: rel) { return id }
        adoptLock.lock()
        defer { adoptLock.unlock() }
        if let id = brick.readID(rel: rel) { return id }
        let id = try ids.next()
        // The intent makes recovery re-read this name if we crash between xattr and journal.
        let seq: Int64
        do { seq = try journal.recordIntent(parent: parent.id, name: name) } catch { throw FSError.io }
        try brick.writeID(rel: rel, id: id)
        var hash: [UInt8]?
        if st.kind == .file, let fd = try? brick.openFile(rel, flags: O_RDONLY) {
            hash = (try? XXH128Hasher.hash(fd: fd))?.0.bytes
            close(fd)
        } else if st.kind == .symlink {
            hash = (try? readlink(NodeRef(id: id, path: rel))).map { XXH128Hasher.hash(Array($0.utf8)).bytes }
        } else if st.kind == .other {
            hash = Self.specialHash(st)
        }
        log.notice("adopted \(rel) found in the brick without a TwinFS id (id \(id))")
        try submit([.putAttributes(Self.record(st, id: id, hash: hash)), .link(parent: parent.id, name: name, id: id),
                    .clearIntent(seq: seq)], wait: .queued)
        return id
    }

    // MARK: - Metadata

    public func lookup(parent: NodeRef, name: String) throws(FSError) -> stat {
        if Brick.isPrivate(parentPath: parent.path, name: name) { throw FSError.notFound }
        let r = rel(parent, name)
        var (st, found) = try brick.statAndID(r)
        let id: UInt64
        if let f = found { id = f } else { id = try idOf(parent: parent, name: name, rel: r, st: st) }
        st.st_ino = UInt(id)
        tierOverlay(&st, id: id)
        return st
    }

    public func getattr(_ node: NodeRef, handle: UInt64?) throws(FSError) -> stat {
        var st = stat()
        if let h = handle, let f = files.with({ $0[h] }) {
            _ = try sys { fstat(f.fd, &st) }
        } else {
            st = try brick.lstat(node.path)
            tierOverlay(&st, id: node.id)
        }
        st.st_ino = UInt(node.id)
        return st
    }

    public func setattr(_ node: NodeRef, handle: UInt64?, changes: AttrChanges) throws(FSError) -> stat {
        let open = handle.flatMap { h in files.with { $0[h] } }
        if changes.size != nil, open == nil { try ensureHot(node, forWriting: true) }
        if let mode = changes.mode {
            if let f = open { _ = try sys { fchmod(f.fd, mode & 0o7777) } }
            else {
                // chmod never follows a symlink (it could point outside the brick).
                try brick.withInode(node.path) { (proc, fd) throws(FSError) in
                    var st = stat()
                    _ = try sys { fstat(fd, &st) }
                    if st.kind == .symlink { throw FSError.notSupported }
                    _ = try sys { chmod(proc, mode & 0o7777) }
                }
            }
        }
        if changes.uid != nil || changes.gid != nil {
            let u = changes.uid ?? uid_t.max
            let g = changes.gid ?? gid_t.max
            if let f = open { _ = try sys { fchown(f.fd, u, g) } }
            else { try brick.at(node.path) { (d, n) throws(FSError) in _ = try sys { fchownat(d, n, u, g, AT_SYMLINK_NOFOLLOW) } } }
        }
        if let size = changes.size {
            try truncate(node, open: open, to: size)
        }
        if changes.atime != nil || changes.mtime != nil {
            func spec(_ t: AttrChanges.Time?) -> timespec {
                switch t {
                case .none: return timespec(tv_sec: 0, tv_nsec: twin_UTIME_OMIT())
                case .now: return timespec(tv_sec: 0, tv_nsec: twin_UTIME_NOW())
                case .at(let ts): return ts
                }
            }
            var times = [spec(changes.atime), spec(changes.mtime)]
            if let f = open { _ = try sys { futimens(f.fd, &times) } }
            else { try brick.at(node.path) { (d, n) throws(FSError) in _ = try sys { utimensat(d, n, &times, AT_SYMLINK_NOFOLLOW) } } }
        }
        var st = try getattr(node, handle: handle)
        st.st_ino = UInt(node.id)
        if changes.size == nil {
            try submit([.putAttributes(Self.record(st, id: node.id))], wait: .queued)
        }
        return st
    }

    /// Truncate is a content change: dirty first, then the brick, then the hash.
    func truncate(_ node: NodeRef, open: OpenFile?, to size: Int64) throws(FSError) {
        if let f = open, let s = f.content {
            s.lock()
            defer { s.unlock() }
            try markDirty(s)
            _ = try sys { ftruncate(f.fd, off_t(size)) }
            if size == 0 { s.restartEmpty() } else if size != s.nextOffset { s.sequential = false }
            s.unsynced = true
            return
        }
        // A truncate(2) by path: a short-lived writer of its own (shares the state of any
        // writer that has the file open), committed at once.
        let s = content.acquire(node.id) { $0.sequential = false }
        defer { content.releaseWriter(s) }
        // Again now that no stub swap can start: one may have finished since setattr's check.
        try ensureHot(node, forWriting: true)
        s.lock()
        defer { s.unlock() }
        try markDirty(s)
        let fd = try brick.openFile(node.path, flags: O_RDWR)
        defer { close(fd) }
        _ = try sys { ftruncate(fd, off_t(size)) }
        if size == 0 { s.restartEmpty() } else { s.sequential = false }
        try commitContent(fd: fd, id: node.id, streamed: s, path: node.path)
    }

    func markDirty(_ s: ContentState) throws(FSError) {
        guard !s.journalDirty else { return }
        try submit([.markDirty(id: s.id)], wait: .written)
        s.journalDirty = true
    }

    /// Makes the file's bytes, size and XXH3-128 durable, and records them in the journal.
    /// Caller holds `streamed`'s lock. Without `sealCommits`: the file's fsync, then the row
    /// committed `durable` (two flushes). With it, one flush:
    ///
    /// The hash is taken first; size and hash go into the file's seal xattr and a seal marker
    /// is made (see `SealMarkers`); then the file's fsync makes bytes, seal and marker durable
    /// together. The journal row is then written to the WAL without a flush of its own (it
    /// survives a crash of the process; after a power loss recovery re-derives it from the
    /// seal), and one durable journal commit per `SealLog.batch` pending markers lets them go.
    /// `expect`: a replica's commit, sealed only if the bytes match what the peer sent
    /// (otherwise the row is recorded durably as it is and the caller refuses the commit).
    func commitContent(fd: Int32, id: UInt64, streamed: ContentState?, path hint: String? = nil,
                       expect: ContentSeal? = nil) throws(FSError) {
        var st = stat()
        _ = try sys { fstat(fd, &st) }
        // Unlinked while open (its journal row went with its last name): nothing to record,
        // and hashing it would only cost time (smbtorture leaves sparse files of hundreds of
        // GB open after deleting them).
        if st.st_nlink == 0 {
            try fsyncContent(fd: fd, id: id, streamed: streamed)
            streamed?.journalDirty = false
            streamed?.unsynced = false
            streamed?.sequential = false
            return
        }
        let seal = ContentSeal(size: Int64(st.st_size), hash: try contentDigest(fd: fd, size: Int64(st.st_size), streamed: streamed).bytes)
        let marker: String?
        if sealCommits, expect == nil || expect == seal {
            marker = try sealContent(fd: fd, id: id, st: st, hint: hint, seal)
        } else {
            marker = nil
        }
        try fsyncContent(fd: fd, id: id, streamed: streamed)
        _ = try sys { fstat(fd, &st) }   // the seal changed ctime
        let row = JournalOp.setContent(id: id, size: seal.size, hash: seal.hash, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs)
        guard let marker else {
            try submit([row], wait: .durable)
            streamed?.journalDirty = false
            streamed?.unsynced = false
            return
        }
        try submit([row], wait: .written)
        streamed?.journalDirty = false
        streamed?.unsynced = false
        if case let .flush(names) = seals.written(marker) {
            try submit([], wait: .durable)
            seals.markers.remove(names)
        }
    }

    /// fsync of a brick file. Linux reports a writeback error once and drops the pages: the
    /// streamed hash no longer describes the disk, so the row stays dirty and the next commit
    /// re-reads the file.
    func fsyncContent(fd: Int32, id: UInt64, streamed: ContentState?) throws(FSError) {
        if Glibc.fsync(fd) != 0 {
            log.error("fsync of file id \(id) failed: \(String(cString: strerror(errno)))")
            streamed?.sequential = false
            throw FSError.io
        }
    }

    /// The XXH3-128 of the file's `size` bytes: the streamed one when it was written front to
    /// back, else read back from the brick (and the stream goes on from there).
    func contentDigest(fd: Int32, size: Int64, streamed: ContentState?) throws(FSError) -> XXH128Digest {
        guard let s = streamed else { return try XXH128Hasher.hash(fd: fd).0 }
        if s.sequential, s.nextOffset == size { return s.hasher.digest() }
        s.hasher.reset()
        var off: Int64 = 0
        let chunk = 1 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        while true {
            let n = try sys { pread(fd, buf.baseAddress, chunk, off_t(off)) }
            if n == 0 { break }
            s.hasher.update(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
            off += Int64(n)
        }
        s.nextOffset = off
        s.sequential = true
        return s.hasher.digest()
    }

    /// With sealed commits the journal's rows reach the disk in batches, so a power cut can
    /// take a new file's row while the brick kept the file: a marker naming it, made before the
    /// file (the filesystem's log keeps metadata changes in order), lets recovery find and
    /// record it. nil without sealed commits (every close then commits the journal durably).
    func createMarker(id: UInt64, path: String) throws(FSError) -> String? {
        guard sealCommits else { return nil }
        let name = seals.newName(for: id)
        try seals.markers.add(name: name, target: path)
        return name
    }

    /// A marker whose rows are queued: removed with the durable commit that covers them.
    func noteMarkerWritten(_ marker: String) {
        guard case let .flush(names) = seals.written(marker) else { return }
        if (try? submit([], wait: .durable)) != nil { seals.markers.remove(names) }
    }

    /// Writes the seal xattr and a seal marker naming the file's current path (both made
    /// durable by the fsync that follows). nil when no path of the file in the brick is known
    /// (the caller then commits the row durably, as without a seal).
    func sealContent(fd: Int32, id: UInt64, st: stat, hint: String?, _ seal: ContentSeal) throws(FSError) -> String? {
        guard let path = sealPath(st: st, fd: fd, hint: hint) else { return nil }
        try brick.writeSeal(fd: fd, seal)
        let name = seals.newName(for: id)
        try seals.markers.add(name: name, target: path)
        return name
    }

    /// A brick path of the file `st` describes: the descriptor's own (it follows renames, but a
    /// file made with O_TMPFILE and linked keeps an anonymous one), else the path it was opened
    /// under, if that still names this inode.
    func sealPath(st: stat, fd: Int32, hint: String?) -> String? {
        for p in [brick.currentPath(fd: fd), hint] {
            guard let p, !p.isEmpty, let now = try? brick.lstat(p) else { continue }
            if now.st_ino == st.st_ino, now.st_dev == st.st_dev { return p }
        }
        return nil
    }

    public func readlink(_ node: NodeRef) throws(FSError) -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = try brick.at(node.path) { (d, name) throws(FSError) -> Int in try sys { readlinkat(d, name, &buf, buf.count - 1) } }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Namespace

    public func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext) throws(FSError) -> stat {
        try mkdir(parent: parent, name: name, mode: mode, ctx: ctx, id: nil)
    }

    /// `id`: the stable id to give the entry (a replica applying its peer's mkdir); nil allocates one.
    public func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext, id given: UInt64?) throws(FSError) -> stat {
        try makeEntry(parent: parent, name: name, ctx: ctx, id: given, hash: nil, removeFlags: AT_REMOVEDIR) { (d, n) throws(FSError) in
            _ = try sys { mkdirat(d, n, mode) }
        }
    }

    public func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext) throws(FSError) -> stat {
        try symlink(parent: parent, name: name, target: target, ctx: ctx, id: nil)
    }

    /// `id`: the stable id to give the entry (a replica applying its peer's symlink); nil allocates one.
    public func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext, id given: UInt64?) throws(FSError) -> stat {
        let hash = XXH128Hasher.hash(Array(target.utf8)).bytes
        return try makeEntry(parent: parent, name: name, ctx: ctx, id: given, hash: hash, removeFlags: 0) { (d, n) throws(FSError) in
            _ = try sys { symlinkat(target, d, n) }
        }
    }

    /// The journal's XXH3-128 of a special file (see `SpecialFile.identity`); nil for others.
    public static func specialHash(_ st: stat) -> [UInt8]? {
        guard SpecialFile(mode: UInt32(st.st_mode)) != nil else { return nil }
        return XXH128Hasher.hash(SpecialFile.identity(mode: UInt32(st.st_mode), rdev: UInt64(st.st_rdev))).bytes
    }

    public func mknod(parent: NodeRef, name: String, mode: mode_t, rdev: UInt64, ctx: RequestContext) throws(FSError) -> stat {
        try mknod(parent: parent, name: name, mode: mode, rdev: rdev, ctx: ctx, id: nil)
    }

    /// `id`: the stable id to give the entry (a replica applying its peer's mknod); nil allocates one.
    public func mknod(parent: NodeRef, name: String, mode: mode_t, rdev: UInt64, ctx: RequestContext, id given: UInt64?) throws(FSError) -> stat {
        guard SpecialFile(mode: UInt32(mode)) != nil else { throw FSError.invalid }
        let hash = XXH128Hasher.hash(SpecialFile.identity(mode: UInt32(mode), rdev: rdev)).bytes
        return try makeEntry(parent: parent, name: name, ctx: ctx, id: given, hash: hash, removeFlags: 0) { (d, n) throws(FSError) in
            _ = try sys { mknodat(d, n, mode, dev_t(rdev)) }
        }
    }

    /// A new directory or symlink under an intent: `make` creates it in the brick, then it gets
    /// the caller as owner and its stable id; if that fails, the new entry is removed again.
    func makeEntry(parent: NodeRef, name: String, ctx: RequestContext, id given: UInt64?, hash: [UInt8]?,
                   removeFlags: Int32, _ make: (Int32, String) throws(FSError) -> Void) throws(FSError) -> stat {
        try checkName(parent, name)
        let id: UInt64
        if let given { id = given } else { id = try ids.next() }
        let r = rel(parent, name)
        return try withIntent([(parent.id, name)]) { () throws(FSError) -> (stat, [JournalOp]) in
            try brick.at(r) { (d, n) throws(FSError) in
                if given != nil {
                    // The peer's id: the entry must never appear without it (a crash in between
                    // would make recovery give it another id than the peer's). Made in the
                    // private tmp area with its id and owner, then renamed into place.
                    try makeAside(d, n, ctx: ctx, id: id, removeFlags: removeFlags, make)
                    return
                }
                try make(d, n)
                do throws(FSError) {
                    let gid = try owningGroup(d, ctx)
                    _ = try sys { fchownat(d, n, ctx.uid, gid, AT_SYMLINK_NOFOLLOW) }
                    try brick.writeID(rel: r, id: id)
                } catch {
                    unlinkat(d, n, removeFlags)
                    throw error
                }
            }
            var st = try brick.lstat(r)
            st.st_ino = UInt(id)
            return (st, [.putAttributes(Self.record(st, id: id, hash: hash)), .link(parent: parent.id, name: name, id: id)])
        }
    }

    public func link(_ node: NodeRef, newParent: NodeRef, newName: String) throws(FSError) -> stat {
        try checkName(newParent, newName)
        let r = rel(newParent, newName)
        return try withIntent([(newParent.id, newName)]) { () throws(FSError) -> (stat, [JournalOp]) in
            try brick.at(node.path) { (d1, n1) throws(FSError) in
                try brick.at(r) { (d2, n2) throws(FSError) in _ = try sys { linkat(d1, n1, d2, n2, 0) } }
            }
            var st = try brick.lstat(r)
            st.st_ino = UInt(node.id)
            return (st, [.link(parent: newParent.id, name: newName, id: node.id), .putAttributes(Self.record(st, id: node.id))])
        }
    }

    public func unlink(parent: NodeRef, name: String) throws(FSError) {
        if Brick.isPrivate(parentPath: parent.path, name: name) { throw FSError.notFound }
        let r = rel(parent, name)
        try refuseIfRetained(parent: parent, name: name, doing: "delete")
        try withIntent([(parent.id, name)]) { () throws(FSError) -> ((), [JournalOp]) in
            try brick.at(r) { (d, n) throws(FSError) in _ = try sys { unlinkat(d, n, 0) } }
            return ((), [.unlink(parent: parent.id, name: name)])
        }
    }

    public func rmdir(parent: NodeRef, name: String) throws(FSError) {
        if Brick.isPrivate(parentPath: parent.path, name: name) { throw FSError.notFound }
        let r = rel(parent, name)
        try withIntent([(parent.id, name)]) { () throws(FSError) -> ((), [JournalOp]) in
            try brick.at(r) { (d, n) throws(FSError) in _ = try sys { unlinkat(d, n, AT_REMOVEDIR) } }
            return ((), [.unlink(parent: parent.id, name: name)])
        }
    }

    public func rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError) {
        if Brick.isPrivate(parentPath: parent.path, name: name) { throw FSError.notFound }
        try checkName(newParent, newName)
        // Only the flags PACS and Samba use; RENAME_WHITEOUT would create a device node.
        guard flags & ~(twin_RENAME_NOREPLACE() | twin_RENAME_EXCHANGE()) == 0 else { throw FSError.invalid }
        let from = rel(parent, name)
        let to = rel(newParent, newName)
        if flags & twin_RENAME_EXCHANGE() == 0 { try refuseIfRetained(parent: newParent, name: newName, doing: "replace") }
        try withIntent([(parent.id, name), (newParent.id, newName)]) { () throws(FSError) -> ((), [JournalOp]) in
            try brick.at(from) { (d1, n1) throws(FSError) in
                try brick.at(to) { (d2, n2) throws(FSError) in _ = try sys { twin_renameat2(d1, n1, d2, n2, flags) } }
            }
            if flags & twin_RENAME_EXCHANGE() != 0 {
                return ((), [.exchange(parentA: parent.id, nameA: name, parentB: newParent.id, nameB: newName)])
            }
            return ((), [.move(fromParent: parent.id, fromName: name, toParent: newParent.id, toName: newName)])
        }
    }

    // MARK: - Files

    /// Flags for the brick descriptor: the kernel already applied O_CREAT/O_EXCL semantics and
    /// append positions; write-only becomes read-write so the file can be re-hashed in place.
    static func brickFlags(_ flags: Int32) -> Int32 {
        var f = flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_APPEND | O_TRUNC | twin_O_DIRECT())
        if f & O_ACCMODE == O_WRONLY { f = (f & ~O_ACCMODE) | O_RDWR }
        return f
    }

    /// Makes an entry (directory or symlink) in `.twinfs/tmp` with owner and `id`, then renames
    /// it to `n` in `d` without replacing anything: it appears complete or not at all.
    func makeAside(_ d: Int32, _ n: String, ctx: RequestContext, id: UInt64, removeFlags: Int32,
                   _ make: (Int32, String) throws(FSError) -> Void) throws(FSError) {
        let tmpRel = Self.stagingDir
        _ = brick.absolute(tmpRel).withCString { Glibc.mkdir($0, 0o700) }
        let tmpName = "new-\(String(id, radix: 16))-\(UInt64.random(in: 0...UInt64.max))"
        let tmpFD = try brick.openFile(tmpRel, flags: O_RDONLY | O_DIRECTORY)
        defer { close(tmpFD) }
        try make(tmpFD, tmpName)
        do throws(FSError) {
            let gid = try owningGroup(d, ctx)
            _ = try sys { fchownat(tmpFD, tmpName, ctx.uid, gid, AT_SYMLINK_NOFOLLOW) }
            // Made outside its parent, a directory did not inherit the parent's setgid bit.
            var parent = stat(), made = stat()
            if fstat(d, &parent) == 0, parent.st_mode & S_ISGID != 0,
               fstatat(tmpFD, tmpName, &made, AT_SYMLINK_NOFOLLOW) == 0, made.st_mode & S_IFMT == S_IFDIR {
                _ = try sys { fchmodat(tmpFD, tmpName, (made.st_mode & 0o7777) | S_ISGID, 0) }
            }
            try brick.writeID(rel: tmpRel + "/" + tmpName, id: id)
            _ = try sys { twin_renameat2(tmpFD, tmpName, d, n, twin_RENAME_NOREPLACE()) }
        } catch {
            unlinkat(tmpFD, tmpName, removeFlags)
            throw error
        }
    }

    /// A new file with the peer's id, opened read-write: made unnamed (O_TMPFILE) with owner
    /// and id, then linked to its name, so that it never appears without its id.
    func createAside(_ d: Int32, _ n: String, mode: mode_t, ctx: RequestContext, id: UInt64) throws(FSError) -> Int32 {
        let fd = try sys { openat(d, ".", twin_O_TMPFILE() | O_RDWR | O_CLOEXEC, mode) }
        do throws(FSError) {
            let gid = try owningGroup(d, ctx)
            _ = try sys { fchown(fd, ctx.uid, gid) }
            try brick.writeID(fd: fd, id: id)
            _ = try sys { linkat(fd, "", d, n, twin_AT_EMPTY_PATH()) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    public func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext) throws(FSError) -> (stat, UInt64) {
        try create(parent: parent, name: name, mode: mode, flags: flags, ctx: ctx, id: nil)
    }

    /// `id`: the stable id to give the file (a replica applying its peer's create); nil allocates one.
    public func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext,
                       id given: UInt64?) throws(FSError) -> (stat, UInt64) {
        try checkName(parent, name)
        let id: UInt64
        if let given { id = given } else { id = try ids.next() }
        let r = rel(parent, name)
        let marker = try createMarker(id: id, path: r)
        defer { if let marker { noteMarkerWritten(marker) } }
        // The new row is dirty from the start (a crash before close leaves it to be re-hashed);
        // until that row commits, the create's intent covers the file.
        return try withIntent([(parent.id, name)]) { () throws(FSError) -> ((stat, UInt64), [JournalOp]) in
            let fd: Int32
            do throws(FSError) {
                if given != nil {
                    fd = try brick.at(r) { (d, n) throws(FSError) -> Int32 in try createAside(d, n, mode: mode, ctx: ctx, id: id) }
                } else {
                    fd = try brick.openFile(r, flags: Self.brickFlags(flags) | O_CREAT | O_EXCL, mode: mode)
                }
            } catch {
                try? submit([.deleteInodeIfNameless(id: id)], wait: .queued)
                throw error
            }
            // createAside gave the peer's file its owner and id before naming it.
            if given == nil {
                do throws(FSError) {
                    let gid = try brick.at(r) { (d, _) throws(FSError) -> gid_t in try owningGroup(d, ctx) }
                    _ = try sys { fchown(fd, ctx.uid, gid) }
                    try brick.writeID(fd: fd, id: id)
                } catch {
                    close(fd)
                    _ = try? brick.at(r) { (d, n) throws(FSError) in unlinkat(d, n, 0) }
                    try? submit([.deleteInodeIfNameless(id: id)], wait: .queued)
                    throw error
                }
            }
            var st = stat()
            _ = try sys { fstat(fd, &st) }
            st.st_ino = UInt(id)
            let state = content.acquire(id) { s in
                s.restartEmpty()
                s.journalDirty = true
                s.unsynced = true
            }
            let h = newHandle()
            files.with { $0[h] = OpenFile(fd: fd, id: id, content: state, path: r) }
            return ((st, h), [.putAttributes(Self.record(st, id: id, dirty: true)), .link(parent: parent.id, name: name, id: id)])
        }
    }

    public func open(_ node: NodeRef, flags: Int32) throws(FSError) -> UInt64 {
        try open(node, flags: flags, mayRecall: true)
    }

    /// `mayRecall`: false once a recall ran for this open (a stub still there is damage).
    func open(_ node: NodeRef, flags: Int32, mayRecall: Bool) throws(FSError) -> UInt64 {
        let writable = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if !writable { try ensureHot(node, forWriting: false) }
        var state: ContentState?
        if writable {
            state = content.acquire(node.id) { s in
                var st = stat()
                if (try? brick.lstat(node.path)).map({ st = $0 }) != nil, st.st_size == 0 {
                    s.restartEmpty()
                } else {
                    s.sequential = false
                }
            }
        }
        do throws(FSError) {
            // A writer known to the tracker keeps any stub swap out from here on.
            if writable { try ensureHot(node, forWriting: true) }
            if let s = state, flags & O_TRUNC != 0 {
                s.lock()
                defer { s.unlock() }
                try markDirty(s)
                let fd = try brick.openFile(node.path, flags: Self.brickFlags(flags) | O_TRUNC)
                s.restartEmpty()
                s.unsynced = true
                return register(fd: fd, id: node.id, state: s, path: node.path)
            }
            let fd = try brick.openFile(node.path, flags: Self.brickFlags(flags) | O_NONBLOCK)
            var st = stat()
            if fstat(fd, &st) != 0 || st.kind != .file {
                close(fd)
                throw FSError(EPERM)
            }
            if !writable, isStub(fd, st) {
                close(fd)
                return try openAfterSwap(node, flags: flags, mayRecall: mayRecall)
            }
            return register(fd: fd, id: node.id, state: state, path: node.path)
        } catch {
            if let s = state { content.releaseWriter(s) }
            throw error
        }
    }

    func register(fd: Int32, id: UInt64, state: ContentState?, path: String? = nil) -> UInt64 {
        let h = newHandle()
        files.with { $0[h] = OpenFile(fd: fd, id: id, content: state, path: path) }
        return h
    }

    public func read(handle: UInt64, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let f = try file(handle)
        return try sys { pread(f.fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        let f = try file(handle)
        guard let s = f.content else { throw FSError.badHandle }
        s.lock()
        defer { s.unlock() }
        if !f.staged { try markDirty(s) }
        var done = 0
        while done < data.count {
            let n: Int
            do throws(FSError) {
                n = try sys { pwrite(f.fd, data.baseAddress! + done, data.count - done, off_t(offset) + off_t(done)) }
            } catch {
                if error.errno == ENOSPC || error.errno == EDQUOT { noteBrickFull("writing file id \(f.id)") }
                throw error
            }
            if n == 0 { break }
            done += n
        }
        s.record(offset: offset, UnsafeRawBufferPointer(rebasing: data[0..<done]))
        return done
    }

    /// One line for the admin (at most once a minute) when the brick's disk is full: the
    /// client gets ENOSPC, nothing else is affected.
    public func noteBrickFull(_ what: String) {
        let now = ContinuousClock.now
        let tell = fullWarned.with { last -> Bool in
            if let l = last, now - l < .seconds(60) { return false }
            last = now
            return true
        }
        if tell {
            log.error("brick \(brick.path) is full (no space left on device): \(what) failed and the client was told so (ENOSPC); fix: free space on the brick's disk or grow it (`twinfs status` shows the free space)")
        }
    }

    /// A fresh stable id of this node (a replicated create sends it to the peer first).
    public func allocateID() throws(FSError) -> UInt64 { try ids.next() }

    /// Raises the id counter to at least `floor` (see `IDAllocator.raise`).
    public func raiseIDs(atLeast floor: UInt64) throws(FSError) { try ids.raise(atLeast: floor) }

    /// Size, XXH3-128 and mtime the next content commit of `handle` will record, when known
    /// without reading the file back (written front to back): lets a replicated close send
    /// its commit to the peer while the local fsync runs. nil when it must be read from disk.
    public func contentPreview(handle: UInt64) -> (size: Int64, hash: [UInt8], mtimeNs: Int64)? {
        guard let f = try? file(handle), let s = f.content else { return nil }
        s.lock()
        defer { s.unlock() }
        var st = stat()
        guard s.sequential, fstat(f.fd, &st) == 0, s.nextOffset == Int64(st.st_size) else { return nil }
        return (Int64(st.st_size), s.hasher.digest().bytes, st.mtimeNs)
    }

    /// The stable id behind an open file handle.
    public func fileID(handle: UInt64) -> UInt64? { try? file(handle).id }

    /// close(): the bytes written are durable on disk and their hash is in the journal.
    public func flush(handle: UInt64) throws(FSError) {
        let f = try file(handle)
        guard let s = f.content, !f.staged else { return }
        s.lock()
        defer { s.unlock() }
        guard s.unsynced || s.journalDirty else { return }
        try commitContent(fd: f.fd, id: f.id, streamed: s, path: f.path)
    }

    /// As `flush`, but commits even when this handle changed nothing: a replica reopened after
    /// an earlier handle was abandoned has a dirty row its new content state does not know of.
    /// `expect`: the size and hash the peer sent (a replica's commit): the file is sealed only
    /// when its bytes match them.
    public func commit(handle: UInt64, expect: ContentSeal? = nil) throws(FSError) {
        let f = try file(handle)
        if f.staged { throw FSError(EINVAL) }   // committed by `swapStaged`
        guard let s = f.content else { return try flush(handle: handle) }
        s.lock()
        defer { s.unlock() }
        try commitContent(fd: f.fd, id: f.id, streamed: s, path: f.path, expect: expect)
    }

    public func fsync(handle: UInt64, dataOnly: Bool) throws(FSError) {
        let f = try file(handle)
        guard !f.staged, let s = f.content ?? content.existing(f.id) else {
            if Glibc.fsync(f.fd) != 0 { throw FSError.io }
            return
        }
        s.lock()
        defer { s.unlock() }
        guard s.unsynced || s.journalDirty else { return }
        try commitContent(fd: f.fd, id: f.id, streamed: s, path: f.path)
    }

    public func release(handle: UInt64) throws(FSError) {
        guard let f = files.with({ $0.removeValue(forKey: handle) }) else { return }
        if let s = f.content, !f.staged {
            defer { content.releaseWriter(s) }
            s.lock()
            defer { s.unlock() }
            if s.unsynced || s.journalDirty {
                try commitContent(fd: f.fd, id: f.id, streamed: s, path: f.path)
            }
        }
    }

    /// Closes `handle` without committing its content: the row stays dirty. For a replica the
    /// peer never committed (the caller records why, so that the bytes are not served as a
    /// verified copy; recovery re-hashes the row as for any interrupted write).
    public func abandon(handle: UInt64) {
        guard let f = files.with({ $0.removeValue(forKey: handle) }) else { return }
        if let s = f.content, !f.staged { content.releaseWriter(s) }
    }

    public func fallocate(handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(FSError) {
        let f = try file(handle)
        guard let s = f.content else { throw FSError.badHandle }
        s.lock()
        defer { s.unlock() }
        try markDirty(s)
        _ = try sys { twin_fallocate(f.fd, mode, offset, length) }
        if mode & twin_FALLOC_FL_KEEP_SIZE() == 0 || offset < s.nextOffset { s.sequential = false }
        s.unsynced = true
    }

    // MARK: - Directories

    public func opendir(_ node: NodeRef) throws(FSError) -> UInt64 {
        let fd = try brick.openFile(node.path, flags: O_RDONLY | O_DIRECTORY)
        guard let dir = fdopendir(fd) else {
            let e = FSError.last
            close(fd)
            throw e
        }
        let h = newHandle()
        dirs.with { $0[h] = OpenDir(dir: dir, fd: fd, node: node) }
        return h
    }

    public func readdir(handle: UInt64, offset: Int64, plus: Bool, emit: (DirEntry) -> Bool) throws(FSError) {
        guard let d = dirs.with({ $0[handle] }) else { throw FSError.badHandle }
        d.lock.lock()
        defer { d.lock.unlock() }
        if offset != d.position {
            seekdir(d.dir, Int(offset))
            d.position = offset
        }
        while true {
            errno = 0
            guard let ent = Glibc.readdir(d.dir) else {
                if errno != 0 { throw FSError.last }
                return
            }
            let next = Int64(telldir(d.dir))
            let name = dirent.name(ent)
            let type = ent.pointee.d_type
            if Brick.isPrivate(parentPath: d.node.path, name: name) {
                d.position = next
                continue
            }
            var entry = DirEntry(name: name, id: UInt64(ent.pointee.d_ino), type: type, nextOffset: next, attributes: nil)
            if name == "." || name == ".." {
                // No lookup for these: the kernel knows them.
            } else if case let (st, id?)? = brick.entryStatAndID(dirFD: dirfd(d.dir), name: name) {
                // The usual case, from the open directory (a scan per create, as smbd does for
                // case-insensitive names, stays cheap).
                if plus {
                    var a = st
                    a.st_ino = UInt(id)
                    tierOverlay(&a, id: id)
                    entry.attributes = a
                }
                entry.id = id
            } else if plus {
                // No id yet (put into the brick behind TwinFS): the lookup adopts it.
                guard let st = try? lookup(parent: d.node, name: name) else {
                    d.position = next
                    continue // vanished meanwhile
                }
                entry.attributes = st
                entry.id = UInt64(st.st_ino)
            } else if let id = brick.readID(rel: rel(d.node, name)) {
                entry.id = id
            }
            guard emit(entry) else {
                // Not taken: come back to this entry next time.
                seekdir(d.dir, Int(d.position))
                return
            }
            d.position = next
        }
    }

    public func releasedir(handle: UInt64) {
        guard let d = dirs.with({ $0.removeValue(forKey: handle) }) else { return }
        closedir(d.dir)
    }

    public func statfs() throws(FSError) -> statvfs { try brick.statfs() }

    /// fsync on a directory: its entries are on disk and the journal has every change so far.
    public func fsyncdir(_ node: NodeRef) throws(FSError) {
        try brick.syncDirectory(node.path)
        let sealed = seals.takeAll()
        try submit([], wait: .durable)
        seals.markers.remove(sealed)
    }

    public func openHandle(for id: UInt64) -> UInt64? {
        files.with { m in m.first(where: { $0.value.id == id })?.key }
    }

    /// Open file and directory handles (for status).
    public var openHandles: Int { files.with { $0.count } + dirs.with { $0.count } }

    // MARK: - Extended attributes (user.*, security.*, ...; TwinFS's own trusted.twinfs.* are hidden)

    func checkXattr(_ name: String) throws(FSError) {
        if name.hasPrefix(Brick.privateXattrPrefix) || name.hasPrefix(RealName.xattrPrefix) { throw FSError(EPERM) }
    }

    public func getxattr(_ node: NodeRef, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        if name.hasPrefix(Brick.privateXattrPrefix) { throw FSError.noData }
        if name.hasPrefix(RealName.xattrPrefix) {
            return try realName(node, String(name.dropFirst(RealName.xattrPrefix.count)), into: buffer)
        }
        return try brick.withInode(node.path) { (proc, _) throws(FSError) -> Int in try Self.getxattr(proc, name, buffer) }
    }

    static func getxattr(_ proc: String, _ name: String, _ buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try sys { twin_getxattr(proc, name, buffer?.baseAddress, buffer?.count ?? 0) }
    }

    /// The stored spelling of `wanted` in directory `node` (see `RealName`), NUL-terminated as
    /// Samba reads it; ENODATA when the directory holds no such name in any case.
    func realName(_ node: NodeRef, _ wanted: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        let fd = try brick.openFile(node.path, flags: O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        let dir = node.path
        guard let found = try RealName.find(dirFD: fd, wanted: wanted, isHidden: { Brick.isPrivate(parentPath: dir, name: $0) })
        else { throw FSError.noData }
        let bytes = Array(found.utf8) + [0]
        guard let b = buffer else { return bytes.count }
        guard b.count >= bytes.count else { throw FSError(ERANGE) }
        b.copyBytes(from: bytes)
        return bytes.count
    }

    public func setxattr(_ node: NodeRef, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try checkXattr(name)
        try brick.withInode(node.path) { (proc, _) throws(FSError) in
            _ = try sys { twin_setxattr(proc, name, value.baseAddress, value.count, flags) }
        }
        let st = try brick.lstat(node.path)
        try submit([.putAttributes(Self.record(st, id: node.id))], wait: .queued)
    }

    public func listxattr(_ node: NodeRef) throws(FSError) -> [String] {
        try brick.withInode(node.path) { (p, _) throws(FSError) -> [String] in try Self.listxattr(p) }
    }

    static func listxattr(_ p: String) throws(FSError) -> [String] {
        let want = try sys { twin_listxattr(p, nil, 0) }
        var buf = [CChar](repeating: 0, count: max(want, 1))
        let size = try sys { twin_listxattr(p, &buf, buf.count) }
        var names: [String] = []
        var start = 0
        for i in 0..<size where buf[i] == 0 {
            let n = buf[start..<i].withUnsafeBufferPointer { String(decoding: UnsafeRawBufferPointer($0), as: UTF8.self) }
            if !n.hasPrefix(Brick.privateXattrPrefix) { names.append(n) }
            start = i + 1
        }
        return names
    }

    public func removexattr(_ node: NodeRef, name: String) throws(FSError) {
        try checkXattr(name)
        try brick.withInode(node.path) { (proc, _) throws(FSError) in _ = try sys { twin_removexattr(proc, name) } }
        let st = try brick.lstat(node.path)
        try submit([.putAttributes(Self.record(st, id: node.id))], wait: .queued)
    }

    // A file unlinked while open keeps its xattrs until the last close, and a plain file system
    // serves them through the descriptor (smbd reads and writes user.DOSATTRIB and security.NTACL
    // of a file it deleted while open). The kernel then asks by inode, which has no path here:
    // these answer through the open handle's descriptor. The file has no journal row left.

    func procPath(handle: UInt64) throws(FSError) -> String { "/proc/self/fd/\(try file(handle).fd)" }

    public func getxattr(handle: UInt64, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        if name.hasPrefix(Brick.privateXattrPrefix) || name.hasPrefix(RealName.xattrPrefix) { throw FSError.noData }
        return try Self.getxattr(procPath(handle: handle), name, buffer)
    }

    public func setxattr(handle: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try checkXattr(name)
        let p = try procPath(handle: handle)
        _ = try sys { twin_setxattr(p, name, value.baseAddress, value.count, flags) }
    }

    public func listxattr(handle: UInt64) throws(FSError) -> [String] { try Self.listxattr(procPath(handle: handle)) }

    public func removexattr(handle: UInt64, name: String) throws(FSError) {
        try checkXattr(name)
        let p = try procPath(handle: handle)
        _ = try sys { twin_removexattr(p, name) }
    }
}
