import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import PeerProtocol
import Replication
import TwinCore
import Volume

/// Why a directory could not be compared.
public enum HealError: Error, CustomStringConvertible {
    case peer(String)
    case local(String)

    public var description: String {
        switch self {
        case .peer(let s): return "the peer: \(s)"
        case .local(let s): return "this node: \(s)"
        }
    }
}

/// What the walk decides for one file both nodes have under the same id.
public enum FileVerdict: Equatable, Sendable {
    case same
    /// Not comparable now (being written, owed, awaited or split): replication settles it.
    case skip
    case pull
    case push
    /// Both copies match their own journals but differ: both kept, an admin decides.
    case splitBrain
    /// Neither copy matches its journal: reported, nothing overwritten.
    case badOnBoth

    /// The decision from both journals' records and, when they differ, both re-hashes.
    public static func decide(localHash: [UInt8]?, localSize: Int64, localBusy: Bool,
                              peerHash: [UInt8], peerSize: Int64, peerBusy: Bool,
                              localBytes: [UInt8]?, peerState: FileStateReport?) -> FileVerdict {
        if localBusy || peerBusy { return .skip }
        if let h = localHash, h == peerHash, localSize == peerSize { return .same }
        guard let ps = peerState, let lb = localBytes else { return .skip }
        if ps.busy || ps.splitBrain { return .skip }
        let localGood = localHash != nil && lb == localHash!
        let peerGood = !ps.journalHash.isEmpty && ps.bytesHash == ps.journalHash
        switch (localGood, peerGood) {
        case (false, true): return .pull
        case (true, false): return .push
        case (true, true): return lb == ps.bytesHash ? .same : .splitBrain
        case (false, false): return .badOnBoth
        }
    }
}

extension Healer {
    /// The peer's entries of directory `dirID`, every page.
    func peerListing(_ dirID: UInt64) throws(HealError) -> [ListedEntry] {
        var out: [ListedEntry] = []
        var after = ""
        while true {
            switch v.channel.call(.listDir(dirID: dirID, after: after, limit: 1024)) {
            case .ok(let payload?):
                let page: DirListing
                do { page = try DirListing.decode(payload) } catch { throw .peer("malformed listing: \(error)") }
                out += page.entries
                guard page.more, let last = page.entries.last else { return out }
                after = last.name
            case .ok(nil): throw .peer("empty answer to a listing")
            case .refused(ENOENT): return []
            case .refused(let e): throw .peer("listing refused (errno \(e))")
            case .unreachable(let why): throw .peer("unreachable (\(why))")
            }
        }
    }

    func localListing(_ dirID: UInt64) throws(HealError) -> [String: InodeRecord] {
        var out: [String: InodeRecord] = [:]
        var after = ""
        do {
            try journal.submit([], wait: .written)
            while true {
                let rows = try journal.listing(of: dirID, after: after, limit: 4096)
                for (n, r) in rows { out[n] = r }
                guard rows.count == 4096, let last = rows.last else { return out }
                after = last.name
            }
        } catch {
            throw .local("journal: \(error)")
        }
    }

    /// Compares directory `dirID` (at `path`) on both nodes and repairs what differs; never
    /// deletes. Returns the subdirectories to walk next. `full`: also send this node's
    /// entries the peer lacks and re-hash files whose records differ (a rebuild only takes).
    func healDirectory(_ dirID: UInt64, path: String, full: Bool) throws(HealError) -> [(UInt64, String)] {
        let theirs = try peerListing(dirID)
        let ours = try localListing(dirID)
        var subdirs: [(UInt64, String)] = []
        var seen: Set<String> = []
        // Every file this directory will await, recorded in one durable commit (not one per
        // file: a first listing of a big directory must not outlast the peer's timeout).
        let newFiles = theirs.filter { $0.kind == .file && ours[$0.name] == nil }
        if !newFiles.isEmpty {
            do {
                try journal.submit(newFiles.map { .healPending(id: $0.id, size: $0.size, hash: $0.hash.isEmpty ? emptyHash : $0.hash) },
                                   wait: .durable)
            } catch {
                throw .local("cannot record awaited files: \(error)")
            }
        }
        for p in theirs {
            if isStopped { break }
            seen.insert(p.name)
            let rel = Brick.join(path, p.name)
            cond.lock()
            crawl.entries += 1
            cond.unlock()
            if let l = ours[p.name] {
                guard l.id == p.id else {
                    if p.kind == .file, v.yieldName(parent: path, name: p.name, id: l.id) {
                        // Awaited durably before its placeholder, as every file this walk creates
                        // (a crash before that leaves the name free for the next walk).
                        try? journal.submit([.healPending(id: p.id, size: p.size, hash: p.hash.isEmpty ? emptyHash : p.hash)], wait: .durable)
                        if let dir = createLocally(p, parent: path, rel: rel, full: full) { subdirs.append(dir) }
                        continue
                    }
                    v.recordSplitBrain(.name, path: rel, reason: "the two nodes hold different entries under this name (ids \(l.id) and \(p.id))")
                    continue
                }
                switch (l.kind, p.kind) {
                case (.directory, .directory):
                    subdirs.append((p.id, rel))
                case (.file, .file):
                    compareFile(l, p, rel: rel, full: full)
                case (.symlink, .symlink):
                    if let t = try? v.local.readlink(NodeRef(id: l.id, path: rel)), t != p.target {
                        v.recordSplitBrain(.entry(l.id), path: rel, reason: "the symlink points at \(t.debugDescription) here and at \(p.target.debugDescription) on the peer")
                    }
                case (.other, .special):
                    if let h = l.hash, !p.hash.isEmpty, h != p.hash {
                        v.recordSplitBrain(.entry(l.id), path: rel, reason: "a special file of another type or device number on each node")
                    }
                default:
                    v.recordSplitBrain(.entry(l.id), path: rel, reason: "a \(l.kind) here and a \(p.kind) on the peer under the same id")
                }
            } else {
                if let dir = createLocally(p, parent: path, rel: rel, full: full) { subdirs.append(dir) }
            }
        }
        if full {
            for (name, l) in ours where !seen.contains(name) {
                if isStopped { break }
                let rel = Brick.join(path, name)
                if let dir = sendToPeer(l, parent: path, name: name, rel: rel) { subdirs.append(dir) }
            }
        }
        return subdirs
    }

    private func compareFile(_ l: InodeRecord, _ p: ListedEntry, rel: String, full: Bool) {
        cond.lock()
        let isAwaited = awaited[l.id] != nil
        cond.unlock()
        if isAwaited { return }
        let localBusy = l.dirty || v.isOwed(l.id) || v.isSplit(l.id)
        var verdict = FileVerdict.decide(localHash: l.hash, localSize: l.size, localBusy: localBusy, peerHash: p.hash,
                                         peerSize: p.size, peerBusy: p.busy, localBytes: nil, peerState: nil)
        if verdict == .skip && !localBusy && !p.busy {
            // The records differ: only the bytes can tell which copy is good.
            var localBytes: [UInt8]?
            if let fd = try? brick.openFile(rel, flags: O_RDONLY) {
                localBytes = (try? XXH128Hasher.hash(fd: fd))?.0.bytes
                close(fd)
            }
            var ps: FileStateReport?
            if case .ok(let payload?) = v.channel.call(.fileState(stableID: p.id, rehash: true), timeout: .seconds(600)) {
                ps = try? FileStateReport.decode(payload)
            }
            verdict = FileVerdict.decide(localHash: l.hash, localSize: l.size, localBusy: false, peerHash: p.hash,
                                         peerSize: p.size, peerBusy: false, localBytes: localBytes, peerState: ps)
            if verdict == .pull, let ps { return markAwaited(l.id, rel: rel, size: ps.size, hash: ps.journalHash) }
        }
        switch verdict {
        case .same, .skip, .pull:
            return
        case .push:
            log.warning("heal: the peer's copy of \(rel.debugDescription) does not match its journal; sending this node's good copy")
            let r = v.pushFile(l.id, verify: .journalHash)
            if r == .ok { recordRate(bytes: l.size, files: 1); bumpHealed(l.size) } else { noteProblem("sending \(rel): \(r)") }
        case .splitBrain:
            v.recordSplitBrain(.entry(l.id), path: rel, reason: "the two nodes hold different content and each matches its own journal")
        case .badOnBoth:
            noteProblem("\(rel) (id \(l.id)): neither node's copy matches its recorded XXH3-128; left as it is")
            try? journal.submit([.scrubFinding(ScrubFinding(id: l.id, path: rel, state: .badOnBothNodes,
                                                            detail: "found by heal full", found: Self.now()))], wait: .written)
        }
    }

    func bumpHealed(_ bytes: Int64) {
        cond.lock()
        crawl.filesHealed += 1
        crawl.bytesHealed += bytes
        cond.unlock()
    }

    /// This file's bytes must come from the peer: durable in the journal and on the brick
    /// (an xattr) before anything is received.
    func markAwaited(_ id: UInt64, rel: String, size: Int64, hash: [UInt8]) {
        do {
            try journal.submit([.healPending(id: id, size: size, hash: hash)], wait: .durable)
        } catch {
            noteProblem("cannot record \(rel) as awaited: \(error)")
            return
        }
        // A file missing from the brick has nothing to mark; the peer's send creates it.
        try? brick.markPending(rel: rel, size: size, hash: hash)
        expect(id, size: size, hash: hash)
    }

    /// An entry the peer has and this node lacks: created here (a file as an empty placeholder
    /// awaiting its content). Returns it if it is a directory to walk.
    private func createLocally(_ p: ListedEntry, parent: String, rel: String, full: Bool) -> (UInt64, String)? {
        var release: () -> Void = {}
        if full {
            // Outside a rebuild a local change may be racing: decide under the name's lock.
            release = v.withNameLock(parentID: brick.readID(rel: parent) ?? 0, name: p.name)
            if brick.readID(rel: rel) != nil { release(); return nil }
            guard case .ok(let payload?) = v.channel.call(.fileState(stableID: p.id, rehash: false)),
                  let s = try? FileStateReport.decode(payload), s.exists else { release(); return nil }
        }
        defer { release() }
        let r: PeerMessage
        switch p.kind {
        case .directory:
            r = service.applyHealed(.mkdir(parentPath: parent, name: p.name, mode: p.mode, uid: p.uid, gid: p.gid, stableID: p.id))
        case .symlink:
            r = service.applyHealed(.symlink(parentPath: parent, name: p.name, target: p.target, uid: p.uid, gid: p.gid, stableID: p.id))
        case .special:
            r = service.applyHealed(.mknod(parentPath: parent, name: p.name, mode: p.mode, rdev: p.rdev, uid: p.uid, gid: p.gid, stableID: p.id))
        case .file:
            // Awaited first (the journal row, written for the whole directory by the caller),
            // then the placeholder: a crash in between leaves a row whose file the send creates.
            let want = (size: p.size, hash: p.hash.isEmpty ? emptyHash : p.hash)
            r = service.applyHealed(.create(parentPath: parent, name: p.name, mode: p.mode, uid: p.uid, gid: p.gid, stableID: p.id))
            if case .reply(_, 0, _) = r {
                _ = service.applyHealed(.commit(path: rel, stableID: p.id, size: 0, xxh128: emptyHash, mtimeNs: p.mtimeNs))
                try? brick.markPending(rel: rel, size: want.size, hash: want.hash)
                expect(p.id, size: want.size, hash: want.hash)
            } else {
                try? journal.submit([.healReceived(id: p.id)], wait: .written)
            }
        }
        guard case .reply(_, let e, _) = r, e == 0 else {
            if case .reply(_, let e, _) = r { noteProblem("creating \(rel) here: errno \(e)") }
            return nil
        }
        return p.kind == .directory ? (p.id, rel) : nil
    }

    /// An entry this node has and the peer lacks (full heal only): sent to the peer.
    private func sendToPeer(_ l: InodeRecord, parent: String, name: String, rel: String) -> (UInt64, String)? {
        let release = v.withNameLock(parentID: brick.readID(rel: parent) ?? 0, name: name)
        defer { release() }
        guard brick.readID(rel: rel) == l.id else { return nil }
        if case .ok(let payload?) = v.channel.call(.fileState(stableID: l.id, rehash: false)),
           let s = try? FileStateReport.decode(payload), s.exists { return nil }
        let outcome: PeerOutcome
        switch l.kind {
        case .directory:
            outcome = v.channel.call(.mkdir(parentPath: parent, name: name, mode: l.mode, uid: l.uid, gid: l.gid, stableID: l.id))
        case .symlink:
            guard let t = try? v.local.readlink(NodeRef(id: l.id, path: rel)) else { return nil }
            outcome = v.channel.call(.symlink(parentPath: parent, name: name, target: t, uid: l.uid, gid: l.gid, stableID: l.id))
        case .file:
            let r = v.pushFile(l.id, verify: .journalHash)
            if r == .ok { recordRate(bytes: l.size, files: 1); bumpHealed(l.size) } else { noteProblem("sending \(rel): \(r)") }
            return nil
        case .other:
            guard let st = try? brick.lstat(rel), SpecialFile(mode: UInt32(st.st_mode)) != nil else { return nil }
            outcome = v.channel.call(.mknod(parentPath: parent, name: name, mode: UInt32(st.st_mode), rdev: UInt64(st.st_rdev),
                                            uid: l.uid, gid: l.gid, stableID: l.id))
        }
        log.notice("heal: \(rel.debugDescription) was missing on \(peer); sent")
        guard outcome.isOK else { noteProblem("sending \(rel): \(outcome)"); return nil }
        return l.kind == .directory ? (l.id, rel) : nil
    }
}
