import BrickStore
import Dispatch
import Glibc
import Journal
import Logging
import NIOCore
import PeerProtocol
import TwinCore

/// What the peer changed on this brick, for this node's kernel cache (the FUSE layer turns it
/// into `notify_inval_*`; it is delivered after the reply, off the request path, because an
/// invalidation may wait for a kernel lock held by a request of this very node).
public enum PeerChange: Sendable {
    case entry(parent: UInt64, name: String)
    case removed(parent: UInt64, name: String)
    case renamed(parent: UInt64, name: String, newParent: UInt64, newName: String, exchange: Bool)
    case content(id: UInt64)
}

/// The receiving side of the peer link: every authenticated request from the peer lands here.
/// Replication messages go to the `ReplicaApplier` (on a thread that may block), after the
/// split-brain check: a file this node changed while the nodes were apart is never overwritten
/// by the peer's copy (answered EBADE, recorded on both sides). Lock, pull and catch-up
/// messages go to the replicated volume.
public final class PeerService: Sendable {
    public let volume: ReplicatedVolume
    public let applier: ReplicaApplier
    private let pool = BlockingPool(name: "twinfs-peer-apply")
    private let notify: @Sendable (PeerChange) -> Void
    private let log: Logger

    public init(volume: ReplicatedVolume, logger: Logger, notify: @escaping @Sendable (PeerChange) -> Void) {
        self.volume = volume
        applier = ReplicaApplier(volume: volume.local, logger: logger)
        self.notify = notify
        log = logger
        applier.onAbandoned { [volume] id in volume.healHooks?.awaitReplica(id: id) }
        applier.owesOwnerOrMode { [volume] id in volume.owesAttributeChange(id, of: ["mode", "owner"]) }
    }

    /// The peer's connection to this node closed (it died, or the link broke): files it was
    /// sending are not held open here waiting for a commit that will not come.
    public func peerDisconnected() {
        pool.run { self.applier.releaseAll() }
    }

    /// `PeerListener`'s handler: applying blocks (fsync, locks), so it runs on the pool's threads.
    public func handle(_ message: PeerMessage, requestID: UInt64, reply: @escaping @Sendable (PeerMessage) -> Void) {
        pool.run { reply(self.handleBlocking(message, requestID: requestID)) }
    }

    func reply(_ requestID: UInt64, _ errno: Int32) -> PeerMessage { .reply(requestID: requestID, errno: errno, payload: nil) }

    public func handleBlocking(_ m: PeerMessage, requestID: UInt64) -> PeerMessage {
        if case let .guarded(expect, change) = m { return handleGuarded(m, expect, change, requestID: requestID) }
        if let answer = coordinate(m, requestID: requestID) { return answer }
        if let errno = refusalBeforeApplying(m) { return reply(requestID, errno) }
        if let hooks = volume.healHooks {
            switch m {
            case let .write(_, id, _, _), let .create(_, _, _, _, _, id): hooks.noteIngest(id: id)
            default: break
            }
        }
        let before = changeBefore(m)
        let r = applier.apply(m, requestID: requestID)
        if case let .reply(_, errno, _) = r, errno == 0 {
            for c in before + changeAfter(m) { notify(c) }
            if case let .commit(_, id, _, _, _) = m { volume.healHooks?.received(id: id) }
        }
        return r
    }

    /// A change sent with what the sender saw at its names: applied while that holds here,
    /// refused as a split brain (both versions kept) once this node changed the entry too.
    private func handleGuarded(_ m: PeerMessage, _ expect: [EntryExpectation], _ change: PeerMessage, requestID: UInt64) -> PeerMessage {
        if volume.removedHereToo(expect, change: change) { return reply(requestID, ENOENT) }
        if volume.renamesAnEntryRemovedHere(expect, change: change) { return reply(requestID, EIDRM) }
        let conflict: String?
        do throws(FSError) {
            conflict = try volume.owesConflictingAttributeChange(expect[0].stableID, change)
                ? "this node changed the same attributes while apart, and owes the peer that change"
                : volume.expectationFails(expect, change: change)
        } catch {
            // This node's disk cannot show what is there: a fault of its disk, which the
            // peer retries, never a conflict the disk's silence made up.
            return reply(requestID, error.errno)
        }
        guard let why = conflict else {
            if volume.renameAppliedAlready(expect, change: change) { return reply(requestID, 0) }
            return handleBlocking(change, requestID: requestID)
        }
        let subject = ReplicatedVolume.entryID(m)
        // Listed already (an earlier change of it met the conflict): the row keeps that
        // first reason, and the sender's change stays in the sender's copy.
        if case let .entry(id) = subject, volume.isSplit(id) { return reply(requestID, splitBrainErrno) }
        // Noted to the peer too, not left to this answer: lost with the link, the peer replays
        // the change later, and by then this node may have removed its copy (the replay is
        // then done, ENOENT), leaving the split listed here only (seeds 2628, 3485).
        volume.recordSplitBrainOnBoth(subject, path: ReplicatedVolume.describe(change),
                                reason: "the peer's \(change.type) of it, made while the nodes were apart, arrived after this node changed it (\(why)); both versions are kept")
        return reply(requestID, splitBrainErrno)
    }

    /// The messages that coordinate the pair rather than change this brick (locks, pulls,
    /// catch-up state, split-brain notes, heal requests): their answer, or nil for a change.
    func coordinate(_ m: PeerMessage, requestID: UInt64) -> PeerMessage? {
        switch m {
        case let .lock(token, keys, leaseMs):
            guard volume.ordinal == 1, token < 1 << 63 else { return reply(requestID, EINVAL) }
            // Answer before the requester's own timeout would tear the link down.
            let ok = volume.locks.acquire(keys, token: token, lease: .milliseconds(Int64(leaseMs)), wait: volume.channel.timeout / 2)
            return reply(requestID, ok ? 0 : EAGAIN)
        case let .unlock(token):
            guard token < 1 << 63 else { return reply(requestID, EINVAL) }
            volume.locks.release(token)
            return reply(requestID, 0)
        case let .pull(id):
            volume.servePull(id)
            return reply(requestID, 0)
        case let .noteSplit(id, path, reason):
            if id == 0 || !volume.isSplit(id) {
                volume.recordSplitBrain(SplitSubject(wireID: id), path: path, reason: "reported by the peer: \(reason)")
            }
            return reply(requestID, 0)
        case let .catchUpState(ops, files):
            volume.peerReportedCatchUp(ops: ops, files: files)
            // The peer owes nothing: a file its replay created here and that it deleted since
            // (no name left here) or holds in split brain, itself or in its copy of a directory
            // in split brain here too (it never sends those, seed 382), will never be
            // committed. Its receipt goes (abandoned: the healer then finds it gone, or split)
            // instead of staying open and awaited for as long as the link stays up.
            if ops == 0 && files == 0 {
                applier.release { id in
                    volume.isSplit(id) || volume.underSplitDirectory(id) || volume.journalLacks(id)
                }
            }
            return reply(requestID, 0)
        case .listDir, .healFile, .fileState, .volumeInfo, .healInfo, .resolveSplit:
            return volume.serveHeal(m, requestID: requestID)
        default:
            return nil
        }
    }

    /// What is settled before a change of the peer is applied: a directory listed from the
    /// peer first (while rebuilding), a name given up, or the change refused because this
    /// node owns the file (changed it apart, or split). An errno to answer, or nil to apply.
    func refusalBeforeApplying(_ m: PeerMessage) -> Int32? {
        // While this brick is rebuilt, a directory the peer changes is listed from the peer first.
        if let hooks = volume.healHooks {
            do {
                for d in parents(m) { try hooks.prepareDirectory(path: d) }
            } catch {
                return error.errno
            }
        }
        // The peer creates a name where this node holds a file it made just before it stopped
        // and no client was told of: that file gives the name up (see `yieldName`).
        if let (p, n, id) = Self.createdName(m), let mine = volume.local.brick.readID(rel: Brick.join(p, n)), mine != id {
            _ = volume.yieldName(parent: p, name: n, id: mine)
        }
        // The peer re-creating a file this node holds under that id and owns (changed it while
        // apart, or split): nothing to create, and nothing about to be received either (its
        // writes are refused below), so no receiving handle and no incomplete-replica mark.
        if case let .create(p, n, _, _, _, id) = m, volume.holdsUnsentVersion(id),
           volume.local.brick.readID(rel: Brick.join(p, n)) == id {
            return 0
        }
        if case let .stageWhole(p, n, _, _, _, id, _) = m, volume.removedApart(id) {
            volume.recordSplitBrain(.entry(id), path: Brick.join(p, n),
                                    reason: "the peer sent its copy, but this node removed the file while the nodes were apart and owes the peer that removal")
            return splitBrainErrno
        }
        if let id = contentTarget(m), volume.holdsUnsentVersion(id) {
            // Noted to the peer as well, as a refused guarded change is: the answer alone
            // may be lost, and the sender's file gone (or sent) before it tries again.
            if !volume.isSplit(id) {
                volume.recordSplitBrainOnBoth(.entry(id), path: ReplicatedVolume.describe(m),
                                        reason: "the peer sent its copy, but this node changed the file too while the nodes were apart")
            }
            return splitBrainErrno
        }
        return nil
    }

    /// Applies a change the healer decided on (an entry the peer has and this node lacks), with
    /// the same kernel-cache invalidations as a change the peer sent: a name this node's
    /// kernel remembers as missing appears at once.
    public func applyHealed(_ m: PeerMessage) -> PeerMessage {
        let before = changeBefore(m)
        let r = applier.apply(m)
        if case let .reply(_, errno, _) = r, errno == 0 {
            for c in before + changeAfter(m) { notify(c) }
        }
        return r
    }

    /// The name a message creates when it is missing, and the id it gets.
    static func createdName(_ m: PeerMessage) -> (String, String, UInt64)? {
        switch m {
        case let .create(p, n, _, _, _, id), let .stageWhole(p, n, _, _, _, id, _): return (p, n, id)
        default: return nil
        }
    }

    /// The directories a namespace change works in.
    private func parents(_ m: PeerMessage) -> [String] {
        switch m {
        case let .mkdir(p, _, _, _, _, _), let .create(p, _, _, _, _, _), let .symlink(p, _, _, _, _, _),
             let .unlink(p, _), let .rmdir(p, _), let .stageWhole(p, _, _, _, _, _, _), let .mknod(p, _, _, _, _, _, _):
            return [p]
        case let .rename(fp, _, tp, _, _): return [fp, tp]
        case let .link(_, np, _): return [np]
        case let .write(path, _, _, _), let .commit(path, _, _, _, _), let .setattr(path, _):
            return [ReplicatedVolume.split(path).0]
        default: return []
        }
    }

    /// The file whose bytes a message changes, if this node could own a newer copy of it.
    private func contentTarget(_ m: PeerMessage) -> UInt64? {
        if case .unlink = m, !volume.owesAnything { return nil }
        if case .rename = m, !volume.owesAnything { return nil }
        switch m {
        case let .write(_, id, _, _), let .commit(_, id, _, _, _), let .stageWhole(_, _, _, _, _, id, _):
            return id
        // Not a create: of a name this node lacks it makes a new file, and of the file this
        // node already holds under that id (a replay whose answer was lost) it changes nothing.
        case let .setattr(path, c) where c.size != nil:
            return volume.local.brick.readID(rel: path)
        // Removing or replacing a file this node changed while apart would drop its changes.
        case let .unlink(p, n):
            return volume.local.brick.readID(rel: Brick.join(p, n))
        case let .rename(_, _, tp, tn, _):
            return volume.local.brick.readID(rel: Brick.join(tp, tn))
        default:
            return nil
        }
    }

    private func id(_ rel: String) -> UInt64? {
        rel.isEmpty ? StableID.root : volume.local.brick.readID(rel: rel)
    }

    /// Changes whose ids must be read before the message is applied (the name goes away).
    private func changeBefore(_ m: PeerMessage) -> [PeerChange] {
        switch m {
        case let .unlink(p, n), let .rmdir(p, n):
            return id(p).map { [.removed(parent: $0, name: n)] } ?? []
        case let .rename(fp, fn, tp, tn, flags):
            guard let a = id(fp), let b = id(tp) else { return [] }
            return [.renamed(parent: a, name: fn, newParent: b, newName: tn, exchange: RenameFlags(rawValue: flags).contains(.exchange))]
        default:
            return []
        }
    }

    private func changeAfter(_ m: PeerMessage) -> [PeerChange] {
        switch m {
        case let .mkdir(p, n, _, _, _, _), let .create(p, n, _, _, _, _), let .symlink(p, n, _, _, _, _),
             let .stageWhole(p, n, _, _, _, _, _), let .mknod(p, n, _, _, _, _, _):
            return id(p).map { [.entry(parent: $0, name: n)] } ?? []
        case let .link(path, np, nn):
            var out: [PeerChange] = id(np).map { [.entry(parent: $0, name: nn)] } ?? []
            if let i = id(path) { out.append(.content(id: i)) }
            return out
        case let .commit(_, i, _, _, _):
            return [.content(id: i)]
        case let .setattr(p, _), let .setxattr(p, _, _, _), let .removexattr(p, _):
            return id(p).map { [.content(id: $0)] } ?? []
        default:
            return []
        }
    }
}

extension ReplicatedVolume {
    /// Why an owed change's expectations no longer hold here (nil: they hold, or the entry is
    /// gone, which the change itself then reports). Throws when this node's brick or journal
    /// cannot be read: what is there is then unknown, not different.
    func expectationFails(_ expect: [EntryExpectation], change: PeerMessage? = nil) throws(FSError) -> String? {
        func row(_ id: UInt64) throws(FSError) -> InodeRecord? {
            do { return try journal.inode(id) } catch { throw FSError.io }
        }
        do { try journal.submit([], wait: .written) } catch { throw FSError.io }
        // A create this node holds already (its id, anywhere): a replay of it, applied before
        // and moved since; the change itself answers that (EALREADY), whatever its directory.
        if let id = change.flatMap(Self.created(by:)), try row(id) != nil { return nil }
        for e in expect {
            let here: (stat, UInt64?)?
            do throws(FSError) { here = try local.brick.statAndID(e.path) } catch where [ENOENT, ENOTDIR].contains(error.errno) { here = nil }
            guard case let (st, found)? = here else {
                // Not under that name, but here under another (this node renamed it or a
                // directory above it): the change would miss it (an unlink answered ENOENT is
                // taken as done) and the two nodes would silently differ. Unless it is where
                // the change itself puts it (a replayed rename this node already applied).
                let now: String?
                do { now = e.stableID == Self.absentID ? nil : try journal.path(of: e.stableID) } catch { throw FSError.io }
                if let now, now != Self.target(of: change) {
                    return "\(e.path.debugDescription) is at \(now.debugDescription) here"
                }
                continue
            }
            if e.stableID == Self.absentID {
                // The rename's own entry there: this replay was applied before (its answer lost).
                if expect.contains(where: { $0.stableID == found }) { continue }
                return "\(e.path.debugDescription) was created here meanwhile (id \(found.map { String($0) } ?? "none"))"
            }
            // The rename's own entry at its target: this replay was applied before (its answer
            // lost), replacing the entry it expected there (seed 208).
            if e.path == Self.target(of: change), let found, expect.contains(where: { $0.stableID == found && $0.path != e.path }) { continue }
            guard found == e.stableID else {
                return "\(e.path.debugDescription) is now another entry (id \(found.map { String($0) } ?? "none"), expected \(e.stableID))"
            }
            guard st.kind == .file else { continue }
            // A version this node has not sent yet (the peer expects no content: it owed the
            // file too) would be lost with the name the change removes.
            if isOwed(e.stableID), e.path == Self.removed(by: change) { return "\(e.path.debugDescription) was rewritten here and not sent yet" }
            guard !e.xxh128.isEmpty else { continue }
            guard let rec = try row(e.stableID), !rec.dirty, rec.hash == e.xxh128 else {
                return "\(e.path.debugDescription) was rewritten here"
            }
        }
        return nil
    }

    /// A guarded unlink or rmdir of an entry this node no longer has at all (removed or
    /// replaced here too), whose name now holds another entry: nothing of the sender's entry
    /// is left to remove, and the other entry is not the one it removed, so the answer is
    /// ENOENT (done), not a conflict, and never the removal of the other entry. Both nodes
    /// removed that entry; the name's new entry is replicated as any other (before: a split
    /// brain though the two changes agreed, seed 208; an unguarded rmdir removed the new
    /// directory of that name on one node only, seed 316).
    func removedHereToo(_ expect: [EntryExpectation], change: PeerMessage) -> Bool {
        let name: (String, String)
        switch change {
        case let .unlink(p, n), let .rmdir(p, n): name = (p, n)
        default: return false
        }
        let (p, n) = name
        guard let e = expect.first, e.stableID != Self.absentID,
              let found = local.brick.readID(rel: Brick.join(p, n)), found != e.stableID else { return false }
        try? journal.submit([], wait: .written)
        return journalLacks(e.stableID)
    }

    /// A guarded rename of an entry this node removed while apart (gone from its name and from
    /// the journal): answered EIDRM, not ENOENT, which also means "the rename's target
    /// directory is not here" and makes the sender send its file whole (seed 478: sent back, it
    /// outlived this node's removal on this node only). The sender lists the conflict.
    func renamesAnEntryRemovedHere(_ expect: [EntryExpectation], change: PeerMessage) -> Bool {
        guard case let .rename(fp, fn, _, _, flags) = change, !RenameFlags(rawValue: flags).contains(.exchange),
              let e = expect.first, e.stableID != Self.absentID, e.path == Brick.join(fp, fn),
              local.brick.readID(rel: e.path) == nil else { return false }
        try? journal.submit([], wait: .written)
        return journalLacks(e.stableID)
    }

    /// A guarded rename this node applied already: sent again because its answer was lost (or
    /// the sender stopped before it heard it), it finds its entry at the target here and
    /// nothing of it under the source name. Done: applied again it would fail with ENOENT,
    /// which the sender cannot tell from a peer that never had the entry, so it sent its file
    /// under the target name, where this node still holds the entry it moved (seed 354: a
    /// split brain of a file only the sender changed).
    func renameAppliedAlready(_ expect: [EntryExpectation], change: PeerMessage) -> Bool {
        guard case let .rename(fp, fn, tp, tn, flags) = change, !RenameFlags(rawValue: flags).contains(.exchange) else { return false }
        let (from, to) = (Brick.join(fp, fn), Brick.join(tp, tn))
        guard from != to, let moved = expect.first(where: { $0.path == from }), moved.stableID != Self.absentID else { return false }
        return local.brick.readID(rel: to) == moved.stableID && local.brick.readID(rel: from) != moved.stableID
    }

    /// The name whose entry an unlink or a rename removes or replaces (nil for any other change).
    static func removed(by change: PeerMessage?) -> String? {
        switch change {
        case let .unlink(p, n)?: return Brick.join(p, n)
        case let .rename(_, _, tp, tn, flags)? where !RenameFlags(rawValue: flags).contains(.exchange): return Brick.join(tp, tn)
        default: return nil
        }
    }

    /// Where a rename puts its entry (nil for any other change).
    static func target(of change: PeerMessage?) -> String? {
        guard case let .rename(_, _, tp, tn, _)? = change else { return nil }
        return Brick.join(tp, tn)
    }

    /// The peer is about to serve file `id`: if this node owes it, send it now.
    func servePull(_ id: UInt64) {
        guard isOwed(id), !isSplit(id) else { return }
        // Files go after the owed namespace changes (as catch-up sends them): a file sent now
        // would let an owed truncate of it, replayed later, cut what the peer wrote since.
        guard ((try? journal.peerBacklog().ops) ?? 1) == 0 else { return }
        let gen = (try? journal.peerFile(id))??.generation ?? .max
        switch pushFile(id) {
        case .ok, .gone:
            settledChecked(id, generation: gen)
        default:
            break
        }
    }

    /// Drops the owed row up to `generation`; forgets the id only if no newer mark remains.
    func settledChecked(_ id: UInt64, generation: Int64) {
        try? journal.submit([.dropPeerFile(id: id, generation: generation)], wait: .written)
        if (try? journal.peerFile(id)) ?? nil == nil {
            state.with { $0.owed.remove(id); $0.changedApart.remove(id) }
        }
    }
}
