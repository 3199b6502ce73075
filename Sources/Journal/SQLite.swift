import CSQLite
import TwinCore

/// A thin wrapper over one SQLite connection. Not thread-safe: each owner serialises its use.
final class SQLiteConnection {
    let db: OpaquePointer
    let path: String
    private var cache: [String: OpaquePointer] = [:]

    init(path: String, readOnly: Bool, create: Bool) throws(JournalError) {
        var handle: OpaquePointer?
        var flags = readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE
        if create { flags |= SQLITE_OPEN_CREATE }
        flags |= SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let h = handle else {
            let msg = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let h = handle { sqlite3_close_v2(h) }
            throw JournalError.open(path: path, message: msg)
        }
        db = h
        self.path = path
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit {
        for (_, s) in cache { sqlite3_finalize(s) }
        sqlite3_close_v2(db)
    }

    var lastError: String { String(cString: sqlite3_errmsg(db)) }

    func exec(_ sql: String) throws(JournalError) {
        var err: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(db, sql, nil, nil, &err) != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? lastError
            sqlite3_free(err)
            throw JournalError.sql(path: path, message: msg)
        }
    }

    /// A cached prepared statement, reset and with bindings cleared.
    func statement(_ sql: String) throws(JournalError) -> Statement {
        if let s = cache[sql] {
            sqlite3_reset(s)
            sqlite3_clear_bindings(s)
            return Statement(stmt: s, conn: self)
        }
        var s: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &s, nil) == SQLITE_OK, let st = s else {
            throw JournalError.sql(path: path, message: "\(lastError) in: \(sql)")
        }
        cache[sql] = st
        return Statement(stmt: st, conn: self)
    }

    var changes: Int { Int(sqlite3_changes(db)) }

    /// Resets every cached statement: a SELECT left mid-way would hold its read snapshot open.
    func resetAll() {
        for (_, s) in cache { sqlite3_reset(s) }
    }
}

/// A prepared statement in use. Bind parameters are 1-based, columns 0-based.
struct Statement {
    let stmt: OpaquePointer
    unowned let conn: SQLiteConnection

    func bind(_ i: Int32, _ v: Int64) { sqlite3_bind_int64(stmt, i, v) }
    func bind(_ i: Int32, _ v: Int) { sqlite3_bind_int64(stmt, i, Int64(v)) }
    func bind(_ i: Int32, _ v: UInt64) { sqlite3_bind_int64(stmt, i, Int64(bitPattern: v)) }
    func bind(_ i: Int32, _ v: String) { sqlite3_bind_text(stmt, i, v, -1, csqlite_transient()) }
    func bind(_ i: Int32, _ v: [UInt8]?) {
        guard let v else { sqlite3_bind_null(stmt, i); return }
        v.withUnsafeBytes { _ = sqlite3_bind_blob(stmt, i, $0.baseAddress, Int32($0.count), csqlite_transient()) }
    }

    /// Steps once; true while a row is available.
    func step() throws(JournalError) -> Bool {
        let rc = sqlite3_step(stmt)
        if rc == SQLITE_ROW { return true }
        if rc == SQLITE_DONE { return false }
        throw JournalError.sql(path: conn.path, message: conn.lastError)
    }

    func run() throws(JournalError) { _ = try step() }

    func int(_ c: Int32) -> Int64 { sqlite3_column_int64(stmt, c) }
    func uint(_ c: Int32) -> UInt64 { UInt64(bitPattern: sqlite3_column_int64(stmt, c)) }
    func isNull(_ c: Int32) -> Bool { sqlite3_column_type(stmt, c) == SQLITE_NULL }
    func text(_ c: Int32) -> String {
        guard let p = sqlite3_column_text(stmt, c) else { return "" }
        return String(cString: p)
    }
    func blob(_ c: Int32) -> [UInt8]? {
        guard sqlite3_column_type(stmt, c) != SQLITE_NULL else { return nil }
        let n = Int(sqlite3_column_bytes(stmt, c))
        guard n > 0, let p = sqlite3_column_blob(stmt, c) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}

public enum JournalError: Error, CustomStringConvertible, Sendable {
    case open(path: String, message: String)
    case sql(path: String, message: String)
    case corrupt(path: String, message: String)
    case foreign(path: String, found: VolumeIdentity, expected: VolumeIdentity)
    case locked(path: String)

    public var description: String { adminError.description }

    public var adminError: AdminError {
        switch self {
        case let .open(path, message):
            return AdminError(problem: "cannot open journal \(path): \(message)",
                              fix: "check that the journal's directory exists and is writable by root")
        case let .sql(path, message):
            return AdminError(problem: "journal \(path) failed: \(message)",
                              fix: "check free space on the journal's disk; if the file is damaged, stop the node and run `twinfs journal rebuild`")
        case let .corrupt(path, message):
            return AdminError(problem: "journal \(path) is damaged or not a TwinFS journal (\(message))",
                              fix: "stop the node and run `twinfs journal rebuild --config FILE`; the old journal is kept as a backup")
        case let .foreign(path, found, expected):
            return AdminError(problem: "journal \(path) belongs to \(found), not to \(expected)",
                              fix: "point 'journal' in the config at this node's own journal file")
        case let .locked(path):
            return AdminError(problem: "journal \(path) is in use by a running TwinFS node",
                              fix: "stop that node first (systemctl stop twinfs-node@NAME, or twinfs status to find it)")
        }
    }
}
