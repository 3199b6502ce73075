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

/// What a split brain is recorded for.
public enum SplitSubject: Sendable, Equatable, CustomStringConvertible {
    /// An entry both nodes hold under one stable id, in two versions.
    case entry(UInt64)
    /// A name the two nodes hold different entries under (or a change known by its path only):
    /// no one id describes it.
    case name

    /// As `noteSplit` carries it: id 0 for a name.
    public init(wireID: UInt64) { self = wireID == 0 ? .name : .entry(wireID) }
    public var wireID: UInt64 {
        if case .entry(let id) = self { return id }
        return 0
    }
    /// The journal's key: one row per entry, or per path for a name.
    func key(path: String) -> String {
        if case .entry(let id) = self { return "id:\(id)" }
        return "path:\(path)"
    }
    public var description: String {
        if case .entry(let id) = self { return "id \(id)" }
        return "by name"
    }
}

/// What this node owes the peer (files, in the journal and in memory) and the entries in split
/// brain; name locks and heal-send figures for the status.
extension ReplicatedVolume {
    public func recordSplitBrain(_ subject: SplitSubject, path: String, reason: String) {
        log.critical("SPLIT BRAIN: \(path.debugDescription) (\(subject)): \(reason); both copies are kept; see `twinfs status`")
        let id = subject.wireID
        var rows: [JournalOp] = [.splitBrain(key: subject.key(path: path), id: id, path: path, reason: reason)]
        if case .entry = subject { rows.append(.dropPeerFile(id: id, generation: .max)) }
        try? journal.submit(rows, wait: .durable)
        guard case .entry = subject else { return }
        state.with { s in
            s.split.insert(id)
            s.owed.remove(id)
            s.changedApart.remove(id)
        }
    }

    /// A split brain this node found from a refusal the peer does not know is one (a replayed
    /// or live change it could not apply, a whole-file send of a name it holds otherwise), or
    /// by refusing the peer's change itself (the EBADE answer can be lost): recorded here and
    /// told to the peer, so both nodes list it.
    func recordSplitBrainOnBoth(_ subject: SplitSubject, path: String, reason: String) {
        recordSplitBrain(subject, path: path, reason: reason)
        let r = String(decoding: Array(reason.utf8.prefix(PeerMessage.maxReasonBytes - 32)), as: UTF8.self)
        let note = PeerMessage.noteSplit(stableID: subject.wireID, path: path, reason: r)
        channel.start(note) { [self] outcome in
            guard case .unreachable = outcome else { return }
            // Lost with the link: owed (the peer takes it twice as once), so catch-up tells
            // the peer when it is back instead of the split being listed here only.
            try? journal.submit([.peerOp(seq: journal.nextPeerSeq(), message: Self.encodeOp(note), applied: true)], wait: .durable)
            gate.wakeCatchUp()
        }
    }

    /// File `id` must reach the peer in full; durable before the caller returns.
    func owe(_ id: UInt64, changedApart: Bool = false) throws(FSError) {
        let apart = changedApart || gate.mode != .live
        state.with { s in
            s.owed.insert(id)
            if apart { s.changedApart.insert(id) }
        }
        do { try journal.submit([.peerFile(id: id, owed: true)], wait: .durable) } catch { throw FSError.io }
        gate.wakeCatchUp()
    }

    public func isOwed(_ id: UInt64) -> Bool { state.with { $0.owed.contains(id) } }
    func changedWhileApart(_ id: UInt64) -> Bool { state.with { $0.changedApart.contains(id) } }
    var owesAnything: Bool { state.with { !$0.changedApart.isEmpty || !$0.split.isEmpty || !$0.owed.isEmpty } }

    /// Whether this node holds a version of file `id` the peer cannot have seen, so that a
    /// content change from the peer would replace it: changed while apart, in split brain, or
    /// owed whole while this node cannot send it (not live: a close acknowledged after the
    /// peer's disk refused its bytes leaves the file owed with the link up, seed 285).
    func holdsUnsentVersion(_ id: UInt64) -> Bool {
        changedWhileApart(id) || isSplit(id) || isOwed(id) && gate.mode != .live
    }
    public func isSplit(_ id: UInt64) -> Bool { state.with { $0.split.contains(id) } }

    /// Whether a name may hold another entry on the peer than here: an entry is in split brain
    /// here, or the peer still owes (or has not said whether it owes) namespace changes it
    /// made while apart.
    var namesMayDiffer: Bool { state.with { !$0.split.isEmpty || !$0.peerStateKnown || $0.peerOps > 0 } }

    /// Whether this node owes the peer a change of the same attributes of the same entry as
    /// `change` (a guarded setattr, setxattr or removexattr the peer replays): both nodes
    /// changed them apart, and applying each other's would swap them, leaving the two copies
    /// different with nothing listed (seed 365: a chmod on each node).
    func owesConflictingAttributeChange(_ id: UInt64, _ change: PeerMessage) -> Bool {
        guard let theirs = Self.attributes(of: change) else { return false }
        return owesAttributeChange(id, of: theirs)
    }

    /// Whether this node removed entry `id` (unlinked it, or replaced it by a rename) while the
    /// peer could not be told, and still owes the peer that removal: the peer's whole-file send
    /// of it, arriving first, would bring it back here, and the owed changes of the entry
    /// before the removal would then apply to the peer's copy alone (seed 3621: a's chmods,
    /// replayed after b's send, left the two copies' modes different). The peer changed a
    /// file this node removed: a split brain, the peer keeping its copy.
    func removedApart(_ id: UInt64) -> Bool {
        guard journalLacks(id) else { return false }
        return anyOwedGuarded { expect, change in
            guard let gone = Self.removed(by: change) else { return false }
            return expect.contains { $0.path == gone && $0.stableID == id }
        }
    }

    /// Whether `found` holds for one of the guarded changes this node owes the peer, in order.
    func anyOwedGuarded(_ found: (_ expect: [EntryExpectation], _ change: PeerMessage) -> Bool) -> Bool {
        var after: Int64 = 0
        while let rows = try? journal.peerOps(after: after, limit: 256), let last = rows.last {
            after = last.seq
            for r in rows {
                guard let m = try? Self.decodeOp(r.message), case let .guarded(expect, change) = m else { continue }
                if found(expect, change) { return true }
            }
        }
        return false
    }

    /// Whether the journal holds no entry `id` (never had it, or it was removed); a journal
    /// that cannot be read counts as lacking it, as every caller did before.
    func journalLacks(_ id: UInt64) -> Bool { ((try? journal.inode(id)) ?? nil) == nil }

    /// Whether this node owes the peer a change of any of `attributes` (as `attributes(of:)`
    /// names them) of entry `id`.
    func owesAttributeChange(_ id: UInt64, of attributes: Set<String>) -> Bool {
        anyOwedGuarded { expect, mine in
            guard expect.first?.stableID == id, let a = Self.attributes(of: mine) else { return false }
            return !a.isDisjoint(with: attributes)
        }
    }

    /// The attributes an attribute change sets ("mode", "owner", "times", "xattr:NAME"); nil
    /// for any other change. A size is content, settled by the "changed apart" check.
    static func attributes(of m: PeerMessage) -> Set<String>? {
        switch m {
        case let .setattr(_, c):
            var out: Set<String> = []
            if c.mode != nil { out.insert("mode") }
            if c.uid != nil || c.gid != nil { out.insert("owner") }
            if c.size == nil && (c.atimeNs != nil || c.mtimeNs != nil) { out.insert("times") }
            return out
        case let .setxattr(_, name, _, _), let .removexattr(_, name):
            return ["xattr:" + name]
        default:
            return nil
        }
    }

    /// Whether a directory above entry `id` is in split brain here: the entry belongs to this
    /// node's copy of it, and the peer's directory of that name is another one.
    func underSplitDirectory(_ id: UInt64) -> Bool {
        guard state.with({ !$0.split.isEmpty }), let path = (try? journal.path(of: id)) ?? nil else { return false }
        var dir = Self.split(path).0
        while !dir.isEmpty {
            if let d = local.brick.readID(rel: dir), isSplit(d) { return true }
            dir = Self.split(dir).0
        }
        return false
    }

    /// File `id` must reach the peer whole (owed, durable).
    public func oweFile(_ id: UInt64) throws(FSError) { try owe(id) }

    public func gateWake() { gate.wakeCatchUp() }

    /// The peer told us it still owes this node changes or files.
    public var peerOwesUs: Bool { state.with { $0.peerOps + $0.peerFiles > 0 } }

    /// As `peerOwesUs`, and true too while the peer has not said yet (or the link is down).
    public var peerOwesUsOrUnknown: Bool { !channel.isUp || state.with { !$0.peerStateKnown || $0.peerOps + $0.peerFiles > 0 } }

    /// Takes the cluster name lock of (parentID, name) like a namespace change does; returns the release.
    public func withNameLock(parentID: UInt64, name: String) -> () -> Void {
        (try? takeLocks([Self.key(parentID, name)], live: gate.mode == .live)) ?? {}
    }

    /// Files this node sent whole in the last 20 s (catch-up, heal sends): the heal rate.
    public var healSendStats: (files: Int64, bytesPerSecond: Double, filesPerSecond: Double) {
        sendSamples.with { s in
            let now = ContinuousClock.now
            s.removeAll { now - $0.0 > .seconds(20) }
            guard let first = s.first else { return (0, 0, 0) }
            let span = max(1.0, Double((now - first.0).components.seconds))
            return (Int64(s.count), Double(s.reduce(0) { $0 + $1.1 }) / span, Double(s.count) / span)
        }
    }
}
