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

/// The namespace transaction: cluster name locks, tentative row, local change, peer call or
/// durable owed row; and the encoding of owed changes.
extension ReplicatedVolume {
    static func key(_ parent: UInt64, _ name: String) -> String { "\(parent)/\(name)" }

    /// Takes the cluster name locks: always in this node's table, and in live mode on node 1
    /// too when this is node 2. Returns the release.
    func takeLocks(_ keys: [String], live: Bool) throws(FSError) -> () -> Void {
        if keys.isEmpty { return {} }
        let token = locks.newToken()
        // A local holder always releases (defer), so its lease never lapses mid-change; a wait
        // is bounded by the peer timeout, like every other wait of a request.
        guard locks.acquire(keys, token: token, lease: .seconds(3600), wait: channel.timeout) else {
            log.error("name lock \(keys) still held after \(channel.timeout); continuing without it")
            return {}
        }
        guard live, ordinal != 1 else { return { [locks] in locks.release(token) } }
        let remote = token & ~(1 << 63)
        // A whole-file push may take long: its content lock on node 1 gets the longest lease.
        let leaseMs: UInt32 = keys.contains { $0.hasPrefix("c/") } ? 60_000
            : UInt32(lease.components.seconds * 1000 + lease.components.attoseconds / 1_000_000_000_000_000)
        switch channel.call(.lock(token: remote, keys: keys, leaseMs: leaseMs)) {
        case .ok:
            return { [locks, channel] in
                locks.release(token)
                channel.start(.unlock(token: remote)) { _ in }
            }
        case .refused(let e):
            log.warning("peer refused name lock \(keys) (errno \(e)); continuing")
            return { [locks] in locks.release(token) }
        case .unreachable(let why):
            markDegraded(why)
            return { [locks] in locks.release(token) }
        }
    }

    /// One namespace change: tentative row, local change, peer (live) or durable row (not
    /// live). Its peer step is ordered after any removal or rename whose peer step is still
    /// under way (`remoteOrder`), so the peer never gets a change under a path it lacks yet.
    func replicate<R>(keys: [String], pre: PeerMessage,
                      _ apply: () throws(FSError) -> R, message: (R) -> PeerMessage) throws(FSError) -> R {
        try remoteOrder.shared { () throws(FSError) -> R in
            let t = try beginTransaction(keys: keys, pre: pre)
            let r: R
            do throws(FSError) { r = try apply() } catch {
                abandon(t)
                throw error
            }
            try finishTransaction(t, message(r))
            return r
        }
    }

    /// A removal or rename in two steps (see `VolumeOperations.beginNameChange`): the local
    /// step now, the peer's on the returned finish, which the FUSE adapter runs after it
    /// released its exclusive namespace lock. Until the finish, `remoteOrder` is held
    /// exclusively: other changes wait before their peer step, reads do not wait at all.
    func changeInTwoSteps(keys: [String], _ m: PeerMessage, beforePeer: @escaping () -> Void = {},
                          afterPeer: @escaping () -> Void = {},
                          _ apply: () throws(FSError) -> Void) throws(FSError) -> NameChangeFinish {
        remoteOrder.lockExclusive()
        let t: Transaction
        do throws(FSError) { t = try beginTransaction(keys: keys, pre: m) } catch {
            remoteOrder.unlock()
            throw error
        }
        do throws(FSError) { try apply() } catch {
            abandon(t)
            remoteOrder.unlock()
            throw error
        }
        return NameChangeFinish { [self] () throws(FSError) in
            defer { remoteOrder.unlock() }
            defer { afterPeer() }
            beforePeer()
            try finishTransaction(t, m)
        }
    }

    /// A namespace change between its local step and its peer step.
    struct Transaction {
        let entered: Mode
        let seq: Int64
        /// What a late replay must still find at the peer (read before the change moves it).
        let expect: [EntryExpectation]
        let release: () -> Void
    }

    /// Enters the gate, takes the name locks and writes the tentative row (a crash from here
    /// on is settled against the brick at the next start).
    func beginTransaction(keys: [String], pre: PeerMessage) throws(FSError) -> Transaction {
        let entered = gate.enter()
        // Cut off already: refused before anything is written, so the brick stays untouched.
        if entered == .degraded {
            do throws(FSError) { try permitApart(cutOff: true) } catch {
                gate.leave()
                throw error
            }
        }
        let release: () -> Void
        do throws(FSError) { release = try takeLocks(keys, live: entered == .live) } catch {
            gate.leave()
            throw error
        }
        // A live change too: if its send fails, it is owed like one made apart.
        let expect = expectations(for: pre)
        let seq = journal.nextPeerSeq()
        do { try journal.submit([.peerOp(seq: seq, message: Self.encodeOp(pre), applied: false)], wait: .written) } catch {
            release()
            gate.leave()
            throw FSError.io
        }
        return Transaction(entered: entered, seq: seq, expect: expect, release: release)
    }

    /// The local change failed: nothing to tell the peer.
    func abandon(_ t: Transaction) {
        try? journal.submit([.dropPeerOp(seq: t.seq)], wait: .queued)
        t.release()
        gate.leave()
    }

    /// The peer step: the change sent and answered (live), or owed durably.
    func finishTransaction(_ t: Transaction, _ msg: PeerMessage) throws(FSError) {
        defer { gate.leave() }
        defer { t.release() }
        var sent = false
        if t.entered == .live && gate.mode == .live {
            // An entry made in a directory this node holds in split brain belongs to this
            // node's copy of it, as an owed one does (`createsInSplitDirectory`): sent, the
            // peer refuses it as a conflict of its own (seed 984).
            if Self.created(by: msg) != nil, let dir = t.expect.first, isSplit(dir.stableID) || underSplitDirectory(dir.stableID) {
                try? journal.submit([.dropPeerOp(seq: t.seq)], wait: .queued)
                return
            }
            sent = true
            let sending = liveMessage(msg, t)
            switch channel.call(sending) {
            case .ok:
                try? journal.submit([.dropPeerOp(seq: t.seq)], wait: .queued)
                return
            case .refused(let e) where PeerRefusal(errno: e) == .storageFault:
                // Certainly not applied there: owed (not uncertain), and no later change may
                // overtake it, so the peer gets nothing live until catch-up replays it.
                sent = false
                let why = PeerRefusal.describe(e, "apply \(msg.type) of \(Self.describe(msg).debugDescription)")
                log.error("\(why)")
                markDegraded(why)
            case .refused(let e):
                settleLiveRefusal(e, t, msg, sending)
                return
            case .unreachable(let why):
                markDegraded(why)
            }
        }
        let owed = t.expect.isEmpty ? msg : .guarded(expect: t.expect, change: msg)
        var rows: [JournalOp] = [.peerOp(seq: t.seq, message: Self.encodeOp(owed), applied: true)]
        if sent { rows.append(.peerOpUncertain(seq: t.seq)) }
        do { try journal.submit(rows, wait: .durable) } catch {
            log.error("journal write of the peer's pending change failed: \(error)")
            throw FSError.io
        }
        gate.wakeCatchUp()
        // The peer turned out unreachable after the change was applied here: it is durable
        // and owed, but without the witness's lease it is not acknowledged (EROFS). Safe: the
        // client was told it failed, and its replay at the peer meets split-brain detection
        // (a name or file the lease holder changed meanwhile is kept in both versions).
        try permitApart()
    }

    /// A live change the peer refused (not for its disk): nothing more to send of it, but a
    /// rename still replaced an entry here, whose removal is owed on its own (guarded by what
    /// this node saw there), as catch-up does for a refused replay (`replayReplacedTarget`):
    /// else the peer keeps the entry only it still has (seed 1521).
    func settleLiveRefusal(_ e: Int32, _ t: Transaction, _ msg: PeerMessage, _ sending: PeerMessage) {
        if case let .rename(_, _, tp, tn, flags) = msg, !RenameFlags(rawValue: flags).contains(.exchange),
           let replaced = t.expect.first(where: { $0.path == Brick.join(tp, tn) && $0.stableID != Self.absentID }) {
            let removal = PeerMessage.guarded(expect: [replaced], change: .unlink(parentPath: tp, name: tn))
            // In the change's own place among the owed ones (its row becomes the removal).
            try? journal.submit([.peerOp(seq: t.seq, message: Self.encodeOp(removal), applied: true)], wait: .durable)
            gate.wakeCatchUp()
        } else {
            try? journal.submit([.dropPeerOp(seq: t.seq)], wait: .queued)
        }
        // An entry in split brain here, which the peer holds under another name
        // (ENOENT) or refuses as its own copy in the same split (EBADE): the change
        // is of this node's copy, listed already.
        if e == ENOENT, let id = t.expect.first?.stableID, isSplit(id) { return }
        // Refused as the peer's copy in a split brain: listed here already under the
        // subject the peer records, or listed now (on both, the peer skips its own).
        if e == splitBrainErrno, case let .entry(id) = Self.entryID(sending), isSplit(id) { return }
        // Guarded: the peer had removed that entry too.
        if e == ENOENT, case .guarded(_, .unlink) = sending { return }
        if e == ENOENT, case .guarded(_, .rmdir) = sending { return }
        recordSplitBrainOnBoth(Self.entryID(sending), path: Self.describe(msg),
                               reason: "the peer could not apply \(msg.type): \(String(cString: strerror(e))) (errno \(e)); the two namespaces differ here")
    }

    /// A live change goes with what this node saw at its names while those may differ on the
    /// peer: an entry is in split brain here (each node keeps its copy, seed 544), or the peer
    /// still owes changes it made apart (its rename onto a name this node changes now, not
    /// replayed yet, seed 1324). The bare change would rename, remove or change the peer's
    /// other entry. Otherwise the pair is in step and the names agree; the peer skips the check.
    func liveMessage(_ msg: PeerMessage, _ t: Transaction) -> PeerMessage {
        namesMayDiffer && !t.expect.isEmpty ? .guarded(expect: t.expect, change: msg) : msg
    }

    /// The id an expectation names for "no entry here": never allocated (ordinal byte 0xFF),
    /// so a receiver of an older release finds no such entry and refuses to replace another.
    static let absentID = UInt64.max

    /// The entries an owed change will remove, replace, change or create in at the peer, as
    /// this node sees them now: the replay is refused (a split brain, both kept) if the peer
    /// changed them meanwhile, instead of deleting a version this node never saw, or applying
    /// the change to whatever entry took the name since (the peer renamed or replaced it).
    func expectations(for m: PeerMessage) -> [EntryExpectation] {
        func seen(_ rel: String) -> EntryExpectation? {
            guard case let (st, id?)? = try? local.brick.statAndID(rel) else { return nil }
            // The content is compared only when the peer holds exactly this node's version (this
            // node owes it nothing of that file, not even a live stream): then a different hash
            // there means the peer's client changed it. A copy the peer is behind on differs
            // anyway, and is no conflict (this node sends it whole under its new name).
            var hash: [UInt8] = []
            if st.kind == .file, !isOwed(id), ((try? journal.peerFile(id)) ?? nil) == nil,
               let rec = try? journal.inode(id), !rec.dirty { hash = rec.hash ?? [] }
            return EntryExpectation(path: rel, stableID: id, xxh128: hash)
        }
        switch m {
        case let .unlink(p, n), let .rmdir(p, n):
            return seen(Brick.join(p, n)).map { [$0] } ?? []
        case let .rename(fp, fn, tp, tn, flags) where !RenameFlags(rawValue: flags).contains(.exchange):
            // No entry at the target: expected absent, so a replay does not replace an entry the
            // peer's client created there meanwhile.
            // And the directory it moves into, as a create expects its directory: where the
            // peer renamed that directory and made another of its name, the bare rename put the
            // entry into the other one (seed 1109: the file at two paths under one id, and its
            // later send refused there for good).
            let to = Brick.join(tp, tn)
            let into = tp.isEmpty ? nil : seen(tp).map(Self.idOnly)
            return [seen(Brick.join(fp, fn)), seen(to) ?? EntryExpectation(path: to, stableID: Self.absentID, xxh128: []), into].compactMap { $0 }
        case let .setattr(path, _) where !path.isEmpty, let .setxattr(path, _, _, _) where !path.isEmpty,
             let .removexattr(path, _) where !path.isEmpty:
            // The entry's id only. A mode, owner or time change composes with the peer's rewrite
            // of the file; a truncate's conflict with one is the peer's "changed apart" check.
            // (Its hash would also refuse the replay of a truncate the peer applied already,
            // its answer lost: seeds 217, 284.)
            return seen(path).map { [Self.idOnly($0)] } ?? []
        case let .create(p, _, _, _, _, _) where !p.isEmpty, let .mkdir(p, _, _, _, _, _) where !p.isEmpty,
             let .symlink(p, _, _, _, _, _) where !p.isEmpty, let .mknod(p, _, _, _, _, _, _) where !p.isEmpty:
            // The directory the entry goes into (the root is never renamed or replaced).
            return seen(p).map { [$0] } ?? []
        default:
            return []
        }
    }

    static func idOnly(_ e: EntryExpectation) -> EntryExpectation {
        EntryExpectation(path: e.path, stableID: e.stableID, xxh128: [])
    }

    /// The entry a create makes (nil for any other change).
    static func created(by m: PeerMessage) -> UInt64? {
        switch m.unguarded {
        case let .mkdir(_, _, _, _, _, id), let .create(_, _, _, _, _, id), let .symlink(_, _, _, _, _, id),
             let .mknod(_, _, _, _, _, _, id): return id
        default: return nil
        }
    }

    static func encodeOp(_ m: PeerMessage) -> [UInt8] {
        var b = ByteBuffer()
        b.writeInteger(m.type.rawValue)
        var p = m.encodePayload()
        b.writeBuffer(&p)
        return Array(b.readableBytesView)
    }

    public static func decodeOp(_ bytes: [UInt8]) throws -> PeerMessage {
        var b = ByteBuffer(bytes: bytes)
        guard let raw = b.readInteger(as: UInt16.self), let type = MessageType(rawValue: raw) else {
            throw FSError.invalid
        }
        return try PeerMessage.decode(type: type, payload: b)
    }

    public static func describe(_ m: PeerMessage) -> String {
        switch m.unguarded {
        case let .mkdir(p, n, _, _, _, _), let .create(p, n, _, _, _, _), let .symlink(p, n, _, _, _, _),
             let .unlink(p, n), let .rmdir(p, n), let .stageWhole(p, n, _, _, _, _, _), let .mknod(p, n, _, _, _, _, _):
            return Brick.join(p, n)
        case let .rename(fp, fn, tp, tn, _): return "\(Brick.join(fp, fn)) -> \(Brick.join(tp, tn))"
        case let .link(_, np, nn): return Brick.join(np, nn)
        case let .setattr(p, _), let .setxattr(p, _, _, _), let .removexattr(p, _), let .write(p, _, _, _),
             let .commit(p, _, _, _, _):
            return p
        default: return "\(m.type)"
        }
    }

    /// The entry a change's split brain is recorded for: the entry it creates or (guarded)
    /// expects, else its name. (A guarded create expects its directory: the subject is still
    /// the entry it creates.)
    static func entryID(_ m: PeerMessage) -> SplitSubject {
        if let id = created(by: m) { return .entry(id) }
        if case let .guarded(expect, _) = m, let first = expect.first { return .entry(first.stableID) }
        switch m {
        case let .mkdir(_, _, _, _, _, id), let .create(_, _, _, _, _, id), let .symlink(_, _, _, _, _, id),
             let .stageWhole(_, _, _, _, _, id, _), let .mknod(_, _, _, _, _, _, id): return .entry(id)
        default: return .name
        }
    }
}
