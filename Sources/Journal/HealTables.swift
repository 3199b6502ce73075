import Foundation
import TwinCore

/// A copy the healer set aside instead of overwriting it: the losing side of a resolved split
/// brain, or a copy that failed its scrub. It stays in the brick's quarantine area until an
/// admin restores or removes it; TwinFS never deletes it.
public struct QuarantineRow: Sendable, Equatable, Codable {
    public var qid: Int64
    public var id: UInt64
    /// The file's path in the volume when it was set aside.
    public var path: String
    /// Where the copy is, relative to the brick (inside `.twinfs/quarantine/`).
    public var stored: String
    public var size: Int64
    public var hash: [UInt8]
    public var reason: String
    public var created: String

    public init(qid: Int64 = 0, id: UInt64, path: String, stored: String, size: Int64, hash: [UInt8], reason: String, created: String) {
        self.qid = qid; self.id = id; self.path = path; self.stored = stored; self.size = size; self.hash = hash
        self.reason = reason; self.created = created
    }
}

/// What a scrub found wrong with one file.
public struct ScrubFinding: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        /// The bytes no longer matched the journal; the peer's good copy replaced them.
        case repaired
        /// Bad here and the peer's copy is bad (or missing) too: reported, left untouched.
        case badOnBothNodes = "bad-on-both-nodes"
        /// Bad here; the peer could not be asked yet (retried by the next scrub).
        case awaitingPeer = "awaiting-peer"
    }
    public var id: UInt64
    public var path: String
    public var state: State
    public var detail: String
    public var found: String

    public init(id: UInt64, path: String, state: State, detail: String, found: String) {
        self.id = id; self.path = path; self.state = state; self.detail = detail; self.found = found
    }
}

public struct HealPendingRow: Sendable, Equatable {
    public var id: UInt64
    public var size: Int64
    public var hash: [UInt8]
    public var kind: AwaitKind { AwaitKind(storedSize: size) }
}

/// Why a file awaits its content from the peer. Stored in `heal_pending.size`: a size the file
/// must end with (>= 0), or one of two negative codes; nothing outside this type reads them.
public enum AwaitKind: Sendable, Equatable {
    /// The walk (rebuild, full heal, scrub) knows the size and XXH3-128 it must end with.
    case expected
    /// This node was writing the file when it stopped: the peer's copy replaces it (if the
    /// peer has a complete one), this one is in quarantine. It keeps showing its own size.
    case interruptedHere
    /// The peer was sending this file and stopped before its commit (link lost, this disk
    /// full or read-only, the sender died): these bytes are not a verified copy and are never
    /// served as current until the peer's copy arrives.
    case incompleteReplica

    static let interruptedCode: Int64 = -1
    static let incompleteCode: Int64 = -2

    public init(storedSize: Int64) {
        switch storedSize {
        case Self.interruptedCode: self = .interruptedHere
        case Self.incompleteCode: self = .incompleteReplica
        default: self = .expected
        }
    }

    /// True when the file shows its own size meanwhile (no size is known to await).
    public var keepsOwnSize: Bool { self != .expected }

    /// The stored size of an incomplete replica (for an in-memory copy of the row).
    public static var incompleteReplicaSize: Int64 { incompleteCode }
}

extension JournalOp {
    /// File `id` awaits the peer's copy because this node was writing it when it stopped.
    public static func awaitInterrupted(id: UInt64) -> JournalOp { .healPending(id: id, size: AwaitKind.interruptedCode, hash: []) }
}

extension Journal {
    static func createHealTables(_ c: SQLiteConnection) throws(JournalError) {
        try c.exec("""
        CREATE TABLE IF NOT EXISTS heal_pending(id INTEGER PRIMARY KEY, size INTEGER NOT NULL, hash BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS quarantine(qid INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, path TEXT NOT NULL,
            stored TEXT NOT NULL, size INTEGER NOT NULL, hash BLOB NOT NULL, reason TEXT NOT NULL, created TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS scrub_findings(id INTEGER PRIMARY KEY, path TEXT NOT NULL, state TEXT NOT NULL,
            detail TEXT NOT NULL, found TEXT NOT NULL);
        """)
    }

    func applyHeal(_ op: JournalOp, _ w: SQLiteConnection) throws(JournalError) {
        switch op {
        case let .healPending(id, size, hash):
            let s = try w.statement("INSERT OR REPLACE INTO heal_pending(id, size, hash) VALUES (?1, ?2, ?3)")
            s.bind(1, id); s.bind(2, size); s.bind(3, hash)
            try s.run()
        case let .receivingReplica(id):
            let s = try w.statement("INSERT OR IGNORE INTO heal_pending(id, size, hash) VALUES (?1, ?2, ?3)")
            s.bind(1, id); s.bind(2, AwaitKind.incompleteCode); s.bind(3, [UInt8]())
            try s.run()
        case let .replicaCommitted(id):
            let s = try w.statement("DELETE FROM heal_pending WHERE id = ?1 AND size = ?2")
            s.bind(1, id); s.bind(2, AwaitKind.incompleteCode)
            try s.run()
        case let .healReceived(id):
            let s = try w.statement("DELETE FROM heal_pending WHERE id = ?1")
            s.bind(1, id)
            try s.run()
        case let .quarantined(q):
            let s = try w.statement("""
                INSERT INTO quarantine(id, path, stored, size, hash, reason, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                """)
            s.bind(1, q.id); s.bind(2, q.path); s.bind(3, q.stored); s.bind(4, q.size); s.bind(5, q.hash)
            s.bind(6, q.reason); s.bind(7, q.created)
            try s.run()
        case let .scrubFinding(f):
            let s = try w.statement("INSERT OR REPLACE INTO scrub_findings(id, path, state, detail, found) VALUES (?1, ?2, ?3, ?4, ?5)")
            s.bind(1, f.id); s.bind(2, f.path); s.bind(3, f.state.rawValue); s.bind(4, f.detail); s.bind(5, f.found)
            try s.run()
        case let .clearScrubFinding(id):
            let s = try w.statement("DELETE FROM scrub_findings WHERE id = ?1")
            s.bind(1, id)
            try s.run()
        default:
            preconditionFailure("not a heal op")
        }
    }

    /// Files this node still has to receive, in id order after `id`.
    public func healPending(after id: UInt64 = 0, limit: Int) throws(JournalError) -> [HealPendingRow] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, size, hash FROM heal_pending WHERE id > ?1 ORDER BY id LIMIT ?2")
            s.bind(1, Int64(bitPattern: id)); s.bind(2, limit)
            var out: [HealPendingRow] = []
            while try s.step() { out.append(HealPendingRow(id: s.uint(0), size: s.int(1), hash: s.blob(2) ?? [])) }
            return out
        }
    }

    public func healPendingRow(_ id: UInt64) throws(JournalError) -> HealPendingRow? {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, size, hash FROM heal_pending WHERE id = ?1")
            s.bind(1, id)
            return try s.step() ? HealPendingRow(id: s.uint(0), size: s.int(1), hash: s.blob(2) ?? []) : nil
        }
    }

    /// Count and bytes of the files this node still has to receive.
    public func healPendingTotals() throws(JournalError) -> (files: Int64, bytes: Int64) {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT count(*), coalesce(sum(max(size, 0)), 0) FROM heal_pending")
            _ = try s.step()
            return (s.int(0), s.int(1))
        }
    }

    /// Count and bytes of the copies kept in quarantine.
    public func quarantineTotals() throws(JournalError) -> (files: Int64, bytes: Int64) {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT count(*), coalesce(sum(size), 0) FROM quarantine")
            _ = try s.step()
            return (s.int(0), s.int(1))
        }
    }

    public func quarantine(limit: Int = 10_000) throws(JournalError) -> [QuarantineRow] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT qid, id, path, stored, size, hash, reason, created FROM quarantine ORDER BY qid LIMIT ?1")
            s.bind(1, limit)
            var out: [QuarantineRow] = []
            while try s.step() {
                out.append(QuarantineRow(qid: s.int(0), id: s.uint(1), path: s.text(2), stored: s.text(3), size: s.int(4),
                                         hash: s.blob(5) ?? [], reason: s.text(6), created: s.text(7)))
            }
            return out
        }
    }

    public func scrubFindings(limit: Int = 10_000) throws(JournalError) -> [ScrubFinding] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, path, state, detail, found FROM scrub_findings ORDER BY found LIMIT ?1")
            s.bind(1, limit)
            var out: [ScrubFinding] = []
            while try s.step() {
                out.append(ScrubFinding(id: s.uint(0), path: s.text(1), state: ScrubFinding.State(rawValue: s.text(2)) ?? .awaitingPeer,
                                        detail: s.text(3), found: s.text(4)))
            }
            return out
        }
    }

    /// The highest id counter node `ordinal` handed out that this journal knows of (0: none).
    public func highestCounter(ordinal: UInt8) throws(JournalError) -> UInt64 {
        try read { c throws(JournalError) in
            let lo = Int64(ordinal) << 56, hi = (Int64(ordinal) + 1) << 56
            let s = try c.statement("SELECT coalesce(max(id), 0) FROM inodes WHERE id >= ?1 AND id < ?2")
            s.bind(1, lo); s.bind(2, hi)
            _ = try s.step()
            let v = s.uint(0)
            return v == 0 ? 0 : v & 0x00FF_FFFF_FFFF_FFFF
        }
    }

    /// Files with a clean hash after `id`, in id order (the scrubber's walk).
    public func cleanFiles(after id: UInt64, limit: Int) throws(JournalError) -> [InodeRecord] {
        try read { c throws(JournalError) in
            let s = try c.statement("""
                SELECT id, kind, size, mode, uid, gid, mtime_ns, ctime_ns, nlink, version, hash, dirty FROM inodes
                WHERE id > ?1 AND kind = 1 AND dirty = 0 AND hash IS NOT NULL ORDER BY id LIMIT ?2
                """)
            s.bind(1, Int64(bitPattern: id)); s.bind(2, limit)
            var out: [InodeRecord] = []
            while try s.step() { out.append(Self.record(s)) }
            return out
        }
    }

    /// Children of `parent` with their inode rows, names in byte order after `after`.
    public func listing(of parent: UInt64, after: String, limit: Int) throws(JournalError) -> [(name: String, record: InodeRecord)] {
        try read { c throws(JournalError) in
            let s = try c.statement("""
                SELECT d.name, i.id, i.kind, i.size, i.mode, i.uid, i.gid, i.mtime_ns, i.ctime_ns, i.nlink, i.version, i.hash, i.dirty
                FROM dentries d JOIN inodes i ON i.id = d.id WHERE d.parent = ?1 AND d.name > ?2 ORDER BY d.name LIMIT ?3
                """)
            s.bind(1, parent); s.bind(2, after); s.bind(3, limit)
            var out: [(String, InodeRecord)] = []
            while try s.step() {
                let r = InodeRecord(id: s.uint(1), kind: EntryKind(rawValue: Int(s.int(2))) ?? .other, size: s.int(3),
                                    mode: UInt32(truncatingIfNeeded: s.int(4)), uid: UInt32(truncatingIfNeeded: s.int(5)),
                                    gid: UInt32(truncatingIfNeeded: s.int(6)), mtimeNs: s.int(7), ctimeNs: s.int(8),
                                    nlink: s.int(9), version: s.int(10), hash: s.blob(11), dirty: s.int(12) != 0)
                out.append((s.text(0), r))
            }
            return out
        }
    }
}
