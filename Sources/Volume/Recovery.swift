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
        let intents: [(seq: Int64, parent: UInt64, name: String)]
        do { intents = try journal.pendingIntents() } catch { throw FSError.io }
        // Names that exist are linked first, vanished ones unlinked after, so that a renamed
        // entry never looks nameless in between (which would drop its row and hash).
        var present: [(Int64, UInt64, String)] = []
        var gone: [(Int64, UInt64, String)] = []
        for i in intents {
            let parentPath = (try? journal.path(of: i.parent)) ?? nil
            if let pp = parentPath, (try? brick.lstat(Brick.join(pp, i.name))) != nil {
                present.append((i.seq, i.parent, i.name))
            } else {
                gone.append((i.seq, i.parent, i.name))
            }
        }
        for (seq, parent, name) in present {
            guard let pp = (try? journal.path(of: parent)) ?? nil else { continue }
            let r = Brick.join(pp, name)
            let st = try brick.lstat(r)
            var ops: [JournalOp] = []
            let id: UInt64
            if let existing = brick.readID(rel: r) {
                id = existing
            } else {
                id = try ids.next()
                try brick.writeID(rel: r, id: id)
            }
            ops.append(.putAttributes(Self.record(st, id: id)))
            ops.append(.link(parent: parent, name: name, id: id))
            if let (hash, size) = try contentHash(rel: r, st: st) {
                ops.append(.setContent(id: id, size: size, hash: hash.bytes, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs))
                report.filesRehashed += 1
            }
            ops.append(.clearIntent(seq: seq))
            try submit(ops, wait: .written)
            report.intentsReplayed += 1
        }
        for (seq, parent, name) in gone {
            // Re-checked now that the links are in: a parent renamed by an earlier intent
            // resolves to its new path.
            if let pp = (try? journal.path(of: parent)) ?? nil {
                do {
                    let r = Brick.join(pp, name)
                    let st = try brick.lstat(r)
                    var id = brick.readID(rel: r) ?? 0
                    if id == 0 {
                        id = try ids.next()
                        try brick.writeID(rel: r, id: id)
                    }
                    try submit([.putAttributes(Self.record(st, id: id)), .link(parent: parent, name: name, id: id),
                                .clearIntent(seq: seq)], wait: .written)
                    report.intentsReplayed += 1
                    continue
                } catch where error.errno != ENOENT {
                    throw error
                } catch {}
            }
            try submit([.unlink(parent: parent, name: name), .clearIntent(seq: seq)], wait: .written)
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
                let parentID = parentPath.isEmpty ? StableID.root : try lookupID(parentPath)
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

    /// The journal id of a brick-relative path, walking names from the root.
    func lookupID(_ rel: String) throws(FSError) -> UInt64? {
        var id = StableID.root
        for comp in rel.split(separator: "/") {
            guard let next = (try? journal.lookup(parent: id, name: String(comp))) ?? nil else { return nil }
            id = next
        }
        return id
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
