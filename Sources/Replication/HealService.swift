import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import NIOCore
import PeerProtocol
import TwinCore
import Volume

/// The serving side of healing: what this node answers when its peer heals from it (lists,
/// file states, whole-file sends verified before they leave) and split-brain resolution.
extension ReplicatedVolume {
    func serveHeal(_ m: PeerMessage, requestID: UInt64) -> PeerMessage {
        func reply(_ errno: Int32, _ payload: ByteBuffer? = nil) -> PeerMessage {
            .reply(requestID: requestID, errno: errno, payload: payload)
        }
        switch m {
        case let .listDir(dirID, after, limit):
            do {
                guard let listing = try listDirectory(dirID, after: after, limit: Int(limit)) else { return reply(ENOENT) }
                return reply(0, listing.encode())
            } catch {
                return reply(EIO)
            }
        case let .healFile(id, expected):
            // Files go after the owed namespace changes, as catch-up and pulls send them: a
            // send names the file by its path here, which the peer may not have yet (seed 382:
            // a rename onto another file's name, not replayed yet, made the send meet that
            // file there, a split brain of a file only this node changed). Asked again later.
            guard ((try? journal.peerBacklog().ops) ?? 1) == 0 else { return reply(EBUSY) }
            // 16 zero bytes on the wire: "to your journal's hash".
            return reply(sendForHeal(id, verify: expected.allSatisfy { $0 == 0 } ? .journalHash : .hash(expected)))
        case let .fileState(id, rehash):
            return reply(0, fileState(id, rehash: rehash).encode())
        case let .volumeInfo(ordinal):
            guard let counter = try? journal.highestCounter(ordinal: ordinal), let stats = try? journal.stats(),
                  let root = try? local.brick.lstat("") else { return reply(EIO) }
            return reply(0, VolumeInfo(highestCounter: counter, files: stats.files, bytes: stats.bytes,
                                       rootMode: UInt32(root.st_mode & 0o7777), rootUid: root.st_uid, rootGid: root.st_gid).encode())
        case let .healInfo(summary):
            let json = healHooks?.infoJSON(summary: summary) ?? Array("{}".utf8)
            return reply(0, ByteBuffer(bytes: json))
        case let .resolveSplit(id, role):
            if role == 1 {
                do { try loseSplit(id, reason: "split brain resolved in favour of the peer's copy") } catch { return reply(error.errno) }
                return reply(0)
            }
            winSplit(id)
            return reply(sendForHeal(id, verify: .journalHash))
        default:
            return reply(EINVAL)
        }
    }

    /// One page of directory `dirID` as this journal has it (nil: not a directory here).
    func listDirectory(_ dirID: UInt64, after: String, limit: Int) throws(JournalError) -> DirListing? {
        try journal.submit([], wait: .written)
        guard let dir = try journal.inode(dirID), dir.kind == .directory else { return nil }
        let rows = try journal.listing(of: dirID, after: after, limit: limit + 1)
        let dirPath = dirID == StableID.root ? "" : (try journal.path(of: dirID) ?? "")
        var out: [ListedEntry] = []
        for (name, r) in rows.prefix(limit) {
            let kind: ListedEntry.Kind
            var target = ""
            var rdev: UInt64 = 0
            switch r.kind {
            case .file: kind = .file
            case .directory: kind = .directory
            case .symlink:
                kind = .symlink
                target = (try? local.readlink(NodeRef(id: r.id, path: Brick.join(dirPath, name)))) ?? ""
                if target.isEmpty { continue }
            case .other:
                kind = .special
                guard let st = try? local.brick.lstat(Brick.join(dirPath, name)), SpecialFile(mode: UInt32(st.st_mode)) != nil else { continue }
                rdev = UInt64(st.st_rdev)
            }
            let busy = r.dirty || isOwed(r.id) || isSplit(r.id) || (try? journal.healPendingRow(r.id)) != nil
            out.append(ListedEntry(name: name, id: r.id, kind: kind, mode: r.mode, uid: r.uid, gid: r.gid,
                                   size: r.kind == .directory ? 0 : r.size, mtimeNs: r.mtimeNs, hash: r.hash ?? [],
                                   target: target, busy: busy, rdev: rdev))
        }
        return DirListing(entries: out, more: rows.count > limit)
    }

    /// How file `id` is here; with `rehash` its bytes are read and hashed now.
    public func fileState(_ id: UInt64, rehash: Bool) -> FileStateReport {
        try? journal.submit([], wait: .written)
        guard let rec = try? journal.inode(id), let path = try? journal.path(of: id) else { return FileStateReport(exists: false) }
        var r = FileStateReport(exists: true, size: rec.size, mtimeNs: rec.mtimeNs, journalHash: rec.dirty ? [] : (rec.hash ?? []),
                                busy: rec.dirty || isOwed(id) || (try? journal.healPendingRow(id)) != nil, splitBrain: isSplit(id))
        if rehash, rec.kind == .file, let fd = try? local.brick.openFile(path, flags: O_RDONLY) {
            defer { close(fd) }
            if let (d, n) = try? XXH128Hasher.hash(fd: fd) {
                r.bytesHash = d.bytes
                r.size = n
            }
        }
        return r
    }

    /// Sends file `id` whole to the peer for a heal, its bytes checked (`verify`) before
    /// anything leaves. Answers an errno for the asking peer.
    func sendForHeal(_ id: UInt64, verify: SourceCheck) -> Int32 {
        // In split brain, or in this node's copy of a directory that is: it stays in that copy,
        // as catch-up leaves it (the peer's directory of that name is another one, where a
        // send by this node's path would meet other entries, or no directory at all).
        if isSplit(id) || underSplitDirectory(id) { return splitBrainErrno }
        // Only part of the file the peer was sending reached this node: no copy to give.
        // (A file this node changed while apart or owes is its own copy, whatever marks it.)
        if (try? journal.healPendingRow(id))??.kind == .incompleteReplica, !isOwed(id), !changedWhileApart(id) { return ENODATA }
        let gen = (try? journal.peerFile(id))??.generation
        switch pushFile(id, verify: verify) {
        case .ok:
            if let g = gen { settledChecked(id, generation: g) }
            return 0
        case .gone: return ENOENT
        case .unreachable: return EHOSTUNREACH
        case .splitBrain: return splitBrainErrno
        case .failed(let why):
            log.notice("heal send of file id \(id) postponed: \(why)")
            return EBUSY
        case .badSource(let why):
            log.critical("NOT sending a bad copy for heal: \(why); this node's copy needs repair too")
            return EIO
        }
    }

    /// Split-brain resolution, losing side: this node's copy goes to quarantine (kept, listed,
    /// restorable), the entry stops being split, and the peer's copy may now replace it.
    public func loseSplit(_ id: UInt64, reason: String) throws(FSError) {
        do { try journal.submit([], wait: .written) } catch { throw FSError.io }
        guard let path = try? journal.path(of: id), !path.isEmpty else { throw FSError.notFound }
        let q: (stored: String, size: Int64, hash: [UInt8])
        do { q = try local.brick.quarantineCopy(rel: path, id: id, tag: "split-brain") } catch {
            if error.errno == ENOSPC {
                log.error("split brain on \(path.debugDescription) NOT resolved: \(local.brick.quarantineRoomProblem(bytes: (try? local.brick.lstat(path)).map { Int64($0.st_size) } ?? 0) ?? "no space for the quarantine copy"); this copy stays as it is; fix: free space on the brick (or remove quarantine copies already looked at), then resolve again")
            }
            throw error
        }
        let row = QuarantineRow(id: id, path: path, stored: q.stored, size: q.size, hash: q.hash, reason: reason,
                                created: ISO8601DateFormatter().string(from: Date()))
        do {
            try journal.submit([.quarantined(row), .clearSplitBrain(key: "id:\(id)"), .dropPeerFile(id: id, generation: .max)],
                               wait: .durable)
        } catch {
            throw FSError.io
        }
        log.notice("split brain on \(path.debugDescription) (id \(id)): this node's copy kept in quarantine at \(q.stored); taking the peer's")
        state.with { s in
            s.split.remove(id)
            s.owed.remove(id)
            s.changedApart.remove(id)
        }
    }

    /// Split-brain resolution, winning side: the entry stops being split; the caller sends it.
    public func winSplit(_ id: UInt64) {
        try? journal.submit([.clearSplitBrain(key: "id:\(id)")], wait: .durable)
        state.with { s in
            s.split.remove(id)
            s.changedApart.remove(id)
        }
        log.notice("split brain on file id \(id) resolved in favour of this node's copy; sending it to the peer")
    }
}
