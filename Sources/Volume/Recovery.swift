import BrickStore
import Fixity
import Glibc
import Journal
import TwinCore

public struct RecoveryReport: Sendable {
    public var intentsReplayed = 0
    public var filesRehashed = 0
    public var rowsDropped = 0
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
        try submit([], wait: .durable)
        journal.resetIntentLog()
        return report
    }

    /// Re-reads one intent's name from the brick into the journal (id, attributes, hash).
    /// False when the name does not exist in the brick (or its parent is unknown yet).
    func relink(_ seq: Int64, parent: UInt64, name: String, report: inout RecoveryReport) throws(FSError) -> Bool {
        guard let pp = (try? journal.path(of: parent)) ?? nil else { return false }
        let r = Brick.join(pp, name)
        let st: stat
        do { st = try brick.lstat(r) } catch where error.errno == ENOENT { return false }
        let id: UInt64
        if let existing = brick.readID(rel: r) {
            id = existing
        } else {
            id = try ids.next()
            try brick.writeID(rel: r, id: id)
        }
        var ops: [JournalOp] = [.putAttributes(Self.record(st, id: id)), .link(parent: parent, name: name, id: id)]
        if let (hash, size) = try contentHash(rel: r, st: st) {
            ops.append(.setContent(id: id, size: size, hash: hash.bytes, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs))
            report.filesRehashed += 1
        }
        ops.append(.clearIntent(seq: seq))
        try submit(ops, wait: .written)
        report.intentsReplayed += 1
        return true
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
