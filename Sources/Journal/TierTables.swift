import Foundation
import TwinCore

/// Where a file's bytes live for the archive tier, when not only on the brick.
public enum TierResidence: Int64, Sendable, Equatable {
    /// The brick holds a stub; the bytes are the object named by the row.
    case tiered = 1
    /// Recalled: the brick holds the bytes again, the object (and its retention) still exists.
    case recalled = 2
}

/// The journal's record of one file's object in the store (table `tiered`, one row per file id).
/// The inode row keeps the file's real size, times, owner and mode; this row says where the
/// bytes are. It goes with the inode row (last name unlinked).
public struct TierRow: Sendable, Equatable {
    public var id: UInt64
    public var residence: TierResidence
    public var bucket: String
    public var key: String
    public var versionId: String?
    public var size: Int64
    /// XXH3-128 of the content (16 bytes), as the inode row's hash.
    public var xxh3: [UInt8]
    /// Object Lock's retain-until, seconds since the epoch; nil without retention.
    public var retainUntil: Int64?

    public init(id: UInt64, residence: TierResidence, bucket: String, key: String, versionId: String?, size: Int64,
                xxh3: [UInt8], retainUntil: Int64?) {
        self.id = id; self.residence = residence; self.bucket = bucket; self.key = key; self.versionId = versionId
        self.size = size; self.xxh3 = xxh3; self.retainUntil = retainUntil
    }

    /// Under retention at `nowSeconds`: neither deleted nor overwritten through the mount.
    public func isRetained(nowSeconds: Int64) -> Bool { retainUntil.map { $0 > nowSeconds } ?? false }
}

extension Journal {
    /// The tier's table; created on open for journals made before it existed (IF NOT EXISTS is
    /// the migration, as for the peer and heal tables).
    static func createTierTables(_ c: SQLiteConnection) throws(JournalError) {
        try c.exec("""
        CREATE TABLE IF NOT EXISTS tiered(
            id INTEGER PRIMARY KEY,
            residence INTEGER NOT NULL,
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            version_id TEXT,
            size INTEGER NOT NULL,
            xxh3 BLOB NOT NULL,
            retain_until INTEGER);
        """)
    }

    func applyTier(_ op: JournalOp, _ w: SQLiteConnection) throws(JournalError) {
        switch op {
        case let .tierRow(r):
            // Before the row: a reader that sees the flag still off finds no row either.
            tierRowsMayExist.with { $0 = true }
            let s = try w.statement("""
                INSERT OR REPLACE INTO tiered(id, residence, bucket, key, version_id, size, xxh3, retain_until)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                """)
            s.bind(1, r.id); s.bind(2, r.residence.rawValue); s.bind(3, r.bucket); s.bind(4, r.key)
            s.bindOptional(5, r.versionId); s.bind(6, r.size); s.bind(7, r.xxh3); s.bindOptional(8, r.retainUntil)
            try s.run()
        case let .tierResidence(id, residence):
            let s = try w.statement("UPDATE tiered SET residence = ?2 WHERE id = ?1")
            s.bind(1, id); s.bind(2, residence.rawValue)
            try s.run()
        case let .untier(id):
            let s = try w.statement("DELETE FROM tiered WHERE id = ?1")
            s.bind(1, id)
            try s.run()
        default:
            break
        }
    }

    /// Drops the tier row of an inode row that is gone (its last name unlinked).
    func dropTierRowIfInodeGone(_ id: UInt64, _ w: SQLiteConnection) throws(JournalError) {
        let s = try w.statement("DELETE FROM tiered WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM inodes WHERE id = ?1)")
        s.bind(1, id)
        try s.run()
    }

    /// The tier row of file `id`, nil when the file is only on the brick. A read-only journal
    /// made before the table existed has no tiered files.
    public func tierRow(_ id: UInt64) throws(JournalError) -> TierRow? {
        if !readOnly, !tierRowsMayExist.with({ $0 }) { return nil }
        return try read { c throws(JournalError) in
            if readOnly, try !Self.hasTierTable(c) { return nil }
            let s = try c.statement("""
                SELECT id, residence, bucket, key, version_id, size, xxh3, retain_until FROM tiered WHERE id = ?1
                """)
            s.bind(1, id)
            guard try s.step() else { return nil }
            return TierRow(id: s.uint(0), residence: TierResidence(rawValue: s.int(1)) ?? .tiered, bucket: s.text(2),
                           key: s.text(3), versionId: s.isNull(4) ? nil : s.text(4), size: s.int(5), xxh3: s.blob(6) ?? [],
                           retainUntil: s.isNull(7) ? nil : s.int(7))
        }
    }

    /// Clean files after `id` in id order with their residence (nil: hot): the tier pass's scan.
    public func tierScan(after id: UInt64, limit: Int) throws(JournalError) -> [(record: InodeRecord, residence: TierResidence?)] {
        try read { c throws(JournalError) in
            let s = try c.statement("""
                SELECT i.id, i.kind, i.size, i.mode, i.uid, i.gid, i.mtime_ns, i.ctime_ns, i.nlink, i.version, i.hash, i.dirty,
                    t.residence FROM inodes i LEFT JOIN tiered t ON t.id = i.id
                WHERE i.id > ?1 AND i.kind = 1 AND i.dirty = 0 AND i.hash IS NOT NULL ORDER BY i.id LIMIT ?2
                """)
            s.bind(1, Int64(bitPattern: id)); s.bind(2, limit)
            var out: [(InodeRecord, TierResidence?)] = []
            while try s.step() { out.append((Self.record(s), s.isNull(12) ? nil : TierResidence(rawValue: s.int(12)))) }
            return out
        }
    }

    static func hasTierRows(_ c: SQLiteConnection) throws(JournalError) -> Bool {
        let s = try c.statement("SELECT 1 FROM tiered LIMIT 1")
        return try s.step()
    }

    /// Whether any file may be tiered (a cheap check before a path's id is read).
    public var mayHaveTieredFiles: Bool { readOnly || tierRowsMayExist.with { $0 } }

    private static func hasTierTable(_ c: SQLiteConnection) throws(JournalError) -> Bool {
        let s = try c.statement("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tiered'")
        return try s.step()
    }
}

extension Statement {
    func bindOptional(_ i: Int32, _ v: String?) {
        if let v { bind(i, v) } else { bind(i, nil as [UInt8]?) }
    }
    func bindOptional(_ i: Int32, _ v: Int64?) {
        if let v { bind(i, v) } else { bind(i, nil as [UInt8]?) }
    }
}
