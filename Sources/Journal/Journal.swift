import CSQLite
import Foundation
import Glibc
import TwinCore

/// What the journal knows about one file or directory.
public struct InodeRecord: Sendable, Equatable {
    public var id: UInt64
    public var kind: EntryKind
    public var size: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    public var nlink: Int64
    public var version: Int64
    /// XXH3-128 of the content (files and symlink targets); nil while unknown.
    public var hash: [UInt8]?
    /// Content may differ from `hash`: being written, or interrupted by a crash.
    public var dirty: Bool

    public init(id: UInt64, kind: EntryKind, size: Int64, mode: UInt32, uid: UInt32, gid: UInt32,
                mtimeNs: Int64, ctimeNs: Int64, nlink: Int64 = 1, version: Int64 = 1,
                hash: [UInt8]? = nil, dirty: Bool = false) {
        self.id = id; self.kind = kind; self.size = size; self.mode = mode; self.uid = uid; self.gid = gid
        self.mtimeNs = mtimeNs; self.ctimeNs = ctimeNs; self.nlink = nlink; self.version = version
        self.hash = hash; self.dirty = dirty
    }
}

/// One change to the journal. A batch of them is applied in one transaction.
public enum JournalOp: Sendable {
    /// Insert or update an inode's attributes; keeps hash and dirty unless the row is new.
    case putAttributes(InodeRecord)
    /// Insert a new inode row as given (hash and dirty included).
    case insertInode(InodeRecord)
    /// New content is durable in the brick: record its size and hash, clear dirty.
    case setContent(id: UInt64, size: Int64, hash: [UInt8], mtimeNs: Int64, ctimeNs: Int64)
    /// Content is about to change in the brick.
    case markDirty(id: UInt64)
    /// `name` in `parent` now refers to `id` (replacing what it referred to).
    case link(parent: UInt64, name: String, id: UInt64)
    /// Remove the name; the inode row goes when its last name goes.
    case unlink(parent: UInt64, name: String)
    /// Move a name; a name at the target is replaced (its inode goes if that was its last name).
    case move(fromParent: UInt64, fromName: String, toParent: UInt64, toName: String)
    /// Swap two names (RENAME_EXCHANGE).
    case exchange(parentA: UInt64, nameA: String, parentB: UInt64, nameB: String)
    /// A namespace change is about to touch this name: recovery re-reads it from the brick.
    case intent(seq: Int64, parent: UInt64, name: String)
    /// The namespace change finished and its result is in this batch.
    case clearIntent(seq: Int64)
    /// Remove an inode row whatever its names (recovery of an aborted create).
    case deleteInodeIfNameless(id: UInt64)
    case setMeta(key: String, value: String)
    /// A change the peer must receive (an encoded peer message), in order of `seq`.
    /// `applied`: the change is on this brick (a row written just before the change is not yet).
    case peerOp(seq: Int64, message: [UInt8], applied: Bool)
    case peerOpApplied(seq: Int64)
    /// Applied here; the peer may have applied it too (sent, but its answer never came).
    case peerOpUncertain(seq: Int64)
    case dropPeerOp(seq: Int64)
    /// File `id`'s bytes must reach the peer. `owed`: false while a live copy is streaming (a
    /// crash leaves it to resend), true once the peer could not take it (catch-up sends it).
    case peerFile(id: UInt64, owed: Bool)
    /// The peer has file `id` as of generation `generation` (a newer mark keeps the row).
    case dropPeerFile(id: UInt64, generation: Int64)
    case splitBrain(key: String, id: UInt64, path: String, reason: String)
    case clearSplitBrain(key: String)
    /// File `id` on this brick is a placeholder (or stale): the peer's copy of `size` bytes
    /// hashing to `hash` must be received (disk replacement, scrub, full heal).
    case healPending(id: UInt64, size: Int64, hash: [UInt8])
    /// File `id` was received whole and verified.
    case healReceived(id: UInt64)
    /// The peer is sending file `id`: until its verified commit the bytes here are an
    /// incomplete replica (`AwaitKind.incompleteReplica`). A file already awaited for another
    /// reason keeps that record.
    case receivingReplica(id: UInt64)
    /// The peer's commit of file `id` was verified: its incomplete-replica record (only that
    /// kind) goes.
    case replicaCommitted(id: UInt64)
    /// A copy kept in the brick's quarantine area (never deleted by TwinFS).
    case quarantined(QuarantineRow)
    case scrubFinding(ScrubFinding)
    case clearScrubFinding(id: UInt64)
    /// File `id`'s bytes are (or are about to be, behind its stub) the object the row names.
    case tierRow(TierRow)
    /// File `id` was recalled (or its recall undone): its tier row's residence.
    case tierResidence(id: UInt64, residence: TierResidence)
    /// File `id` no longer has an object that holds its bytes (its content changed).
    case untier(id: UInt64)
}

public struct JournalStats: Sendable, Equatable {
    public var files: Int64
    public var directories: Int64
    public var symlinks: Int64
    public var bytes: Int64
    public var dirty: Int64
}

/// The node's metadata journal: SQLite in WAL mode with synchronous=FULL, on the node's local
/// disk. All writes go through one writer thread that commits whatever is queued in one
/// transaction (group commit), so durable commits do not bound the file rate.
public final class Journal: @unchecked Sendable {
    public static let schemaVersion = 1
    public let path: String
    public let identity: VolumeIdentity

    private let writerConn: SQLiteConnection?
    private var writer: SQLiteConnection { writerConn! }
    private let reader: SQLiteConnection
    /// Guards the reader connection (one query at a time). Leaf: never held with `cond`.
    private let readerLock = NSLock()
    private let lockFD: Int32
    public let readOnly: Bool

    // Group-commit state, guarded by `cond`. Leaf for submitters (they wait on it, touching
    // nothing else); the commit thread releases it before it writes to SQLite.
    private let cond = NSCondition()
    private var queue: [JournalOp] = []
    private var wantsSync = false         // a queued submission needs an fsync'ed commit
    private var queuedSeq: UInt64 = 0     // sequence of the last enqueued submission
    private var committedSeq: UInt64 = 0  // all submissions up to this one are durable
    private var failure: JournalError?
    private var stopping = false
    private var writerThread: Thread?
    private var intentSeq: Int64 = 0
    /// Append-only intents (see IntentLog); nil when opened read-only.
    private var intentLog: IntentLog?
    private var lastSync = true
    /// The last peer-op sequence number handed out (under `cond`).
    private var peerSeq: Int64 = 0
    /// Intents whose results are in the batch being committed (writer thread only).
    private var cleared: [Int64] = []
    /// Whether the `tiered` table may hold a row: false until a tier row is written (or found
    /// at open), so a volume without a tier pays no query per getattr, open or unlink. Leaf.
    let tierRowsMayExist = Locked(false)

    /// Opens (or with `create`, creates) the journal of `identity`. Takes an exclusive lock
    /// so that no second node or offline tool uses it at the same time.
    public init(path: String, identity: VolumeIdentity, create: Bool) throws(JournalError) {
        self.path = path
        self.identity = identity
        self.readOnly = false
        let exists = FileManager.default.fileExists(atPath: path)
        if !exists && !create { throw JournalError.open(path: path, message: "no such file") }
        lockFD = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else {
            throw JournalError.open(path: path, message: String(cString: strerror(errno)))
        }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            Glibc.close(lockFD)
            throw JournalError.locked(path: path)
        }
        var hasTier = true
        do {
            let w = try SQLiteConnection(path: path, readOnly: false, create: create)
            try w.exec("PRAGMA journal_mode=WAL")
            // FULL: a commit that backs an acknowledgement survives power loss (see docs).
            try w.exec("PRAGMA synchronous=FULL")
            // INSERT OR REPLACE must fire the delete trigger too, or the totals drift.
            try w.exec("PRAGMA recursive_triggers=ON")
            if !exists {
                try Self.createSchema(w, identity: identity)
            }
            try Self.createPeerTables(w)
            try Self.createHealTables(w)
            try Self.createTierTables(w)
            hasTier = (try? Self.hasTierRows(w)) ?? true
            try Self.checkIdentity(w, path: path, expected: identity)
            writerConn = w
            reader = try SQLiteConnection(path: path, readOnly: true, create: false)
            intentSeq = try Self.maxIntent(w)
            peerSeq = try Self.maxPeerSeq(w)
            w.resetAll()
            intentLog = try IntentLog(path: path + ".intents", firstSeq: intentSeq + 1)
        } catch {
            Glibc.close(lockFD)
            throw error
        }
        tierRowsMayExist.with { $0 = hasTier }
        // The thread keeps the journal alive until close() stops it.
        let t = Thread { self.writerLoop() }
        t.name = "twinfs-journal"
        writerThread = t
        t.start()
    }

    /// Opens a journal for reading only (verify, status of a stopped node): no lock, no writer,
    /// safe beside a running node thanks to WAL.
    public init(readOnlyPath path: String) throws(JournalError) {
        self.path = path
        readOnly = true
        lockFD = -1
        writerConn = nil
        guard FileManager.default.fileExists(atPath: path) else {
            throw JournalError.open(path: path, message: "no such file")
        }
        reader = try SQLiteConnection(path: path, readOnly: true, create: false)
        identity = try Self.identity(of: reader)
    }

    deinit {
        if lockFD >= 0 { Glibc.close(lockFD) }
    }

    /// Reads the identity stored in a journal without opening it for writing.
    public static func storedIdentity(path: String) throws(JournalError) -> VolumeIdentity {
        let c = try SQLiteConnection(path: path, readOnly: true, create: false)
        return try identity(of: c)
    }

    private static func identity(of c: SQLiteConnection) throws(JournalError) -> VolumeIdentity {
        var m: [String: String] = [:]
        do {
            let s = try c.statement("SELECT key, value FROM meta WHERE key IN ('volume','node','format')")
            while try s.step() { m[s.text(0)] = s.text(1) }
        } catch {
            throw JournalError.corrupt(path: c.path, message: "\(error)")
        }
        guard m["format"] == "twinfs-journal", let v = m["volume"], let n = m["node"] else {
            throw JournalError.corrupt(path: c.path, message: "no TwinFS identity in it")
        }
        return VolumeIdentity(volume: v, node: n)
    }

    private static func checkIdentity(_ c: SQLiteConnection, path: String, expected: VolumeIdentity) throws(JournalError) {
        let found = try identity(of: c)
        guard found == expected else { throw JournalError.foreign(path: path, found: found, expected: expected) }
        // quick_check reports damage as a result row, not as an error.
        let q = try c.statement("PRAGMA quick_check(1)")
        guard try q.step(), q.text(0) == "ok" else {
            throw JournalError.corrupt(path: path, message: "quick_check: \(q.text(0))")
        }
        c.resetAll()
    }

    private static func maxIntent(_ c: SQLiteConnection) throws(JournalError) -> Int64 {
        let s = try c.statement("SELECT COALESCE(MAX(seq), 0) FROM intents")
        _ = try s.step()
        return s.int(0)
    }

    static func createSchema(_ c: SQLiteConnection, identity: VolumeIdentity) throws(JournalError) {
        try c.exec("""
        BEGIN IMMEDIATE;
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE inodes(
            id INTEGER PRIMARY KEY,
            kind INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mode INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            gid INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            nlink INTEGER NOT NULL,
            version INTEGER NOT NULL,
            hash BLOB,
            dirty INTEGER NOT NULL);
        CREATE INDEX inodes_dirty ON inodes(id) WHERE dirty = 1;
        CREATE TABLE dentries(
            parent INTEGER NOT NULL,
            name TEXT NOT NULL,
            id INTEGER NOT NULL,
            PRIMARY KEY(parent, name)) WITHOUT ROWID;
        CREATE INDEX dentries_id ON dentries(id);
        CREATE TABLE intents(seq INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL);
        -- Totals kept by triggers so that `twinfs status` is O(1) on tens of millions of files.
        CREATE TABLE totals(kind INTEGER PRIMARY KEY, n INTEGER NOT NULL, bytes INTEGER NOT NULL);
        INSERT INTO totals VALUES (1,0,0),(2,0,0),(3,0,0),(4,0,0);
        CREATE TRIGGER inodes_ins AFTER INSERT ON inodes BEGIN
            UPDATE totals SET n = n + 1, bytes = bytes + NEW.size WHERE kind = NEW.kind; END;
        CREATE TRIGGER inodes_del AFTER DELETE ON inodes BEGIN
            UPDATE totals SET n = n - 1, bytes = bytes - OLD.size WHERE kind = OLD.kind; END;
        CREATE TRIGGER inodes_upd AFTER UPDATE OF size, kind ON inodes BEGIN
            UPDATE totals SET n = n - 1, bytes = bytes - OLD.size WHERE kind = OLD.kind;
            UPDATE totals SET n = n + 1, bytes = bytes + NEW.size WHERE kind = NEW.kind; END;
        """)
        for (k, v) in [("format", "twinfs-journal"), ("schema", "\(schemaVersion)"), ("volume", identity.volume),
                       ("node", identity.node), ("next_id", "2"), ("created", ISO8601DateFormatter().string(from: Date()))] {
            try c.statement("INSERT INTO meta(key, value) VALUES (?, ?)").run(k, v)
        }
        try c.exec("COMMIT")
    }

    // MARK: - Writing

    /// How long `submit` waits.
    public enum Wait: Sendable {
        /// Return at once; the ops commit with the next batch.
        case queued
        /// Return when committed to the WAL file (survives a crash of the process, not of the OS).
        case written
        /// Return when committed and fsynced (survives power loss).
        case durable
    }

    /// Queues `ops` for the next group commit and waits as asked.
    public func submit(_ ops: [JournalOp], durable: Bool) throws(JournalError) {
        try submit(ops, wait: durable ? .durable : .queued)
    }

    public func submit(_ ops: [JournalOp], wait: Wait) throws(JournalError) {
        precondition(!readOnly, "journal opened read-only")
        cond.lock()
        if let f = failure { cond.unlock(); throw f }
        queue.append(contentsOf: ops)
        if wait == .durable { wantsSync = true }
        queuedSeq += 1
        let mine = queuedSeq
        cond.broadcast()
        if wait != .queued {
            while committedSeq < mine && failure == nil { cond.wait() }
            if let f = failure, committedSeq < mine { cond.unlock(); throw f }
        }
        cond.unlock()
    }

    /// The error that stopped the writer, if any: the node then refuses every change.
    public var failed: JournalError? {
        cond.lock()
        defer { cond.unlock() }
        return failure
    }

    /// Waits until everything submitted so far is durable.
    public func sync() throws(JournalError) { try submit([], durable: true) }

    /// Records that a namespace change is about to touch (parent, name): one append to the
    /// intent log, in the file before this returns. Its `.clearIntent(seq:)` goes with the
    /// change's result ops; recovery replays intents whose result never committed.
    public func recordIntent(parent: UInt64, name: String) throws(JournalError) -> Int64 {
        guard let log = intentLog else { preconditionFailure("journal opened read-only") }
        return try log.record(parent: parent, name: name)
    }

    /// Empties the intent log once recovery has replayed it and committed the results.
    public func resetIntentLog() {
        intentLog?.reset()
    }

    /// A fresh sequence number for an intent kept in the SQLite table (tests, tools).
    public func nextPeerSeq() -> Int64 {
        cond.lock()
        defer { cond.unlock() }
        peerSeq += 1
        return peerSeq
    }

    public func nextIntentSeq() -> Int64 {
        cond.lock()
        defer { cond.unlock() }
        intentSeq += 1
        return intentSeq
    }

    private func writerLoop() {
        while true {
            cond.lock()
            while queuedSeq == committedSeq && !stopping { cond.wait() }
            if queuedSeq == committedSeq && stopping { cond.unlock(); return }
            let batch = queue
            let upTo = queuedSeq
            let sync = wantsSync
            wantsSync = false
            queue.removeAll(keepingCapacity: true)
            cond.unlock()

            var err: JournalError?
            cleared.removeAll(keepingCapacity: true)
            do {
                // Per batch: fsync the WAL only when someone waits for durability. A NORMAL
                // commit still reaches the WAL file, so it survives a crash of this process.
                if sync != lastSync {
                    try writer.exec(sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL")
                    lastSync = sync
                }
                try writer.exec("BEGIN IMMEDIATE")
                for op in batch { try apply(op) }
                // A commit that changes no row writes no WAL frame, and SQLite then syncs
                // nothing: earlier NORMAL commits would stay in the page cache although the
                // caller is told they are durable (fsyncdir, `sync()`). So a durable batch with
                // no ops changes one row (a no-op `SET value = value` is not enough: SQLite
                // writes no frame for it either). Batches with ops change rows already (a
                // content commit's new size, hash and times); the mark on every durable batch
                // cost an extra WAL page per close (measured: about 5 % of 512 KiB ingest).
                if sync && batch.isEmpty {
                    try writer.exec("INSERT OR REPLACE INTO meta(key, value) VALUES ('durable_mark', '\(UInt64.random(in: 0 ... .max))')")
                }
                writer.resetAll()
                try writer.exec("COMMIT")
            } catch {
                err = error
                try? writer.exec("ROLLBACK")
            }

            if err == nil { intentLog?.committed(cleared) }
            cond.lock()
            if let e = err { failure = e } else { committedSeq = upTo }
            cond.broadcast()
            cond.unlock()
            if err != nil { return }
        }
    }

    /// Flushes the queue, checkpoints the WAL and stops the writer.
    public func close(cleanShutdown: Bool) {
        guard !readOnly else { return }
        // A second close (an owner's teardown after a restart test closed it) has nothing to
        // do; its durable submit would wait forever for the stopped writer.
        if cond.withLock({ stopping }) { return }
        if cleanShutdown { try? submit([.setMeta(key: "clean_shutdown", value: "1")], durable: true) }
        cond.lock()
        stopping = true
        cond.broadcast()
        cond.unlock()
        while writerThread?.isExecuting == true { usleep(1000) }
        try? writer.exec("PRAGMA wal_checkpoint(TRUNCATE)")
        // Let the next owner (a restarted node, `journal rebuild`) in.
        flock(lockFD, LOCK_UN)
    }

    private func apply(_ op: JournalOp) throws(JournalError) {
        switch op {
        case let .putAttributes(r):
            let s = try writer.statement("""
                INSERT INTO inodes(id, kind, size, mode, uid, gid, mtime_ns, ctime_ns, nlink, version, hash, dirty)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?11)
                ON CONFLICT(id) DO UPDATE SET kind = ?2, mode = ?4, uid = ?5, gid = ?6,
                    mtime_ns = ?7, ctime_ns = ?8, nlink = ?9, version = version + 1
                """)
            bindRecord(s, r)
            try s.run()
        case let .insertInode(r):
            let s = try writer.statement("""
                INSERT OR REPLACE INTO inodes(id, kind, size, mode, uid, gid, mtime_ns, ctime_ns, nlink, version, hash, dirty)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?12, ?10, ?11)
                """)
            bindRecord(s, r)
            s.bind(12, r.version)
            try s.run()
        case let .setContent(id, size, hash, mtime, ctime):
            let s = try writer.statement("""
                UPDATE inodes SET size = ?2, hash = ?3, mtime_ns = ?4, ctime_ns = ?5, dirty = 0,
                    version = version + 1 WHERE id = ?1
                """)
            s.bind(1, id); s.bind(2, size); s.bind(3, hash); s.bind(4, mtime); s.bind(5, ctime)
            try s.run()
        case let .markDirty(id):
            let s = try writer.statement("UPDATE inodes SET dirty = 1 WHERE id = ?1")
            s.bind(1, id)
            try s.run()
        case let .link(parent, name, id):
            try removeName(parent: parent, name: name, except: id)
            let s = try writer.statement("INSERT OR REPLACE INTO dentries(parent, name, id) VALUES (?1, ?2, ?3)")
            s.bind(1, parent); s.bind(2, name); s.bind(3, id)
            try s.run()
        case let .unlink(parent, name):
            try removeName(parent: parent, name: name, except: nil)
        case let .move(fp, fn, tp, tn):
            guard let id = try idOf(parent: fp, name: fn) else { return }
            if fp == tp && fn == tn { return }
            try removeName(parent: tp, name: tn, except: id)
            let s = try writer.statement("UPDATE OR REPLACE dentries SET parent = ?3, name = ?4 WHERE parent = ?1 AND name = ?2")
            s.bind(1, fp); s.bind(2, fn); s.bind(3, tp); s.bind(4, tn)
            try s.run()
        case let .exchange(pa, na, pb, nb):
            let a = try idOf(parent: pa, name: na)
            let b = try idOf(parent: pb, name: nb)
            let s = try writer.statement("INSERT OR REPLACE INTO dentries(parent, name, id) VALUES (?1, ?2, ?3)")
            if let b { s.bind(1, pa); s.bind(2, na); s.bind(3, b); try s.run() }
            if let a {
                let s2 = try writer.statement("INSERT OR REPLACE INTO dentries(parent, name, id) VALUES (?1, ?2, ?3)")
                s2.bind(1, pb); s2.bind(2, nb); s2.bind(3, a); try s2.run()
            }
        case let .intent(seq, parent, name):
            let s = try writer.statement("INSERT OR REPLACE INTO intents(seq, parent, name) VALUES (?1, ?2, ?3)")
            s.bind(1, seq); s.bind(2, parent); s.bind(3, name)
            try s.run()
        case let .clearIntent(seq):
            cleared.append(seq)
            let s = try writer.statement("DELETE FROM intents WHERE seq = ?1")
            s.bind(1, seq)
            try s.run()
        case let .deleteInodeIfNameless(id):
            let s = try writer.statement("DELETE FROM inodes WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM dentries WHERE id = ?1)")
            s.bind(1, id)
            try s.run()
        case let .setMeta(key, value):
            let s = try writer.statement("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")
            s.bind(1, key); s.bind(2, value)
            try s.run()
        case .peerOp, .peerOpApplied, .peerOpUncertain, .dropPeerOp, .peerFile, .dropPeerFile, .splitBrain, .clearSplitBrain:
            try applyPeer(op, writer)
        case .healPending, .healReceived, .receivingReplica, .replicaCommitted, .quarantined, .scrubFinding, .clearScrubFinding:
            try applyHeal(op, writer)
        case .tierRow, .tierResidence, .untier:
            try applyTier(op, writer)
        }
    }

    private func bindRecord(_ s: Statement, _ r: InodeRecord) {
        s.bind(1, r.id); s.bind(2, r.kind.rawValue); s.bind(3, r.size); s.bind(4, Int64(r.mode))
        s.bind(5, Int64(r.uid)); s.bind(6, Int64(r.gid)); s.bind(7, r.mtimeNs); s.bind(8, r.ctimeNs)
        s.bind(9, r.nlink); s.bind(10, r.hash); s.bind(11, r.dirty ? 1 : 0)
    }

    private func idOf(parent: UInt64, name: String) throws(JournalError) -> UInt64? {
        let s = try writer.statement("SELECT id FROM dentries WHERE parent = ?1 AND name = ?2")
        s.bind(1, parent); s.bind(2, name)
        return try s.step() ? s.uint(0) : nil
    }

    /// Drops a name (unless it already points at `except`), and the inode if it was its last name.
    private func removeName(parent: UInt64, name: String, except: UInt64?) throws(JournalError) {
        guard let old = try idOf(parent: parent, name: name), old != except else { return }
        let d = try writer.statement("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")
        d.bind(1, parent); d.bind(2, name)
        try d.run()
        try dropSubtreeIfNameless(old)
    }

    private func dropSubtreeIfNameless(_ id: UInt64) throws(JournalError) {
        let s = try writer.statement("DELETE FROM inodes WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM dentries WHERE id = ?1)")
        s.bind(1, id)
        try s.run()
        try dropTierRowIfInodeGone(id, writer)
    }

    // MARK: - Reading (a separate WAL reader connection; never blocks the writer)

    func read<T>(_ body: (SQLiteConnection) throws(JournalError) -> T) throws(JournalError) -> T {
        readerLock.lock()
        defer {
            reader.resetAll()
            readerLock.unlock()
        }
        return try body(reader)
    }

    public func stats() throws(JournalError) -> JournalStats {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT kind, n, bytes FROM totals")
            var st = JournalStats(files: 0, directories: 0, symlinks: 0, bytes: 0, dirty: 0)
            while try s.step() {
                switch EntryKind(rawValue: Int(s.int(0))) {
                case .file: st.files = s.int(1); st.bytes += s.int(2)
                case .directory: st.directories = s.int(1)
                case .symlink: st.symlinks = s.int(1)
                default: break
                }
            }
            let d = try c.statement("SELECT COUNT(*) FROM inodes WHERE dirty = 1")
            _ = try d.step()
            st.dirty = d.int(0)
            return st
        }
    }

    public func inode(_ id: UInt64) throws(JournalError) -> InodeRecord? {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, kind, size, mode, uid, gid, mtime_ns, ctime_ns, nlink, version, hash, dirty FROM inodes WHERE id = ?1")
            s.bind(1, id)
            return try s.step() ? Self.record(s) : nil
        }
    }

    static func record(_ s: Statement) -> InodeRecord {
        InodeRecord(id: s.uint(0), kind: EntryKind(rawValue: Int(s.int(1))) ?? .other, size: s.int(2),
                    mode: UInt32(truncatingIfNeeded: s.int(3)), uid: UInt32(truncatingIfNeeded: s.int(4)),
                    gid: UInt32(truncatingIfNeeded: s.int(5)), mtimeNs: s.int(6), ctimeNs: s.int(7),
                    nlink: s.int(8), version: s.int(9), hash: s.blob(10), dirty: s.int(11) != 0)
    }

    public func children(of parent: UInt64) throws(JournalError) -> [(name: String, id: UInt64)] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT name, id FROM dentries WHERE parent = ?1")
            s.bind(1, parent)
            var out: [(String, UInt64)] = []
            while try s.step() { out.append((s.text(0), s.uint(1))) }
            return out
        }
    }

    /// The id of a brick-relative path by walking names from the root ("" is the root).
    public func id(atPath rel: String) throws(JournalError) -> UInt64? {
        var id = StableID.root
        for comp in rel.split(separator: "/") {
            guard let next = try lookup(parent: id, name: String(comp)) else { return nil }
            id = next
        }
        return id
    }

    public func lookup(parent: UInt64, name: String) throws(JournalError) -> UInt64? {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id FROM dentries WHERE parent = ?1 AND name = ?2")
            s.bind(1, parent); s.bind(2, name)
            return try s.step() ? s.uint(0) : nil
        }
    }

    /// The brick-relative path of an id by one of its names ("" for the root), or nil if unreachable.
    public func path(of id: UInt64) throws(JournalError) -> String? {
        try read { c throws(JournalError) in
            var parts: [String] = []
            var cur = id
            var guardCount = 0
            while cur != StableID.root {
                let s = try c.statement("SELECT parent, name FROM dentries WHERE id = ?1 LIMIT 1")
                s.bind(1, cur)
                guard try s.step() else { return nil }
                parts.append(s.text(1))
                cur = s.uint(0)
                guardCount += 1
                if guardCount > 4096 { return nil }
            }
            return parts.reversed().joined(separator: "/")
        }
    }

    /// Intents whose results never committed: the log's leftovers and any in the table.
    public func pendingIntents() throws(JournalError) -> [(seq: Int64, parent: UInt64, name: String)] {
        var out: [(seq: Int64, parent: UInt64, name: String)] = try read { c throws(JournalError) in
            let s = try c.statement("SELECT seq, parent, name FROM intents ORDER BY seq")
            var out: [(Int64, UInt64, String)] = []
            while try s.step() { out.append((s.int(0), s.uint(1), s.text(2))) }
            return out
        }
        for r in intentLog?.leftovers() ?? [] { out.append((r.seq, r.parent, r.name)) }
        return out.sorted { $0.seq < $1.seq }
    }

    public func dirtyInodes() throws(JournalError) -> [UInt64] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id FROM inodes WHERE dirty = 1")
            var out: [UInt64] = []
            while try s.step() { out.append(s.uint(0)) }
            return out
        }
    }

    public func meta(_ key: String) throws(JournalError) -> String? {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT value FROM meta WHERE key = ?1")
            s.bind(1, key)
            return try s.step() ? s.text(0) : nil
        }
    }

    /// Bytes the journal occupies on disk (database plus WAL).
    public func sizeOnDisk() -> Int64 {
        var total: Int64 = 0
        for p in [path, path + "-wal"] {
            var st = stat()
            if stat(p, &st) == 0 { total += Int64(st.st_size) }
        }
        return total
    }

    /// Reserves `count` stable-id counters durably and returns the first one.
    /// `atLeast`: the brick's own high-water mark, so that a journal older than the brick
    /// (restored from a backup, say) never hands out an id the brick has seen.
    public func reserveIDs(_ count: UInt64, atLeast: UInt64 = 0) throws(JournalError) -> UInt64 {
        guard let stored = try meta("next_id"), let recorded = UInt64(stored) else {
            throw JournalError.corrupt(path: path, message: "meta next_id is missing")
        }
        let next = max(recorded, atLeast)
        try submit([.setMeta(key: "next_id", value: "\(next + count)")], durable: true)
        return next
    }
}

extension Statement {
    func run(_ a: String, _ b: String) throws(JournalError) {
        bind(1, a); bind(2, b)
        try run()
    }
}
