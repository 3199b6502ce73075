import BrickStore
import Foundation
import Glibc
import Journal
import Logging
import PeerProtocol
import TwinCore

/// The catch-up thread: whenever the link is up and this node owes the peer anything, it
/// replays the owed namespace changes in order, switches the volume back to live, then sends
/// every owed file in full (verified by the peer's own XXH3-128). Everything it sends is
/// removed from the journal only once the peer confirmed it, so a restart of either node at
/// any point resumes where it stopped; a resent change is idempotent (same stable ids).
public final class CatchUp: @unchecked Sendable {
    let v: ReplicatedVolume
    let log: Logger
    /// Guards the stop flag. Leaf.
    private let stopped = Locked(false)
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)
    /// Files whose last send failed for another reason than the link: retried with backoff
    /// (catch-up thread only).
    private var retryAt: [UInt64: (ContinuousClock.Instant, Duration)] = [:]
    /// The peer's disk refused a replayed change (full, read-only): no replay before this
    /// (catch-up thread only), doubling up to a minute while it lasts.
    private var storageRetry: (at: ContinuousClock.Instant, delay: Duration)?

    public init(volume: ReplicatedVolume, logger: Logger) {
        v = volume
        log = logger
    }

    public func start() {
        let t = Thread { [self] in
            run()
            done.signal()
        }
        t.name = "twinfs-catchup"
        thread = t
        t.start()
    }

    public func stop() {
        stopped.with { $0 = true }
        v.gate.wakeCatchUp()
        if thread != nil { done.wait() }
    }

    private var isStopped: Bool { stopped.with { $0 } }

    private func run() {
        var announced: (UInt64, UInt64)?
        var announcedAt = ContinuousClock.now
        while !isStopped {
            v.gate.waitForWork(seconds: 0.05)
            if isStopped { break }
            guard v.channel.isUp else {
                if v.gate.mode != .degraded { v.markDegraded("link \(v.channel.linkDescription)") }
                announced = nil
                continue
            }
            try? v.journal.submit([], wait: .written)
            guard let b = try? v.journal.peerBacklog() else { continue }
            let now = (UInt64(b.ops), UInt64(b.files))
            // Told at link-up, when a count reaches or leaves zero, and every 2 s while owing
            // (the peer may have dropped its view of us after a timeout of its own).
            let stale = (now.0 + now.1 > 0) && ContinuousClock.now - announcedAt > .seconds(2)
            if announced == nil || stale || announced! != now && (now.0 == 0 || announced!.0 == 0 || now.1 == 0) {
                guard case .ok = v.channel.call(.catchUpState(ops: now.0, files: now.1)) else { continue }
                announced = now
                announcedAt = ContinuousClock.now
            }
            if v.gate.mode == .live && b.ops == 0 && b.files == 0 { continue }
            if v.gate.mode == .degraded {
                if b.ops + b.files > 0 {
                    log.notice("peer reachable: catching up \(b.ops) namespace changes and \(b.files) files (\(b.bytes) bytes)")
                }
                v.gate.setCatchingUp()
            }
            if let r = storageRetry, ContinuousClock.now < r.at { continue }
            guard replayOps() else { continue }
            if v.gate.mode != .live {
                let live = v.gate.switchToLive {
                    try? v.journal.submit([], wait: .written)
                    return (try? v.journal.peerBacklog().ops) == 0
                }
                if live { log.notice("peer reachable and in step: replicating every change live") }
            }
            pushOwedFiles()
        }
    }

    /// Replays owed namespace changes in order. False if the link went down.
    private func replayOps() -> Bool {
        var after: Int64 = 0
        while !isStopped {
            guard let rows = try? v.journal.peerOps(after: after, limit: 256), !rows.isEmpty else { return true }
            var drops: [JournalOp] = []
            defer { if !drops.isEmpty { try? v.journal.submit(drops, wait: .written) } }
            for r in rows {
                // A change still in flight on this node: wait for it to settle.
                guard r.applied else { return true }
                after = r.seq
                guard let m = try? ReplicatedVolume.decodeOp(r.message) else {
                    log.error("owed change \(r.seq) in the journal cannot be decoded; recorded as split brain")
                    v.recordSplitBrain(.name, path: "journal peer_ops seq \(r.seq)", reason: "undecodable owed change")
                    drops.append(.dropPeerOp(seq: r.seq))
                    continue
                }
                if settledWithoutSending(m, r) {
                    drops.append(.dropPeerOp(seq: r.seq))
                    continue
                }
                switch v.channel.call(m) {
                case .ok:
                    drops.append(.dropPeerOp(seq: r.seq))
                    storageRetry = nil
                case .unreachable(let why):
                    // It may have been applied there (the answer lost), as a live change whose
                    // send failed: its refusal when replayed again may mean "done" (seed 137).
                    try? v.journal.submit([.peerOpUncertain(seq: r.seq)], wait: .written)
                    v.markDegraded(why)
                    return false
                case .refused(let e) where PeerRefusal(errno: e) == .storageFault:
                    // Kept, in order: everything after it waits with it.
                    let delay = min((storageRetry?.delay ?? .milliseconds(500)) * 2, .seconds(60))
                    storageRetry = (ContinuousClock.now + delay, delay)
                    log.error("\(PeerRefusal.describe(e, "apply the owed \(m.type) of \(ReplicatedVolume.describe(m).debugDescription)")); next try in \(delay)")
                    return false
                case .refused(let e):
                    // Kept while the link went down settling it (a lost answer to the removal of
                    // the entry a refused rename replaced here): the next pass sends it again and
                    // settles it whole, else the split brain stays listed on the peer only (seed 368).
                    guard replayReplacedTarget(of: m), settleRefusal(e, of: m, r) else { return false }
                    drops.append(.dropPeerOp(seq: r.seq))
                }
            }
        }
        return true
    }

    /// An owed change that must not be sent, settled here (true): an exchange that may have
    /// happened, an unlink of a file the peer sent again since, a create in split brain.
    private func settledWithoutSending(_ m: PeerMessage, _ r: PeerOpRow) -> Bool {
        // An exchange the peer may already have made would be undone by a replay.
        if r.uncertain, case let .rename(fp, fn, tp, tn, flags) = m.unguarded, RenameFlags(rawValue: flags).contains(.exchange) {
            v.recordSplitBrainOnBoth(.name, path: "\(Brick.join(fp, fn)) <-> \(Brick.join(tp, tn))",
                                     reason: "an exchange of these two names was sent but never confirmed: compare both names on both bricks")
            return true
        }
        // The entry this node removed is back under that name: the peer sent its newer
        // version since. Deleting it there now would leave only this node with it.
        if case let .guarded(expect, .unlink(p, n)) = m, let e = expect.first,
           v.local.brick.readID(rel: Brick.join(p, n)) == e.stableID {
            log.notice("owed unlink of \(Brick.join(p, n).debugDescription) dropped: the peer sent that file again since; both hold it")
            return true
        }
        return createsInSplitDirectory(m) || createsASplitEntry(m)
    }

    /// What a refusal (not a storage fault) of owed change `m` means: done already, kept in
    /// this node's copy, or a split brain listed on both nodes. False if the link went down.
    private func settleRefusal(_ e: Int32, of m: PeerMessage, _ r: PeerOpRow) -> Bool {
        let change = m.unguarded
        if e == splitBrainErrno, case .guarded = m {
            // The entry is listed already (an earlier change of it met the
            // conflict): this change is in this node's copy, which is kept.
            if case let .entry(id) = ReplicatedVolume.entryID(m), v.isSplit(id) { return true }
            // Told to the peer too: it records the failed guard itself, but not a
            // refusal for the target it changed apart (under that id, if not split yet).
            v.recordSplitBrainOnBoth(ReplicatedVolume.entryID(m), path: ReplicatedVolume.describe(m),
                                     reason: "this node's \(change.type) of it, made while the nodes were apart, reached the peer after the peer changed it: both versions are kept")
            return true
        }
        // A create this node made just before it stopped, never answered: the
        // client stored its file through the peer instead, which keeps the name.
        if e == EEXIST, r.uncertain, case let .create(p, n, _, _, _, id) = change, v.yieldName(parent: p, name: n, id: id) { return true }
        if e == ENOENT, case .unlink = change { return true }
        // An attribute change of an entry in split brain here (an earlier owed rename
        // of it was refused): it lives in this node's copy, which is kept and listed.
        if e == ENOENT, ReplicatedVolume.attributes(of: change) != nil,
           let id = v.local.brick.readID(rel: ReplicatedVolume.describe(change)), v.isSplit(id) { return true }
        // The peer holds that entry (same id) under another name already: placed by
        // a rebuild of its replaced disk, or by this very replay sent before (its
        // answer lost) and renamed since. The owed renames that follow settle the name.
        if e == EALREADY, ReplicatedVolume.created(by: change) != nil { return true }
        // Sent before, answer lost: the peer already renamed it. Unguarded only: a guarded
        // rename the peer applied already is answered done (`renameAppliedAlready`), so its
        // ENOENT says the peer never applied it (no target directory there: seed 3532, taken
        // for done, left the file at its old name on the peer only).
        if e == ENOENT, r.uncertain, case .rename = m { return true }
        if e == ENOENT, case .rmdir = change { return true }
        // The peer removed the entry while apart: a conflict, listed, and this node keeps
        // its copy. Sent back whole, it could live on the peer only once the peer's owed
        // removal had reached here (seed 478); dropped, only here when that removal was a
        // live one this node refused (seed 1100).
        if e == EIDRM, case .rename = change, case let .entry(id) = ReplicatedVolume.entryID(m) {
            if !v.isSplit(id) {
                v.recordSplitBrainOnBoth(.entry(id), path: ReplicatedVolume.describe(m),
                                         reason: "this node renamed it while the nodes were apart, and the peer removed it meanwhile: this node keeps its copy")
            }
            return true
        }
        // The peer has nothing under the old name, or no target directory: the rename
        // reached it before the link broke (its reply was lost), or it never had the file.
        // Either way a file is made right by sending it whole under its name here.
        if e == ENOENT, case let .rename(_, _, tp, tn, _) = change,
           case let (st, id?)? = try? v.local.brick.statAndID(Brick.join(tp, tn)), st.kind == .file {
            switch v.pushFile(id) {
            case .ok, .gone: return true
            case .unreachable: return false
            case .splitBrain, .failed, .badSource: break
            }
        }
        v.recordSplitBrainOnBoth(ReplicatedVolume.entryID(m), path: ReplicatedVolume.describe(m),
                                 reason: "changed on both nodes while apart: the peer could not apply \(m.type) (\(String(cString: strerror(e))))")
        return true
    }

    /// An owed create in a directory this node holds in split brain, or below one (the peer
    /// could not take the directory, or its rename): the entry belongs to this node's copy of
    /// that directory, which is kept and listed. Sent, the guard would refuse it and list each
    /// entry beneath as a conflict of its own (seed 392), though only the directory was
    /// changed on both.
    private func createsInSplitDirectory(_ m: PeerMessage) -> Bool {
        guard case let .guarded(expect, change) = m, ReplicatedVolume.created(by: change) != nil,
              let dir = expect.first, v.isSplit(dir.stableID) || v.underSplitDirectory(dir.stableID) else { return false }
        log.notice("owed \(change.type) of \(ReplicatedVolume.describe(change).debugDescription) not replayed: its directory is in split brain; it stays in this node's copy")
        return true
    }

    /// An owed create of an entry this node holds in split brain (the peer refused a change of
    /// its name because of it, seed 320): the entry is this node's copy, kept and listed, and
    /// no byte of it is sent. Created on the peer, it would be a receipt there waiting for
    /// those bytes, and an empty file the peer never lists by this id.
    private func createsASplitEntry(_ m: PeerMessage) -> Bool {
        guard let id = ReplicatedVolume.created(by: m), v.isSplit(id) else { return false }
        log.notice("owed \(m.unguarded.type) of \(ReplicatedVolume.describe(m).debugDescription) not replayed: the entry is in split brain; it stays in this node's copy")
        return true
    }

    /// A replayed rename the peer refused (a conflict on its source, say) still replaced an
    /// entry here, which this node no longer holds: that removal is replayed on its own,
    /// guarded by what this node saw at the name. Otherwise the peer keeps the entry only
    /// it still has, and (a file created by this node's replayed create) waits forever for
    /// bytes no one will send (seeds 20, 329). A version the peer's client wrote is refused
    /// by the guard as usual (a split brain, both kept). False if the link went down.
    private func replayReplacedTarget(of m: PeerMessage) -> Bool {
        guard case let .guarded(expect, .rename(_, _, tp, tn, flags)) = m, !RenameFlags(rawValue: flags).contains(.exchange) else { return true }
        let to = Brick.join(tp, tn)
        guard let e = expect.first(where: { $0.path == to && $0.stableID != ReplicatedVolume.absentID }),
              v.journalLacks(e.stableID) else { return true }
        switch v.channel.call(.guarded(expect: [e], change: .unlink(parentPath: tp, name: tn))) {
        case .ok:
            log.notice("the replayed rename onto \(to.debugDescription) was refused; the entry it replaced here (id \(e.stableID)) was removed on the peer too")
            return true
        case .refused(let err) where err == splitBrainErrno:
            // The peer's client changed that entry meanwhile: a conflict, listed here too.
            if !v.isSplit(e.stableID) {
                v.recordSplitBrainOnBoth(.entry(e.stableID), path: to,
                                         reason: "this node replaced it by a rename while the nodes were apart, and the peer changed it meanwhile: the peer keeps its version")
            }
            return true
        case .refused(let err) where PeerRefusal(errno: err) == .storageFault:
            // Not applied: the rename stays owed and settles it again once the disk takes it
            // (seed 438: taken for "not there", the replaced file lived on the peer only).
            let delay = min((storageRetry?.delay ?? .milliseconds(500)) * 2, .seconds(60))
            storageRetry = (ContinuousClock.now + delay, delay)
            log.error("\(PeerRefusal.describe(err, "remove \(to.debugDescription), which the refused rename replaced here")); next try in \(delay)")
            return false
        case .refused(let err):
            log.notice("the replayed rename onto \(to.debugDescription) was refused; the entry it replaced here (id \(e.stableID)) is not there on the peer (\(String(cString: strerror(err))), errno \(err))")
            return true
        case .unreachable(let why):
            v.markDegraded(why)
            return false
        }
    }

    private func pushOwedFiles() {
        var after: UInt64 = 0
        while !isStopped && v.channel.isUp {
            guard let rows = try? v.journal.peerFiles(after: after, limit: 64), !rows.isEmpty else { return }
            for r in rows {
                after = r.id
                if let (when, _) = retryAt[r.id], ContinuousClock.now < when { continue }
                // In split brain, or in a directory that is: it stays in this node's copy.
                if v.isSplit(r.id) || v.underSplitDirectory(r.id) {
                    try? v.journal.submit([.dropPeerFile(id: r.id, generation: .max)], wait: .written)
                    continue
                }
                switch v.pushFile(r.id) {
                case .ok, .gone:
                    v.settledChecked(r.id, generation: r.generation)
                    retryAt[r.id] = nil
                case .unreachable:
                    return
                case .splitBrain:
                    retryAt[r.id] = nil
                case .failed(let why), .badSource(let why):
                    let delay = min((retryAt[r.id]?.1 ?? .seconds(1)) * 2, .seconds(60))
                    retryAt[r.id] = (ContinuousClock.now + delay, delay)
                    log.error("sending file id \(r.id) to the peer failed: \(why); it stays owed, next try in \(delay)")
                }
            }
        }
    }
}
