import BrickStore
import CTwinShims
import Foundation
import Glibc
import Journal
import TwinCore

/// Why a recall's fetch failed, as the mount must answer it.
public enum TierFetchFailure: Error, Sendable, Equatable {
    /// The store did not answer (down, unreachable, timed out, 5xx): a retry later may work.
    case unavailable(String)
    /// The store answered but the bytes cannot be served (missing, changed, access denied).
    case failed(String)
}

/// Fetches a tiered file's verified bytes into a local file (the tier's `Recaller` behind it).
/// Called on a FUSE thread; blocks until the bytes are proven (size and XXH3-128 of `row`) or
/// fails leaving no file at `path`.
public protocol TierContentSource: Sendable {
    func fetch(_ row: TierRow, to path: String) throws(TierFetchFailure)
}

/// The volume's tier state: the store behind recalls, the clock retention is judged by, and the
/// lock that serialises recalls.
public final class TierGate: @unchecked Sendable {
    /// Guards the store hook. Leaf.
    let source = Locked<(any TierContentSource)?>(nil)
    /// Guards the retention clock (seconds since the epoch; tests move it). Leaf.
    let clock = Locked<@Sendable () -> Int64>({ Int64(Date().timeIntervalSince1970) })
    /// Guards `recalling`. Leaf: held only to test and change the set, never across a fetch.
    private let recallCond = NSCondition()
    /// Files being recalled or swapped for their stubs: a second open of one waits for the
    /// first instead of fetching it again; other files go in parallel (a 200-instance series).
    /// Outermost of the volume's locks for that file: before the content tracker and the journal.
    private var recalling: Set<UInt64> = []

    init() {}

    var now: Int64 { clock.with { $0 }() }

    /// Runs `body` while no other thread recalls file `id`.
    func exclusive<R>(_ id: UInt64, _ body: () throws(FSError) -> R) throws(FSError) -> R {
        recallCond.lock()
        while recalling.contains(id) { recallCond.wait() }
        recalling.insert(id)
        recallCond.unlock()
        defer {
            recallCond.lock()
            recalling.remove(id)
            recallCond.broadcast()
            recallCond.unlock()
        }
        return try body()
    }
}

/// The outcome of replacing a file by its stub.
public enum StubSwapOutcome: Sendable, Equatable {
    case swapped
    /// Open for writing on this node: the next pass tries again.
    case writerOpen
    /// Not the file that was uploaded any more (written, renamed, linked): it stays hot.
    case changed(String)
}

/// What the journal said of a file when its upload started; the stub goes in only if unchanged.
public struct TierExpectation: Sendable, Equatable {
    public var size: Int64
    public var hash: [UInt8]
    public var mtimeNs: Int64
    public init(size: Int64, hash: [UInt8], mtimeNs: Int64) {
        self.size = size; self.hash = hash; self.mtimeNs = mtimeNs
    }
}

extension LocalVolume {
    /// The xattr that marks a stub in the brick (the tier's `TierStub.xattrName`).
    public static let tierXattr = Brick.privateXattrPrefix + "tier"
    /// Largest stub (`TierStub.maximumBytes`): a bigger brick file is never one, so getattr
    /// asks the journal only for small files.
    public static let maximumStubBytes: Int64 = 4096

    /// Sets the store recalls fetch from (nil: tiered files cannot be read).
    public func setTierSource(_ source: (any TierContentSource)?) { tier.source.with { $0 = source } }

    /// Sets the clock retention is judged by (tests).
    public func setTierClock(_ clock: @escaping @Sendable () -> Int64) { tier.clock.with { $0 = clock } }

    func tierRow(_ id: UInt64) throws(FSError) -> TierRow? {
        do { return try journal.tierRow(id) } catch {
            log.error("journal read failed: \(error)")
            throw FSError.io
        }
    }

    // MARK: - Getattr of a tiered file

    /// A stub in the brick shows the file's real size, blocks and times (the journal's), so
    /// nothing above the volume sees the stub.
    func tierOverlay(_ st: inout stat, id: UInt64) {
        guard st.kind == .file, Int64(st.st_size) <= Self.maximumStubBytes,
              let row = try? journal.tierRow(id), row.residence == .tiered else { return }
        st.st_size = off_t(row.size)
        st.st_blocks = blkcnt_t((row.size + 511) / 512)
        if let rec = try? journal.inode(id) {
            st.st_mtim = timespec(tv_sec: Int(rec.mtimeNs / 1_000_000_000), tv_nsec: Int(rec.mtimeNs % 1_000_000_000))
            st.st_ctim = timespec(tv_sec: Int(rec.ctimeNs / 1_000_000_000), tv_nsec: Int(rec.ctimeNs % 1_000_000_000))
        }
    }

    // MARK: - Retention

    /// EPERM, with one line for the admin, when file `id` is under retention.
    func refuseIfRetained(_ id: UInt64, path: String, doing what: String) throws(FSError) {
        guard let row = try tierRow(id), row.isRetained(nowSeconds: tier.now) else { return }
        let until = row.retainUntil.map(Self.iso8601) ?? "?"
        log.warning("refused to \(what) \(path): it is under retention until \(until) (tier.retention_mode, object \(row.key)); it cannot be deleted or overwritten through the mount before that date")
        throw FSError.permission
    }

    /// The retention check for a name about to be removed or replaced (no entry: nothing to check).
    func refuseIfRetained(parent: NodeRef, name: String, doing what: String) throws(FSError) {
        guard journal.mayHaveTieredFiles else { return }
        let r = rel(parent, name)
        guard let id = brick.readID(rel: r) else { return }
        try refuseIfRetained(id, path: r, doing: what)
    }

    static func iso8601(_ seconds: Int64) -> String {
        var t = time_t(seconds)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        let n = strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &tm)
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Recall before use

    /// Before an open or a truncate: a tiered file's bytes come back first; one about to be
    /// written must not be under retention, and its object no longer holds its content.
    func ensureHot(_ node: NodeRef, forWriting: Bool) throws(FSError) {
        // A volume that never tiered a file pays nothing here (every open and truncate).
        guard journal.mayHaveTieredFiles else { return }
        // A read needs the journal only for what may be a stub: PACS reads of hot files pay
        // one lstat, not a journal query. A write asks always (a recalled file keeps its retention).
        if !forWriting, let st = try? brick.lstat(node.path), Int64(st.st_size) > Self.maximumStubBytes { return }
        guard let row = try tierRow(node.id) else { return }
        if forWriting { try refuseIfRetained(node.id, path: node.path, doing: "overwrite") }
        if row.residence == .tiered { try recall(node) }
        if forWriting { try submit([.untier(id: node.id)], wait: .written) }
    }

    /// Brings the bytes of tiered file `node` back into the brick in place of its stub.
    func recall(_ node: NodeRef) throws(FSError) {
        try tier.exclusive(node.id) { () throws(FSError) in
            // Another open may have recalled it while this one waited.
            guard let row = try tierRow(node.id), row.residence == .tiered else { return }
            let stub = try brick.openFile(node.path, flags: O_RDONLY | O_NONBLOCK)
            defer { close(stub) }
            guard hasTierXattr(stub) else {
                // The journal recorded the row but the stub never replaced the file (a crash
                // between the two): the brick holds the bytes.
                log.notice("\(node.path) is recorded as tiered but its brick file is not a stub: it is hot")
                try submit([.tierResidence(id: node.id, residence: .recalled)], wait: .durable)
                return
            }
            try fetchAndSwap(node, row: row, stub: stub)
        }
    }

    func isStub(_ fd: Int32, _ st: stat) -> Bool {
        st.kind == .file && Int64(st.st_size) <= Self.maximumStubBytes && hasTierXattr(fd)
    }

    /// A read-only open found a stub: a tier pass swapped it in after the open's check.
    /// Recalled once; a stub still there has no tier row to recall it by (changed behind TwinFS).
    func openAfterSwap(_ node: NodeRef, flags: Int32, mayRecall: Bool) throws(FSError) -> UInt64 {
        guard mayRecall else {
            log.error("cannot read \(node.path): its brick file is a tier stub the journal does not record as tiered; check it with `twinfs verify`")
            throw FSError.io
        }
        try recall(node)
        return try open(node, flags: flags, mayRecall: false)
    }

    func hasTierXattr(_ fd: Int32) -> Bool { twin_fgetxattr(fd, Self.tierXattr, nil, 0) >= 0 }

    private func fetchAndSwap(_ node: NodeRef, row: TierRow, stub: Int32) throws(FSError) {
        guard let source = tier.source.with({ $0 }) else {
            log.error("cannot read \(node.path): it is in the archive tier (object \(row.key)) and no object store is configured")
            throw FSError.io
        }
        let tmpDir = try stagingDirFD()
        defer { close(tmpDir) }
        let tmpName = Self.recallPrefix + "\(String(node.id, radix: 16))-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        do {
            try source.fetch(row, to: brick.absolute(Self.stagingDir + "/" + tmpName))
        } catch {
            throw recallError(node, row: row, error)
        }
        defer { unlinkat(tmpDir, tmpName, 0) }   // the stub, after the exchange
        let fd = try sys { openat(tmpDir, tmpName, O_RDWR | O_CLOEXEC) }
        defer { close(fd) }
        try dress(fd, like: stub, id: node.id)
        guard try exchange(tmpDir, tmpName, with: node.path, expecting: stub) else {
            log.warning("recall of \(node.path) abandoned: the name changed during the recall")
            throw FSError(EAGAIN)
        }
        try submit([.tierResidence(id: node.id, residence: .recalled)], wait: .durable)
        log.info("recalled \(node.path) from the archive tier (object \(row.key), \(row.size) bytes, verified)")
    }

    /// ETIMEDOUT for a store that did not answer: Samba answers it as NT_STATUS_IO_TIMEOUT and
    /// programs read it as "try later"; EAGAIN from open(2) on a regular file means "would
    /// block" to stdio and Java and invites a busy loop. Anything else is EIO.
    private func recallError(_ node: NodeRef, row: TierRow, _ error: TierFetchFailure) -> FSError {
        switch error {
        case .unavailable(let why):
            log.error("cannot read \(node.path) now: it is in the archive tier and \(why); the client was told ETIMEDOUT and may retry")
            return FSError(ETIMEDOUT)
        case .failed(let why):
            log.error("cannot read \(node.path): recall of object \(row.key) failed: \(why)")
            return FSError.io
        }
    }

    /// Gives `fd` the id, owner, mode, times and user xattrs of `like`, and makes it durable.
    func dress(_ fd: Int32, like: Int32, id: UInt64) throws(FSError) {
        var st = stat()
        _ = try sys { fstat(like, &st) }
        try brick.writeID(fd: fd, id: id)
        try copyXattrs(from: like, to: fd)
        _ = try sys { fchown(fd, st.st_uid, st.st_gid) }
        // fchown clears set-id bits: the mode goes after it.
        _ = try sys { fchmod(fd, st.st_mode & 0o7777) }
        var times = [st.st_atim, st.st_mtim]
        _ = try sys { futimens(fd, &times) }
        _ = try sys { Glibc.fsync(fd) }
    }

    static let stubPrefix = "stub-"
    static let recallPrefix = "recall-"
}
