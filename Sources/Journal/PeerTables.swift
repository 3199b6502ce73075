import Foundation
import TwinCore

/// What this node owes its peer, kept in the journal so that it survives a crash or a restart:
/// the namespace changes not yet applied on the peer (`peer_ops`, replayed in order), the files
/// whose bytes the peer lacks (`peer_files`), and the entries changed on both sides while the
/// nodes could not talk (`split_brain`), which nothing resolves automatically.
public struct PeerOpRow: Sendable, Equatable {
    public var seq: Int64
    public var message: [UInt8]
    public var applied: Bool
    /// The peer may already have it (its answer was lost): a replay must tolerate that.
    public var uncertain: Bool = false
}

public struct PeerFileRow: Sendable, Equatable {
    public var id: UInt64
    public var owed: Bool
    public var generation: Int64
}

public struct SplitBrainRow: Sendable, Equatable {
    public var key: String
    public var id: UInt64
    public var path: String
    public var reason: String
    public var detected: String
}

public struct PeerBacklog: Sendable, Equatable {
    public var ops: Int64
    /// Files owed to the peer (not counting files whose live copy is streaming).
    public var files: Int64
    public var bytes: Int64
    public var splitBrain: Int64
}

extension Journal {
    static func createPeerTables(_ c: SQLiteConnection) throws(JournalError) {
        try c.exec("""
        CREATE TABLE IF NOT EXISTS peer_ops(seq INTEGER PRIMARY KEY, msg BLOB NOT NULL, applied INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS peer_files(id INTEGER PRIMARY KEY, owed INTEGER NOT NULL, gen INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS split_brain(key TEXT PRIMARY KEY, id INTEGER NOT NULL, path TEXT NOT NULL,
            reason TEXT NOT NULL, detected TEXT NOT NULL);
        """)
    }

    static func maxPeerSeq(_ c: SQLiteConnection) throws(JournalError) -> Int64 {
        let s = try c.statement("SELECT coalesce(max(seq), 0) FROM peer_ops")
        _ = try s.step()
        return s.int(0)
    }

    func applyPeer(_ op: JournalOp, _ w: SQLiteConnection) throws(JournalError) {
        switch op {
        case let .peerOp(seq, message, applied):
            let s = try w.statement("INSERT OR REPLACE INTO peer_ops(seq, msg, applied) VALUES (?1, ?2, ?3)")
            s.bind(1, seq); s.bind(2, message); s.bind(3, applied ? 1 : 0)
            try s.run()
        case let .peerOpApplied(seq):
            let s = try w.statement("UPDATE peer_ops SET applied = 1 WHERE seq = ?1")
            s.bind(1, seq)
            try s.run()
        case let .peerOpUncertain(seq):
            let s = try w.statement("UPDATE peer_ops SET applied = 2 WHERE seq = ?1")
            s.bind(1, seq)
            try s.run()
        case let .dropPeerOp(seq):
            let s = try w.statement("DELETE FROM peer_ops WHERE seq = ?1")
            s.bind(1, seq)
            try s.run()
        case let .peerFile(id, owed):
            let s = try w.statement("""
                INSERT INTO peer_files(id, owed, gen) VALUES (?1, ?2, 1)
                ON CONFLICT(id) DO UPDATE SET owed = max(owed, ?2), gen = gen + 1
                """)
            s.bind(1, id); s.bind(2, owed ? 1 : 0)
            try s.run()
        case let .dropPeerFile(id, generation):
            let s = try w.statement("DELETE FROM peer_files WHERE id = ?1 AND gen <= ?2")
            s.bind(1, id); s.bind(2, generation)
            try s.run()
        case let .splitBrain(key, id, path, reason):
            let s = try w.statement("""
                INSERT INTO split_brain(key, id, path, reason, detected) VALUES (?1, ?2, ?3, ?4, ?5)
                ON CONFLICT(key) DO NOTHING
                """)
            s.bind(1, key); s.bind(2, id); s.bind(3, path); s.bind(4, reason)
            s.bind(5, ISO8601DateFormatter().string(from: Date()))
            try s.run()
        case let .clearSplitBrain(key):
            let s = try w.statement("DELETE FROM split_brain WHERE key = ?1")
            s.bind(1, key)
            try s.run()
        default:
            preconditionFailure("not a peer op")
        }
    }

    /// Owed namespace changes after `seq`, oldest first.
    public func peerOps(after seq: Int64, limit: Int) throws(JournalError) -> [PeerOpRow] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT seq, msg, applied FROM peer_ops WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            s.bind(1, seq); s.bind(2, limit)
            var out: [PeerOpRow] = []
            while try s.step() {
                out.append(PeerOpRow(seq: s.int(0), message: s.blob(1) ?? [], applied: s.int(2) != 0, uncertain: s.int(2) == 2))
            }
            return out
        }
    }

    /// Files owed to the peer (with `includeStreaming`, also those whose live copy may be in flight).
    public func peerFiles(after id: UInt64 = 0, limit: Int, includeStreaming: Bool = false) throws(JournalError) -> [PeerFileRow] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, owed, gen FROM peer_files WHERE id > ?1 AND owed >= ?3 ORDER BY id LIMIT ?2")
            s.bind(1, Int64(bitPattern: id)); s.bind(2, limit); s.bind(3, includeStreaming ? 0 : 1)
            var out: [PeerFileRow] = []
            while try s.step() { out.append(PeerFileRow(id: s.uint(0), owed: s.int(1) != 0, generation: s.int(2))) }
            return out
        }
    }

    public func peerFile(_ id: UInt64) throws(JournalError) -> PeerFileRow? {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id, owed, gen FROM peer_files WHERE id = ?1")
            s.bind(1, id)
            return try s.step() ? PeerFileRow(id: s.uint(0), owed: s.int(1) != 0, generation: s.int(2)) : nil
        }
    }

    public func peerBacklog() throws(JournalError) -> PeerBacklog {
        try read { c throws(JournalError) in
            var b = PeerBacklog(ops: 0, files: 0, bytes: 0, splitBrain: 0)
            let o = try c.statement("SELECT count(*) FROM peer_ops")
            if try o.step() { b.ops = o.int(0) }
            let f = try c.statement("""
                SELECT count(*), coalesce(sum(i.size), 0) FROM peer_files p LEFT JOIN inodes i ON i.id = p.id WHERE p.owed = 1
                """)
            if try f.step() { b.files = f.int(0); b.bytes = f.int(1) }
            let x = try c.statement("SELECT count(*) FROM split_brain")
            if try x.step() { b.splitBrain = x.int(0) }
            return b
        }
    }

    public func splitBrains(limit: Int = 1000) throws(JournalError) -> [SplitBrainRow] {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT key, id, path, reason, detected FROM split_brain ORDER BY detected LIMIT ?1")
            s.bind(1, limit)
            var out: [SplitBrainRow] = []
            while try s.step() {
                out.append(SplitBrainRow(key: s.text(0), id: s.uint(1), path: s.text(2), reason: s.text(3), detected: s.text(4)))
            }
            return out
        }
    }

    public func splitBrainIDs() throws(JournalError) -> Set<UInt64> {
        try read { c throws(JournalError) in
            let s = try c.statement("SELECT id FROM split_brain WHERE id != 0")
            var out: Set<UInt64> = []
            while try s.step() { out.insert(s.uint(0)) }
            return out
        }
    }
}
