import BrickStore
import Fixity
import Glibc
import Journal
import TwinCore

public struct RecoveryReport: Sendable {
    public var intentsReplayed = 0
    public var filesRehashed = 0
    public var rowsDropped = 0
    /// Seal markers read (content commits made durable by their file's fsync only).
    public var sealsChecked = 0
    /// Of those, rows the journal had lost or held stale, re-derived from the brick.
    public var sealsRederived = 0
}

extension LocalVolume {
    /// Brings the journal back in line with the brick after a crash, before anything is served:
    /// every name an unfinished namespace change touched is re-read from the brick, and every
    /// file marked dirty is re-hashed from what is on disk.
    public func recover() throws(FSError) -> RecoveryReport {
        var report = RecoveryReport()
        removeStaleStaging()
        let intents: [(seq: Int64, parent: UInt64, name: String)]
        do { intents = try journal.pendingIntents() } catch { throw FSError.io }
        // Pass 1 links every name that exists in the brick, in intent order; pass 2 retries
        // the rest (a parent renamed by a later intent resolves only now) and unlinks what is
        // really gone. Links before unlinks: a renamed entry never looks nameless in between,
        // which would drop its row and hash.
        var missing: [(seq: Int64, parent: UInt64, name: String)] = []
        for i in intents where try !relink(i.seq, parent: i.parent, name: i.name, report: &report) {
            missing.append(i)
        }
        for i in missing where try !relink(i.seq, parent: i.parent, name: i.name, report: &report) {
            try submit([.unlink(parent: i.parent, name: i.name), .clearIntent(seq: i.seq)], wait: .written)
            report.intentsReplayed += 1
        }

        let dirty: [UInt64]
        do { dirty = try journal.dirtyInodes() } catch { throw FSError.io }
        for id in dirty {
            guard let r = (try? journal.path(of: id)) ?? nil else {
                try submit([.deleteInodeIfNameless(id: id)], wait: .written)
                report.rowsDropped += 1
                continue
            }
            let st: stat
            do { st = try brick.lstat(r) } catch where error.errno != ENOENT { throw error } catch {
                // The journal names a file the brick does not have: drop that name (and the
                // row with its last name), as the brick is the truth.
                let parts = r.split(separator: "/").map(String.init)
                let parentPath = parts.dropLast().joined(separator: "/")
                let parentID = (try? journal.id(atPath: parentPath)) ?? nil
                if let pid = parentID, let name = parts.last {
                    try submit([.unlink(parent: pid, name: name), .deleteInodeIfNameless(id: id)], wait: .written)
                }
                report.rowsDropped += 1
                continue
            }
            if let (hash, size) = try contentHash(rel: r, st: st) {
                try submit([.putAttributes(Self.record(st, id: id)),
                            .setContent(id: id, size: size, hash: hash.bytes, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs)],
                           wait: .written)
                report.filesRehashed += 1
            }
        }
        let markers = seals.markers.list()
        for m in markers {
            try rederiveSealed(id: m.id, path: m.target, report: &report)
        }
        try submit([], wait: .durable)
        seals.markers.remove(markers.map { $0.name })
        journal.resetIntentLog()
        return report
    }

    /// A content commit whose row may have been lost with the WAL's tail (power loss): the
    /// file's bytes and seal were durable when close returned. Links the path's entries the
    /// journal lacks (from the brick's ids), then records the file's size and hash when the
    /// journal's row is missing, dirty or differs. The hash is taken from the disk, never from
    /// the seal alone: a seal that does not match the bytes (a later write cut short) is a
    /// dirty file, recorded as it is on disk, as step 2 does.
    func rederiveSealed(id: UInt64, path: String, report: inout RecoveryReport) throws(FSError) {
        report.sealsChecked += 1
        // Renamed or removed since the commit: the marker says nothing about that name.
        guard brick.readID(rel: path) == id, let linked = try linkPath(path) else { return }
        if linked > 0 { report.sealsRederived += 1 }
        let st = try brick.lstat(path)
        guard st.kind == .file else { return }
        let fd = try brick.openFile(path, flags: O_RDONLY)
        defer { close(fd) }
        let seal = brick.readSeal(fd: fd)
        let row: InodeRecord?
        do { row = try journal.inode(id) } catch { throw FSError.io }
        if let r = row, !r.dirty, let sl = seal, r.size == sl.size, r.hash == sl.hash, Int64(st.st_size) == sl.size {
            return
        }
        if linked == 0 { report.sealsRederived += 1 }
        _ = try sys { Glibc.fsync(fd) }
        let (digest, size) = try XXH128Hasher.hash(fd: fd)
        var ops: [JournalOp] = [.putAttributes(Self.record(st, id: id)),
                                .setContent(id: id, size: size, hash: digest.bytes, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs)]
        if seal == ContentSeal(size: size, hash: digest.bytes) {
            // The verified commit of a peer's copy too: no longer an incomplete replica.
            ops.append(.replicaCommitted(id: id))
        } else {
            log.warning("recovery: \(path.debugDescription) (id \(id)) differs from its last sealed commit; recorded as it is on disk")
        }
        try submit(ops, wait: .written)
    }

    /// Makes every entry of `path` known to the journal under its brick name, from the root
    /// down (the rows a power loss took with the WAL's tail). The number of entries linked, nil
    /// if a component is gone.
    func linkPath(_ path: String) throws(FSError) -> Int? {
        var linked = 0
        var parentID: UInt64 = 1
        var prefix = ""
        for part in path.split(separator: "/").map(String.init) {
            prefix = Brick.join(prefix, part)
            let known = (try? journal.id(atPath: prefix)) ?? nil
            if let k = known {
                parentID = k
                continue
            }
            guard let ops = try linkFromBrick(parent: parentID, name: part, rel: prefix) else { return nil }
            try submit(ops.ops, wait: .written)
            parentID = ops.id
            linked += 1
        }
        return linked
    }

    /// Re-reads one intent's name from the brick into the journal (id, attributes, hash).
    /// False when the name does not exist in the brick (or its parent is unknown yet).
    func relink(_ seq: Int64, parent: UInt64, name: String, report: inout RecoveryReport) throws(FSError) -> Bool {
        guard let pp = (try? journal.path(of: parent)) ?? nil else { return false }
        guard var found = try linkFromBrick(parent: parent, name: name, rel: Brick.join(pp, name)) else { return false }
        if found.hashed { report.filesRehashed += 1 }
        found.ops.append(.clearIntent(seq: seq))
        try submit(found.ops, wait: .written)
        report.intentsReplayed += 1
        return true
    }

    /// The journal ops that record brick entry `rel` (named `name` in directory `parent`):
    /// its id (assigned if it has none), attributes, link and hash. nil if it does not exist.
    func linkFromBrick(parent: UInt64, name: String, rel r: String) throws(FSError) -> (id: UInt64, ops: [JournalOp], hashed: Bool)? {
        let st: stat
        do { st = try brick.lstat(r) } catch where error.errno == ENOENT { return nil }
        let id: UInt64
        if let existing = brick.readID(rel: r) {
            id = existing
        } else {
            id = try ids.next()
            try brick.writeID(rel: r, id: id)
        }
        var ops: [JournalOp] = [.putAttributes(Self.record(st, id: id)), .link(parent: parent, name: name, id: id)]
        var hashed = false
        if let (hash, size) = try contentHash(rel: r, st: st) {
            ops.append(.setContent(id: id, size: size, hash: hash.bytes, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs))
            hashed = true
        }
        return (id, ops, hashed)
    }

    /// XXH3-128 of a file's bytes or a symlink's target; nil for directories.
    func contentHash(rel: String, st: stat) throws(FSError) -> (XXH128Digest, Int64)? {
        switch st.kind {
        case .file:
            let fd = try brick.openFile(rel, flags: O_RDONLY)
            defer { close(fd) }
            // What a crashed process left may sit in the page cache only: make it durable
            // before recording its hash as the truth.
            _ = try sys { Glibc.fsync(fd) }
            return try XXH128Hasher.hash(fd: fd)
        case .symlink:
            let target = try readlink(NodeRef(id: 0, path: rel))
            return (XXH128Hasher.hash(Array(target.utf8)), Int64(st.st_size))
        default:
            return nil
        }
    }
}
