import Foundation
import Glibc
import TwinCore

/// The journal's intent log: an append-only file beside the SQLite journal
/// (`<journal>.intents`). Before a namespace change touches the brick, the names it will touch
/// are appended here with one write(2): no SQLite transaction on the request path. The result
/// of the change is group-committed to SQLite later; once every intent in the file has its
/// result committed, the file is emptied. Recovery replays whatever is left.
///
/// Like an intent committed to the WAL without fsync, a record survives a crash of the process
/// (it is in the page cache), not of the machine.
final class IntentLog: @unchecked Sendable {
    struct Record: Equatable {
        var seq: Int64
        var parent: UInt64
        var name: String
    }

    static let magic: UInt8 = 0xA5
    static let version: UInt8 = 1
    /// Rewrite the file with only the outstanding records once it grows past this.
    static let compactAt = 1 << 20

    let path: String
    private var fd: Int32
    /// Guards the file descriptor, `nextSeq` and `outstanding`. Leaf (held across one append).
    private let lock = NSLock()
    private var nextSeq: Int64
    /// Records written whose results are not committed yet, by sequence number.
    private var outstanding: [Int64: [UInt8]] = [:]
    private var size = 0

    /// Opens (creating) the log. `recovered` are the records a crash left, for recovery.
    init(path: String, firstSeq: Int64) throws(JournalError) {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError.open(path: path, message: String(cString: strerror(errno))) }
        var st = stat()
        fstat(fd, &st)
        size = Int(st.st_size)
        nextSeq = firstSeq
        for r in Self.parse(Self.readAll(fd)) { nextSeq = max(nextSeq, r.seq + 1) }
    }

    deinit { close(fd) }

    /// Records left by a crash (empty after a clean stop).
    func leftovers() -> [Record] {
        lock.lock()
        defer { lock.unlock() }
        return Self.parse(Self.readAll(fd))
    }

    /// Appends an intent for (parent, name) and returns its sequence number. Returns only once
    /// the record is in the file.
    func record(parent: UInt64, name: String) throws(JournalError) -> Int64 {
        lock.lock()
        defer { lock.unlock() }
        let seq = nextSeq
        nextSeq += 1
        let bytes = Self.encode(Record(seq: seq, parent: parent, name: name))
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else {
            throw JournalError.sql(path: path, message: "cannot append to the intent log: \(String(cString: strerror(errno)))")
        }
        size += n
        outstanding[seq] = bytes
        return seq
    }

    /// The results of these intents are committed: forget them, and empty (or compact) the
    /// file when possible.
    func committed(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        lock.lock()
        defer { lock.unlock() }
        for s in seqs { outstanding[s] = nil }
        if outstanding.isEmpty {
            if size > 0, ftruncate(fd, 0) == 0 { size = 0 }
        } else if size > Self.compactAt {
            compact()
        }
    }

    /// Empties the log after recovery has replayed it (and its results are durable).
    func reset() {
        lock.lock()
        defer { lock.unlock() }
        outstanding.removeAll()
        if ftruncate(fd, 0) == 0 { size = 0 }
    }

    /// Writes the outstanding records to a new file and swaps it in (caller holds the lock).
    private func compact() {
        let tmp = path + ".compact"
        let nfd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard nfd >= 0 else { return }
        var total = 0
        for (_, bytes) in outstanding.sorted(by: { $0.key < $1.key }) {
            total += bytes.withUnsafeBytes { write(nfd, $0.baseAddress, $0.count) }
        }
        guard rename(tmp, path) == 0 else { close(nfd); unlink(tmp); return }
        close(fd)
        fd = nfd
        size = total
    }

    // MARK: - Format: A5 | version | seq u64 | parent u64 | length u16 | name bytes (little endian)

    static func encode(_ r: Record) -> [UInt8] {
        var out: [UInt8] = [magic, version]
        withUnsafeBytes(of: r.seq.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: r.parent.littleEndian) { out.append(contentsOf: $0) }
        let name = Array(r.name.utf8.prefix(Int(UInt16.max)))
        withUnsafeBytes(of: UInt16(name.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: name)
        return out
    }

    /// Parses records up to the first torn or foreign byte.
    static func parse(_ b: [UInt8]) -> [Record] {
        var out: [Record] = []
        var i = 0
        func u64(_ at: Int) -> UInt64 { b[at..<at + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        while i + 20 <= b.count, b[i] == magic, b[i + 1] == version {
            let len = Int(b[i + 18]) | Int(b[i + 19]) << 8
            guard i + 20 + len <= b.count else { break }
            out.append(Record(seq: Int64(bitPattern: u64(i + 2)), parent: u64(i + 10),
                              name: String(decoding: b[i + 20..<i + 20 + len], as: UTF8.self)))
            i += 20 + len
        }
        return out
    }

    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        var off: off_t = 0
        while true {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
            off += off_t(n)
        }
        return out
    }
}
