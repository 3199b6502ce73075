import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import NIOCore
import PeerLink
import PeerProtocol
import TwinCore
import Volume

/// Crash reconciliation at start: what a crash left in `peer_ops` and `peer_files` is
/// settled against the brick, and entries no client heard of may give up their name.
extension ReplicatedVolume {
    /// Rows a crash left: a tentative namespace change is kept only if the brick shows it was
    /// applied. A file that was being written live is taken from the peer (which holds every
    /// acknowledged byte of it, and perhaps a newer copy a client wrote there after this node
    /// stopped); this node's interrupted copy is kept in quarantine, never just overwritten.
    /// If the peer turns out not to have it, the healer sends this node's copy instead.
    static func settleCrashLeftovers(local: LocalVolume, interrupted: Set<UInt64>, log: Logger) throws(FSError) -> CrashLeftovers {
        var ops: [JournalOp] = []
        var left = CrashLeftovers()
        do {
            var after: Int64 = 0
            while true {
                let rows = try local.journal.peerOps(after: after, limit: 1024)
                guard let last = rows.last else { break }
                after = last.seq
                for r in rows where !r.applied {
                    left.checked += 1
                    if let m = try? decodeOp(r.message), locallyApplied(m, brick: local.brick) {
                        // Applied here just before the crash; whether the peer got it is unknown.
                        ops.append(.peerOpUncertain(seq: r.seq))
                        // Not marked applied: the create had not returned to the client.
                        if case let .create(p, n, _, _, _, id) = m { left.unansweredCreates[id] = Brick.join(p, n) }
                    } else {
                        ops.append(.dropPeerOp(seq: r.seq))
                    }
                }
            }
            for id in interrupted {
                ops.append(.dropPeerFile(id: id, generation: .max))
                guard let path = try local.journal.path(of: id), !path.isEmpty,
                      let st = try? local.brick.lstat(path), st.kind == .file else { continue }
                if st.st_size > 0, let q = try? local.brick.quarantineCopy(rel: path, id: id, tag: "interrupted") {
                    left.quarantined.insert(id)
                    ops.append(.quarantined(QuarantineRow(id: id, path: path, stored: q.stored, size: q.size, hash: q.hash,
                                                          reason: "was being written when this node stopped; the peer's copy replaces it",
                                                          created: ISO8601DateFormatter().string(from: Date()))))
                }
                // The file keeps showing its own size until the peer's copy arrives.
                ops.append(.awaitInterrupted(id: id))
                log.notice("\(path.debugDescription) was being written when this node stopped: taking the peer's copy (this one is kept in quarantine)")
            }
            if !ops.isEmpty { try local.journal.submit(ops, wait: .durable) }
        } catch {
            throw FSError.io
        }
        if left.checked > 0 { log.notice("\(left.checked) changes interrupted by a crash were checked against the brick for the peer") }
        return left
    }

    static func locallyApplied(_ m: PeerMessage, brick: Brick) -> Bool {
        func exists(_ rel: String) -> Bool { (try? brick.lstat(rel)) != nil }
        switch m.unguarded {
        case let .mkdir(p, n, _, _, _, id), let .create(p, n, _, _, _, id), let .symlink(p, n, _, _, _, id):
            return brick.readID(rel: Brick.join(p, n)) == id
        case let .unlink(p, n), let .rmdir(p, n):
            return !exists(Brick.join(p, n))
        case let .rename(fp, fn, tp, tn, flags):
            return exists(Brick.join(tp, tn)) && (RenameFlags(rawValue: flags).contains(.exchange) || !exists(Brick.join(fp, fn)))
        case let .link(path, np, nn):
            let id = brick.readID(rel: path)
            return id != nil && brick.readID(rel: Brick.join(np, nn)) == id
        default:
            return true
        }
    }

    /// The entries a crash left that no client was ever told of: files whose create was under
    /// way (it never returned, so they are empty), and files being written live whose create
    /// the peer may never have got (no close or fsync of theirs returned; bytes they hold are
    /// in quarantine). Only what this start found: after a second restart they are ordinary.
    static func yieldCandidates(local: LocalVolume, interrupted: Set<UInt64>, left: CrashLeftovers,
                                excluded: Set<UInt64>) -> [UInt64: YieldCandidate] {
        var out: [UInt64: YieldCandidate] = [:]
        func add(_ id: UInt64, _ rel: String, emptyOnly: Bool) {
            guard !excluded.contains(id), let st = try? local.brick.lstat(rel), st.kind == .file, st.st_nlink == 1,
                  local.brick.readID(rel: rel) == id, !emptyOnly || st.st_size == 0 else { return }
            out[id] = YieldCandidate(rel: rel, size: Int64(st.st_size), mtimeNs: st.mtimeNs,
                                     ctimeNs: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
        }
        for id in interrupted {
            if let path = try? local.journal.path(of: id), !path.isEmpty { add(id, path, emptyOnly: !left.quarantined.contains(id)) }
        }
        for (id, rel) in left.unansweredCreates { add(id, rel, emptyOnly: true) }
        return out
    }

    /// A client opens `id` for writing (or changes it) here: it is no longer a file no client
    /// was told of, and must never give up its name.
    func keepName(_ id: UInt64) {
        guard state.with({ !$0.yielding.isEmpty }) else { return }
        yieldLock.withLock { state.with { $0.yielding[id] = nil } }
    }

    /// The peer holds another entry under the name of `id`, a file this node made just before
    /// it stopped that no client was ever told of. The client went on through the peer, so
    /// the peer's entry is the one it knows: this node's gives up the name (it holds no
    /// acknowledged byte; any bytes are in quarantine since the start). False, and a split
    /// brain as before, if the file changed since this node started or is not that file.
    public func yieldName(parent: String, name: String, id: UInt64) -> Bool {
        let rel = Brick.join(parent, name)
        yieldLock.lock()
        defer { yieldLock.unlock() }
        // Already given up (the peer's create of the name came first): the replay of this
        // node's create, or its send, has nothing left to do.
        if state.with({ $0.yielded[id] }) == rel && local.brick.readID(rel: rel) != id { return true }
        guard let y = state.with({ $0.yielding[id] }), y.rel == rel else { return false }
        // Unchanged since this node started, open nowhere, one name: else a client used it.
        guard let st = try? local.brick.lstat(rel), st.kind == .file, st.st_nlink == 1, local.brick.readID(rel: rel) == id,
              Int64(st.st_size) == y.size, st.mtimeNs == y.mtimeNs,
              Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec) == y.ctimeNs,
              local.openHandle(for: id) == nil, !changedWhileApart(id), !isSplit(id), let apply = localApply else {
            state.with { $0.yielding[id] = nil }
            return false
        }
        guard case .reply(_, 0, _) = apply(.unlink(parentPath: parent, name: name)) else { return false }
        state.with { $0.yielding[id] = nil; $0.yielded[id] = rel }
        try? journal.submit([.dropPeerFile(id: id, generation: .max), .healReceived(id: id)], wait: .written)
        log.notice("\(rel.debugDescription) was made here just before this node stopped and no client was told of it; the peer stored another file under this name meanwhile, which takes its place\(y.size > 0 ? " (this node's bytes are in quarantine)" : "")")
        return true
    }
}
