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

/// The replicating layer of a two-node volume (GlusterFS's AFR, purpose-built): wraps the
/// local volume behind the same `VolumeOperations` protocol the FUSE adapter calls.
///
/// - Live (peer up, nothing owed): a namespace change takes its cluster name locks, is written
///   as a tentative row of `peer_ops` (so a crash cannot forget to tell the peer), applied to
///   this brick, sent to the peer and returns once the peer applied it. File data streams to
///   the peer as it is written; close/fsync sends a commit (size + XXH3-128) that the peer
///   checks against its own hash of its own disk, while the local fsync runs.
/// - Degraded (peer down, unreachable or frozen past the timeout): every change completes
///   locally and what the peer must receive is made durable in the journal before the call
///   returns: the change itself (`peer_ops`) or the file (`peer_files`).
/// - Catching up: the catch-up thread (`CatchUp`) replays what is owed, then switches to live.
public final class ReplicatedVolume: VolumeOperations, @unchecked Sendable {
    public enum Mode: String, Sendable { case live, degraded, catchingUp = "catching-up" }

    public let local: LocalVolume
    public let journal: Journal
    public let channel: PeerChannel
    public let ordinal: UInt8
    public let locks = NameLocks()
    let log: Logger
    let lease: Duration
    // Lock order (outermost first; no peer round trip is made while holding any of these):
    //   yieldLock -> state, and the applier's and the journal's own locks (through localApply)
    //   gate's condition -> the journal's (switchToLive's `ready` reads the backlog)
    //   pushCond -> pushLocks
    //   handles -> a RepHandle's cond (rename finds the open files under a name)
    //   state, pushLocks, hooksBox, sendSamples, currency, localApplyBox: leaves, held for
    //   one dictionary or field access. Cluster name locks (`locks`) are logical locks held
    //   across a change and its peer call; they block only changes of the same names.
    /// Guards its mode, the changes inside it and catch-up's wake-ups (see `ModeGate`).
    let gate = ModeGate()
    /// Guards `SharedState` (owed, split, yielding, the peer's catch-up report). Leaf.
    let state: Locked<SharedState>
    /// Guards the open writable handles by FUSE handle number. Before a RepHandle's cond.
    private let handles = Locked<[UInt64: RepHandle]>([:])
    let budget = ByteBudget(limit: 64 << 20)
    /// Guards the ids whose whole-file push runs now. Taken inside `pushCond`.
    private let pushLocks = Locked<Set<UInt64>>([])
    /// Guards `writers`; a file's first write waits on it while a whole-file push of that file
    /// runs (a push refuses, rather than waits, while a handle writes). Before `pushLocks`.
    let pushCond = NSCondition()
    /// Handles writing each file (first write to commit), under `pushCond`.
    private var writers: [UInt64: Int] = [:]
    /// The healer's on-demand side (set once at start; nil: nothing to heal on demand).
    let hooksBox = Locked<(any HealHooks)?>(nil)
    let sendSamples = Locked<[(ContinuousClock.Instant, Int64)]>([])
    /// Whether this node may serve (see `DataCurrency`). Leaf.
    let currency = Locked(CurrencyState())
    public var healHooks: (any HealHooks)? {
        get { hooksBox.with { $0 } }
        set { hooksBox.with { $0 = newValue } }
    }
    /// Applies a change to this node alone, with the kernel-cache invalidations a change from
    /// the peer gets (the peer service's `applyHealed`; set once at start).
    let localApplyBox = Locked<(@Sendable (PeerMessage) -> PeerMessage)?>(nil)
    public var localApply: (@Sendable (PeerMessage) -> PeerMessage)? {
        get { localApplyBox.with { $0 } }
        set { localApplyBox.with { $0 = newValue } }
    }

    struct YieldCandidate: Sendable {
        var rel: String
        var size: Int64
        var mtimeNs: Int64
        var ctimeNs: Int64
    }
    /// Serialises giving up names with each other and with local opens for writing. Outermost:
    /// taken before `state` and before the local apply (applier and journal locks).
    let yieldLock = NSLock()

    /// What a crash left, as `settleCrashLeftovers` found it.
    struct CrashLeftovers {
        var checked = 0
        /// Creates that were under way (the client never got an answer): id -> name.
        var unansweredCreates: [UInt64: String] = [:]
        /// Interrupted files whose bytes are safe in quarantine.
        var quarantined: Set<UInt64> = []
    }

    struct SharedState {
        var owed: Set<UInt64> = []
        /// Owed because they changed while the peer could not be told (not a failed repair while
        /// connected): the peer's copy of one of these must never overwrite this node's.
        var changedApart: Set<UInt64> = []
        var split: Set<UInt64> = []
        /// Files this node made just before it stopped whose creation or content no client was
        /// ever told of (see `yieldName`), with their size and mtime then.
        var yielding: [UInt64: YieldCandidate] = [:]
        /// Ids that gave up their name (id -> the name), so a second caller does not unlink again.
        var yielded: [UInt64: String] = [:]
        /// What the peer reported of its own catch-up towards this node.
        var peerOps: UInt64 = 0
        var peerFiles: UInt64 = 0
        var peerStateKnown = false
        var pulled: Set<UInt64> = []
        var lastLinkError = ""
    }

    public init(local: LocalVolume, channel: PeerChannel, ordinal: UInt8, logger: Logger) throws(FSError) {
        self.local = local
        journal = local.journal
        self.channel = channel
        self.ordinal = ordinal
        log = logger
        lease = channel.timeout * 2
        var s = SharedState()
        do {
            s.split = try journal.splitBrainIDs()
            // Owed whole (changed while the peer could not be told): this node's copy is newer.
            // Streaming (written live when this node stopped): the peer got every byte that was
            // acknowledged, and may have a newer copy since (a client that retried there).
            var streaming: Set<UInt64> = []
            for f in try journal.peerFiles(limit: Int.max, includeStreaming: true) {
                if f.owed { s.owed.insert(f.id) } else { streaming.insert(f.id) }
            }
            s.changedApart = s.owed
            let left = try Self.settleCrashLeftovers(local: local, interrupted: streaming, log: logger)
            s.yielding = Self.yieldCandidates(local: local, interrupted: streaming, left: left, excluded: s.owed.union(s.split))
            state = Locked(s)
        } catch let e as FSError {
            throw e
        } catch {
            throw FSError.io
        }
    }

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
            return exists(Brick.join(tp, tn)) && (flags & 2 != 0 || !exists(Brick.join(fp, fn)))
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

    // MARK: - Mode

    public var mode: Mode { gate.mode }

    /// The peer stopped answering: stop sending live, owe it everything from now on.
    func markDegraded(_ why: String) {
        if gate.setDegraded() {
            log.warning("peer unreachable (\(why)); serving alone and recording what it must receive")
            // What the peer owes us is another direction: kept until the peer says otherwise.
            state.with { $0.lastLinkError = why }
        }
    }

    public struct Report: Sendable {
        public var mode: Mode
        public var link: String
        public var backlog: PeerBacklog
        public var splitBrain: [SplitBrainRow]
        public var lastLinkError: String
        public var peerCatchingUpOps: UInt64
        public var peerCatchingUpFiles: UInt64
    }

    public func report() throws(FSError) -> Report {
        do {
            let b = try journal.peerBacklog()
            let sb = try journal.splitBrains(limit: 100)
            let s = state.with { $0 }
            return Report(mode: mode, link: channel.linkDescription, backlog: b, splitBrain: sb,
                          lastLinkError: s.lastLinkError, peerCatchingUpOps: s.peerOps,
                          peerCatchingUpFiles: s.peerFiles)
        } catch {
            throw FSError.io
        }
    }

    // MARK: - Peer's catch-up towards us (stale reads)

    func peerReportedCatchUp(ops: UInt64, files: UInt64) {
        notePeerReached()
        state.with { s in
            s.peerOps = ops
            s.peerFiles = files
            s.peerStateKnown = true
            if files == 0 { s.pulled = [] }
        }
    }

    /// Until the peer told us what it owes us (or the timeout passed), this node's view may be stale.
    public func waitForPeerState(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if state.with({ $0.peerStateKnown }) { return true }
            usleep(10_000)
        }
        return false
    }

    /// While the peer replays namespace changes this node missed, lookups wait (bounded) so
    /// that a node that was down does not answer from its stale directories.
    func awaitPeerNamespace() {
        let deadline = ContinuousClock.now + .seconds(10)
        while state.with({ $0.peerOps > 0 }) && channel.isUp && ContinuousClock.now < deadline {
            usleep(5_000)
        }
    }

    /// Before serving a file the peer may hold a newer copy of, ask for it.
    func pullIfNeeded(_ id: UInt64) {
        let need = state.with { $0.peerFiles > 0 && !$0.pulled.contains(id) }
        guard need, channel.isUp else { return }
        if case .ok = channel.call(.pull(stableID: id)) {
            state.with { _ = $0.pulled.insert(id) }
        }
    }

    func checkNotSplit(_ id: UInt64) throws(FSError) {
        if state.with({ $0.split.contains(id) }) {
            log.error("file id \(id) is in split brain (changed on both nodes while apart); refusing to serve either copy until an admin resolves it")
            throw FSError.io
        }
    }

    // MARK: - Split brain, owed files

    public func recordSplitBrain(id: UInt64, path: String, reason: String) {
        log.critical("SPLIT BRAIN: \(path.debugDescription) (id \(id)): \(reason); both copies are kept; see `twinfs status`")
        let key = id != 0 ? "id:\(id)" : "path:\(path)"
        try? journal.submit([.splitBrain(key: key, id: id, path: path, reason: reason),
                             .dropPeerFile(id: id, generation: .max)], wait: .durable)
        state.with { s in
            if id != 0 { s.split.insert(id) }
            s.owed.remove(id)
            s.changedApart.remove(id)
        }
    }

    /// A split brain this node found from a refusal the peer does not know is one (a replayed
    /// or live change it could not apply, a whole-file send of a name it holds otherwise):
    /// recorded here and told to the peer, so both nodes list it.
    func recordSplitBrainOnBoth(id: UInt64, path: String, reason: String) {
        recordSplitBrain(id: id, path: path, reason: reason)
        let r = String(decoding: Array(reason.utf8.prefix(PeerMessage.maxReasonBytes - 32)), as: UTF8.self)
        channel.start(.noteSplit(stableID: id, path: path, reason: r)) { _ in }
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
    var owesAnything: Bool { state.with { !$0.changedApart.isEmpty || !$0.split.isEmpty } }
    public func isSplit(_ id: UInt64) -> Bool { state.with { $0.split.contains(id) } }

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

    // MARK: - Namespace replication

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

    /// One namespace change: tentative row, local change, peer (live) or durable row (not live).
    func replicate<R>(keys: [String], pre: PeerMessage,
                      _ apply: () throws(FSError) -> R, message: (R) -> PeerMessage) throws(FSError) -> R {
        let entered = gate.enter()
        defer { gate.leave() }
        let release = try takeLocks(keys, live: entered == .live)
        defer { release() }
        // What a late replay must still find at the peer (read before the change moves it).
        let expect = entered == .live ? [] : expectations(for: pre)
        let seq = journal.nextPeerSeq()
        do { try journal.submit([.peerOp(seq: seq, message: Self.encodeOp(pre), applied: false)], wait: .written) } catch {
            throw FSError.io
        }
        let r: R
        do throws(FSError) { r = try apply() } catch {
            try? journal.submit([.dropPeerOp(seq: seq)], wait: .queued)
            throw error
        }
        let msg = message(r)
        var sent = false
        if entered == .live && gate.mode == .live {
            sent = true
            switch channel.call(msg) {
            case .ok:
                try? journal.submit([.dropPeerOp(seq: seq)], wait: .queued)
                return r
            case .refused(let e) where PeerRefusal(errno: e) == .storageFault:
                // Certainly not applied there: owed (not uncertain), and no later change may
                // overtake it, so the peer gets nothing live until catch-up replays it.
                sent = false
                let why = PeerRefusal.describe(e, "apply \(msg.type) of \(Self.describe(msg).debugDescription)")
                log.error("\(why)")
                markDegraded(why)
            case .refused(let e):
                try? journal.submit([.dropPeerOp(seq: seq)], wait: .queued)
                recordSplitBrainOnBoth(id: Self.entryID(msg), path: Self.describe(msg),
                                 reason: "the peer could not apply \(msg.type): \(String(cString: strerror(e))) (errno \(e)); the two namespaces differ here")
                return r
            case .unreachable(let why):
                markDegraded(why)
            }
        }
        let owed = expect.isEmpty ? msg : .guarded(expect: expect, change: msg)
        var rows: [JournalOp] = [.peerOp(seq: seq, message: Self.encodeOp(owed), applied: true)]
        if sent { rows.append(.peerOpUncertain(seq: seq)) }
        do { try journal.submit(rows, wait: .durable) } catch {
            log.error("journal write of the peer's pending change failed: \(error)")
            throw FSError.io
        }
        gate.wakeCatchUp()
        return r
    }

    /// The entries an owed unlink or rename will remove or replace at the peer, as this node
    /// sees them now: the replay is refused (a split brain, both kept) if the peer changed them
    /// meanwhile, instead of deleting a version this node never saw.
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
        case let .unlink(p, n):
            return seen(Brick.join(p, n)).map { [$0] } ?? []
        case let .rename(fp, fn, tp, tn, flags) where flags & 2 == 0:
            return [seen(Brick.join(fp, fn)), seen(Brick.join(tp, tn))].compactMap { $0 }
        default:
            return []
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
             let .unlink(p, n), let .rmdir(p, n), let .stageWhole(p, n, _, _, _, _, _):
            return Brick.join(p, n)
        case let .rename(fp, fn, tp, tn, _): return "\(Brick.join(fp, fn)) -> \(Brick.join(tp, tn))"
        case let .link(_, np, nn): return Brick.join(np, nn)
        case let .setattr(p, _), let .setxattr(p, _, _, _), let .removexattr(p, _), let .write(p, _, _, _),
             let .commit(p, _, _, _, _):
            return p
        default: return "\(m.type)"
        }
    }

    static func entryID(_ m: PeerMessage) -> UInt64 {
        if case let .guarded(expect, _) = m, let first = expect.first { return first.stableID }
        switch m {
        case let .mkdir(_, _, _, _, _, id), let .create(_, _, _, _, _, id), let .symlink(_, _, _, _, _, id),
             let .stageWhole(_, _, _, _, _, id, _): return id
        default: return 0
        }
    }

    // MARK: - VolumeOperations: metadata

    public func lookup(parent: NodeRef, name: String) throws(FSError) -> stat {
        try checkCurrent()
        awaitPeerNamespace()
        let hooks = healHooks
        try hooks?.prepareDirectory(path: parent.path)
        var st = try local.lookup(parent: parent, name: name)
        if st.kind == .file && state.with({ $0.peerFiles > 0 }) {
            pullIfNeeded(UInt64(st.st_ino))
            st = try local.lookup(parent: parent, name: name)
        }
        return Self.awaited(st, hooks)
    }

    /// A placeholder still awaiting its content shows the size it will have.
    static func awaited(_ st: stat, _ hooks: (any HealHooks)?) -> stat {
        guard let h = hooks, st.kind == .file, let size = h.awaitedSize(id: UInt64(st.st_ino)) else { return st }
        var s = st
        s.st_size = Int(size)
        s.st_blocks = Int((size + 511) / 512)
        return s
    }

    public func getattr(_ node: NodeRef, handle: UInt64?) throws(FSError) -> stat {
        try checkCurrent()
        return Self.awaited(try local.getattr(node, handle: handle), handle == nil ? healHooks : nil)
    }

    /// Before a namespace change in `dirs`: while rebuilding, their entries come from the peer first.
    func prepare(_ dirs: String...) throws(FSError) {
        guard let h = healHooks else { return }
        for d in dirs { try h.prepareDirectory(path: d) }
    }

    public func setattr(_ node: NodeRef, handle: UInt64?, changes: AttrChanges) throws(FSError) -> stat {
        try checkCurrent()
        if let size = changes.size {
            if size == 0 { healHooks?.replacedLocally(id: node.id) }
            try healHooks?.prepareFile(id: node.id)
            drainWrites(of: node.id)
            // A truncate through an open handle changes the content like a write: the close
            // must commit it on the peer too (the peer applies it through its open copy,
            // which stays dirty until that commit). Seen with smbd's SET_INFO EndOfFile.
            for rh in handles.with({ $0.values.filter { $0.id == node.id } }) { markTouched(rh) }
        }
        func update(_ atimeNow: Int64, _ mtimeNow: Int64) -> PeerMessage {
            func ns(_ t: AttrChanges.Time?, _ now: Int64) -> Int64? {
                switch t {
                case .none: return nil
                case .now: return now
                case .at(let ts): return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
                }
            }
            return .setattr(path: node.path, changes: AttrUpdate(
                mode: changes.mode.map { UInt32($0) }, uid: changes.uid.map { UInt32($0) }, gid: changes.gid.map { UInt32($0) },
                size: changes.size, atimeNs: ns(changes.atime, atimeNow), mtimeNs: ns(changes.mtime, mtimeNow)))
        }
        // The tentative row carries the change itself (times "now" as of before it), so that
        // a crash between the local change and the peer's answer replays it, not a no-op.
        let before = Int64(Date().timeIntervalSince1970 * 1e9)
        return try replicate(keys: [], pre: update(before, before)) { () throws(FSError) -> stat in
            try local.setattr(node, handle: handle, changes: changes)
        } message: { st in
            update(Int64(st.st_atim.tv_sec) * 1_000_000_000 + Int64(st.st_atim.tv_nsec), st.mtimeNs)
        }
    }

    public func readlink(_ node: NodeRef) throws(FSError) -> String {
        try checkCurrent()
        return try local.readlink(node)
    }

    public func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        return try replicate(keys: [Self.key(parent.id, name)],
                             pre: .mkdir(parentPath: parent.path, name: name, mode: UInt32(mode), uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> stat in
            try local.mkdir(parent: parent, name: name, mode: mode, ctx: ctx, id: id)
        } message: { st in
            .mkdir(parentPath: parent.path, name: name, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid, stableID: id)
        }
    }

    public func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        return try replicate(keys: [Self.key(parent.id, name)],
                             pre: .symlink(parentPath: parent.path, name: name, target: target, uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> stat in
            try local.symlink(parent: parent, name: name, target: target, ctx: ctx, id: id)
        } message: { st in
            .symlink(parentPath: parent.path, name: name, target: target, uid: st.st_uid, gid: st.st_gid, stableID: id)
        }
    }

    public func link(_ node: NodeRef, newParent: NodeRef, newName: String) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(newParent.path)
        let m = PeerMessage.link(path: node.path, newParent: newParent.path, newName: newName)
        return try replicate(keys: [Self.key(newParent.id, newName)], pre: m) { () throws(FSError) -> stat in
            try local.link(node, newParent: newParent, newName: newName)
        } message: { _ in m }
    }

    public func unlink(parent: NodeRef, name: String) throws(FSError) {
        try checkCurrent()
        try prepare(parent.path)
        let m = PeerMessage.unlink(parentPath: parent.path, name: name)
        try replicate(keys: [Self.key(parent.id, name)], pre: m) { () throws(FSError) in
            try local.unlink(parent: parent, name: name)
        } message: { _ in m }
    }

    public func rmdir(parent: NodeRef, name: String) throws(FSError) {
        try checkCurrent()
        try prepare(parent.path)
        let m = PeerMessage.rmdir(parentPath: parent.path, name: name)
        try replicate(keys: [Self.key(parent.id, name)], pre: m) { () throws(FSError) in
            try local.rmdir(parent: parent, name: name)
        } message: { _ in m }
    }

    public func rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError) {
        try checkCurrent()
        try prepare(parent.path, newParent.path)
        // Writes carry the path their file had: those under the old name are sent and
        // answered before the name changes (messages are not ordered with each other).
        let from = Brick.join(parent.path, name), to = Brick.join(newParent.path, newName)
        let exchange = flags & 2 != 0
        let moved = handles.with { $0.values.filter { rh in
            rh.with { Self.renamed($0.path, from: from, to: to, exchange: exchange) != nil }
        } }
        for rh in moved { drain(rh) }
        let m = PeerMessage.rename(fromParent: parent.path, fromName: name, toParent: newParent.path, toName: newName, flags: flags)
        let keys = [Self.key(parent.id, name), Self.key(newParent.id, newName)].sorted()
        try replicate(keys: keys, pre: m) { () throws(FSError) in
            try local.rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags)
        } message: { _ in m }
        // Open files keep being written under their new names (a later write or commit sent
        // under the old one would find nothing there on the peer).
        for rh in moved {
            rh.with { h in if let p = Self.renamed(h.path, from: from, to: to, exchange: exchange) { h.path = p } }
        }
    }

    /// Where `path` is after renaming `from` to `to` (or exchanging them), nil if unaffected.
    /// Names are compared as bytes, as the brick does (Swift's `==` would take two Unicode
    /// spellings of one name for the same).
    static func renamed(_ path: String, from: String, to: String, exchange: Bool) -> String? {
        func under(_ p: String, _ dir: String) -> String? {
            let pb = Array(p.utf8), db = Array(dir.utf8)
            if pb == db { return "" }
            guard pb.count > db.count, pb[db.count] == UInt8(ascii: "/"), pb.starts(with: db) else { return nil }
            return String(decoding: pb[db.count...], as: UTF8.self)
        }
        if let rest = under(path, from) { return to + rest }
        if exchange, let rest = under(path, to) { return from + rest }
        return nil
    }

    // MARK: - Files

    public func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext) throws(FSError) -> (stat, UInt64) {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        let path = Brick.join(parent.path, name)
        let (st, h) = try replicate(keys: [Self.key(parent.id, name)],
                                    pre: .create(parentPath: parent.path, name: name, mode: UInt32(mode), uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> (stat, UInt64) in
            try local.create(parent: parent, name: name, mode: mode, flags: flags, ctx: ctx, id: id)
        } message: { r in
            .create(parentPath: parent.path, name: name, mode: UInt32(r.0.st_mode), uid: r.0.st_uid, gid: r.0.st_gid, stableID: id)
        }
        let rh = RepHandle(id: id, path: path)
        // The peer created the file (live) or owes it as a whole (not live).
        rh.with { $0.live = gate.mode == .live }
        handles.with { $0[h] = rh }
        // New content even if nothing is written: the close commits it on the peer, whose
        // copy is open (and dirty) until then.
        markTouched(rh)
        return (st, h)
    }

    public func open(_ node: NodeRef, flags: Int32) throws(FSError) -> UInt64 {
        try checkCurrent()
        try checkNotSplit(node.id)
        // A truncating open replaces whatever the file held: an incomplete copy the peer had
        // sent (a client retrying here after the sender died) is not waited for.
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY { healHooks?.replacedLocally(id: node.id) }
        try healHooks?.prepareFile(id: node.id)
        pullIfNeeded(node.id)
        try checkNotSplit(node.id)
        let writable = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if writable { keepName(node.id) }
        let h = try local.open(node, flags: flags)
        if writable {
            let rh = RepHandle(id: node.id, path: node.path)
            let live = gate.mode == .live
            rh.with { $0.live = live }
            handles.with { $0[h] = rh }
            if flags & O_TRUNC != 0 {
                markTouched(rh)
                // Writes gathered on other handles must not reach the peer after its truncate.
                drainWrites(of: node.id)
                if live {
                    switch channel.call(.setattr(path: node.path, changes: AttrUpdate(size: 0))) {
                    case .ok: break
                    case .refused: rh.with { $0.broken = true }
                    case .unreachable(let why): markDegraded(why); rh.with { $0.live = false }
                    }
                } else {
                    rh.with { $0.broken = true; $0.apart = true }
                }
            }
        }
        return h
    }

    public func read(handle: UInt64, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        try local.read(handle: handle, offset: offset, into: buffer)
    }

    /// The first write since the last commit: waits while a whole-file push of this file runs
    /// (its old bytes must not land after new ones), then counts this handle as writing, so
    /// that no push starts until its commit.
    private func markTouched(_ rh: RepHandle) {
        let first = rh.with { h -> Bool in
            defer { h.touched = true }
            return !h.touched
        }
        guard first else { return }
        pushCond.lock()
        while pushLocks.with({ $0.contains(rh.id) }) { pushCond.wait() }
        writers[rh.id, default: 0] += 1
        pushCond.unlock()
        // Before the first byte: a crash from here on leaves the file owed to the peer.
        try? journal.submit([.peerFile(id: rh.id, owed: false)], wait: .queued)
    }

    private func doneWriting(_ id: UInt64) {
        pushCond.lock()
        if let n = writers[id] { writers[id] = n > 1 ? n - 1 : nil }
        pushCond.broadcast()
        pushCond.unlock()
    }

    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        guard let rh = handles.with({ $0[handle] }) else { return try local.write(handle: handle, offset: offset, data: data) }
        healHooks?.noteIngest(id: 0)
        markTouched(rh)
        let n = try local.write(handle: handle, offset: offset, data: data)
        guard n > 0 else { return n }
        let liveNow = gate.mode == .live
        let bytes = UnsafeRawBufferPointer(rebasing: data[0..<n])
        // Small writes (Orthanc writes 4 KiB at a time) are gathered into one message per
        // `coalesceLimit` bytes: one peer request instead of 32. Big ones go as they are.
        enum Plan { case none, direct, chunks([(Int64, [UInt8])]) }
        let plan = rh.with { h -> Plan in
            h.writes &+= 1
            guard h.canStream(liveNow: liveNow) else { return .none }
            var out: [(Int64, [UInt8])] = []
            if !h.pending.isEmpty && (h.pendingOffset + Int64(h.pending.count) != offset || h.pending.count + n > Self.coalesceLimit) {
                out.append((h.pendingOffset, h.pending))
                h.pending = []
            }
            if h.pending.isEmpty && n >= Self.coalesceLimit {
                h.inFlight += out.count + 1
                return out.isEmpty ? .direct : .chunks(out + [(offset, Array(bytes))])
            }
            if h.pending.isEmpty {
                h.pendingOffset = offset
                h.pending.reserveCapacity(Self.coalesceLimit)
            }
            h.pending.append(contentsOf: bytes)
            if h.pending.count >= Self.coalesceLimit {
                out.append((h.pendingOffset, h.pending))
                h.pending = []
            }
            h.inFlight += out.count
            return .chunks(out)
        }
        switch plan {
        case .none: break
        case .direct: send(rh, offset: offset, ByteBuffer(bytes: bytes))
        case .chunks(let cs): for (o, b) in cs { send(rh, offset: o, ByteBuffer(bytes: b)) }
        }
        return n
    }

    /// Gathered small writes go out at most this big.
    static let coalesceLimit = 128 << 10

    /// Streams one write to the peer (counted in `inFlight` by the caller).
    private func send(_ rh: RepHandle, offset: Int64, _ buf: ByteBuffer) {
        let n = buf.readableBytes
        budget.acquire(n)
        channel.start(.write(path: rh.with { $0.path }, stableID: rh.id, offset: offset, data: buf)) { [weak self] outcome in
            self?.budget.release(n)
            rh.with { h in
                h.inFlight -= 1
                if !outcome.isOK { h.broken = true }
            }
            rh.cond.broadcast()
            if case .unreachable(let why) = outcome { self?.markDegraded(why) }
        }
    }

    /// Sends the handle's gathered writes, then waits until the peer answered every write.
    func drain(_ rh: RepHandle) {
        let liveNow = gate.mode == .live
        let chunk = rh.with { h -> (Int64, [UInt8])? in
            guard !h.pending.isEmpty, h.canStream(liveNow: liveNow) else { return nil }
            defer { h.pending = [] }
            h.inFlight += 1
            return (h.pendingOffset, h.pending)
        }
        if let (o, b) = chunk { send(rh, offset: o, ByteBuffer(bytes: b)) }
        rh.drain()
    }

    func drainWrites(of id: UInt64) {
        for rh in handles.with({ $0.values.filter { $0.id == id } }) { drain(rh) }
    }

    /// Drops the file's streaming or owed row up to `generation` (queued unless it was owed:
    /// then the in-memory sets follow the journal).
    private func settle(_ id: UInt64, generation: Int64) {
        if isOwed(id) {
            settledChecked(id, generation: generation)
        } else {
            try? journal.submit([.dropPeerFile(id: id, generation: generation)], wait: .queued)
        }
    }

    /// close()/fsync(): the local commit and the peer's commit, in parallel when the hash is
    /// known up front. Returns once both disks have the bytes, or the peer is owed the file.
    private func commit(handle: UInt64, _ localCommit: () throws(FSError) -> Void) throws(FSError) {
        guard let rh = handles.with({ $0[handle] }), rh.with({ $0.touched }) else { return try localCommit() }
        // Every handle's gathered writes, not only this one's: the commit covers the whole file.
        drainWrites(of: rh.id)
        let (live, broken, apart, path, seen) = rh.with { h -> (Bool, Bool, Bool, String, UInt64) in
            h.touched = false
            return (h.live, h.broken, h.apart, h.path, h.writes)
        }
        var writing = true
        defer { if writing { doneWriting(rh.id) } }
        // A write through this handle on another thread that raced this commit may not be
        // covered by it: the handle counts as written again, so the next commit settles it.
        defer { if rh.with({ $0.writes != seen }) { markTouched(rh) } }
        // Marks made after this point (another handle, a later write) are newer and stay. Our
        // own mark may still be queued: a fresh row starts at generation 1; an owed row is
        // read again once the queue is written.
        var generation: Int64 = 1
        if let row = (try? journal.peerFile(rh.id)) ?? nil {
            generation = row.generation
            if row.owed {
                try? journal.submit([], wait: .written)
                generation = ((try? journal.peerFile(rh.id)) ?? nil)?.generation ?? generation
            }
        }
        guard live, !apart, gate.mode == .live else {
            try localCommit()
            try owe(rh.id, changedApart: apart)
            return
        }
        // The peer's copy cannot be brought up to date by a commit: the whole file goes now,
        // so that this close or fsync, too, returns with the bytes on both disks.
        func sendWhole() throws(FSError) {
            doneWriting(rh.id)
            writing = false
            switch pushFile(rh.id) {
            case .gone where (try? journal.path(of: rh.id))?.isEmpty == false:
                // Renamed while it was being sent: still here, so still owed.
                try owe(rh.id)
            case .ok, .gone:
                settle(rh.id, generation: generation)
                // The peer holds the file as it is: this handle's next writes stream again,
                // unless one ran meanwhile (the push may have missed it).
                rh.with { if $0.writes == seen { $0.broken = false } }
            case .unreachable: try owe(rh.id)
            case .splitBrain: break
            case .failed(let why), .badSource(let why):
                log.error("could not bring the peer's copy of \(path.debugDescription) up to date: \(why); it stays owed")
                try owe(rh.id)
            }
        }
        // A write or truncate the peer did not apply (a fallocate, which has no message): the
        // commit cannot settle it.
        if broken {
            try localCommit()
            log.notice("\(path.debugDescription): a change did not stream to the peer; sending the whole file")
            return try sendWhole()
        }
        var pending: PendingCall?
        if let p = local.contentPreview(handle: handle) {
            pending = channel.start(.commit(path: path, stableID: rh.id, size: p.size, xxh128: p.hash, mtimeNs: p.mtimeNs))
        }
        do throws(FSError) { try localCommit() } catch {
            _ = pending?.wait()
            rh.with { $0.broken = true }
            throw error
        }
        if pending == nil {
            guard let rec = try? journal.inode(rh.id), let hash = rec.hash else { try owe(rh.id); return }
            pending = channel.start(.commit(path: path, stableID: rh.id, size: rec.size, xxh128: hash, mtimeNs: rec.mtimeNs))
        }
        switch pending!.wait() {
        case .ok:
            settle(rh.id, generation: generation)
        case .unreachable(let why):
            markDegraded(why)
            rh.with { $0.live = false }
            try owe(rh.id)
        case .refused(let e) where e == splitBrainErrno:
            recordSplitBrain(id: rh.id, path: path, reason: "the peer changed this file too while the nodes were apart")
        case .refused(let e):
            // The peer's bytes differ (a lost write, or writers on both nodes): send the whole file.
            log.warning("peer refused the commit of \(path.debugDescription) (errno \(e)); sending the whole file")
            try sendWhole()
        }
    }

    public func flush(handle: UInt64) throws(FSError) {
        try commit(handle: handle) { () throws(FSError) in try local.flush(handle: handle) }
    }

    public func fsync(handle: UInt64, dataOnly: Bool) throws(FSError) {
        try commit(handle: handle) { () throws(FSError) in try local.fsync(handle: handle, dataOnly: dataOnly) }
    }

    public func release(handle: UInt64) throws(FSError) {
        defer { _ = handles.with { $0.removeValue(forKey: handle) } }
        do throws(FSError) {
            try commit(handle: handle) { () throws(FSError) in try local.flush(handle: handle) }
        } catch {
            try? local.release(handle: handle)
            throw error
        }
        try local.release(handle: handle)
    }

    /// FALLOC_FL_KEEP_SIZE (linux/falloc.h).
    static let fallocKeepSize: Int32 = 0x01

    /// Preallocation changes no byte a reader sees: with KEEP_SIZE nothing reaches the peer,
    /// and a plain fallocate past the end reads as zeros up to its new size, which the peer
    /// gets as a size change (smbd and PACS writers preallocate before they write). Other
    /// modes (punch hole, zero or collapse range) change bytes: the whole file goes at close.
    public func fallocate(handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(FSError) {
        guard let rh = handles.with({ $0[handle] }) else {
            return try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        }
        markTouched(rh)
        guard mode == 0 || mode == Self.fallocKeepSize else {
            rh.with { $0.broken = true }
            return try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        }
        let node = NodeRef(id: rh.id, path: rh.with { $0.path })
        let before = try local.getattr(node, handle: handle).st_size
        try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        let after = try local.getattr(node, handle: handle).st_size
        guard after > before else { return }
        // Writes gathered or in flight below the new end land first (messages are not ordered).
        drainWrites(of: rh.id)
        guard rh.with({ $0.canStream(liveNow: gate.mode == .live) }) else { return }
        switch channel.call(.setattr(path: node.path, changes: AttrUpdate(size: Int64(after)))) {
        case .ok: break
        case .refused: rh.with { $0.broken = true }
        case .unreachable(let why): markDegraded(why); rh.with { $0.broken = true; $0.apart = true }
        }
    }

    // MARK: - Directories, xattrs

    public func opendir(_ node: NodeRef) throws(FSError) -> UInt64 {
        try checkCurrent()
        awaitPeerNamespace()
        try healHooks?.prepareDirectory(path: node.path)
        return try local.opendir(node)
    }

    public func readdir(handle: UInt64, offset: Int64, plus: Bool, emit: (DirEntry) -> Bool) throws(FSError) {
        guard plus, let hooks = healHooks else { return try local.readdir(handle: handle, offset: offset, plus: plus, emit: emit) }
        try local.readdir(handle: handle, offset: offset, plus: plus) { e in
            var e = e
            if let st = e.attributes { e.attributes = Self.awaited(st, hooks) }
            return emit(e)
        }
    }

    public func releasedir(handle: UInt64) { local.releasedir(handle: handle) }
    public func statfs() throws(FSError) -> statvfs { try local.statfs() }
    /// fsync of a directory is a promise about its entries on both disks: the peer syncs its
    /// copy of the directory and its journal before this returns. Peer unreachable: what it
    /// missed is owed durably already (the local fsyncdir's durable commit covers it).
    public func fsyncdir(_ node: NodeRef) throws(FSError) {
        try local.fsyncdir(node)
        guard gate.mode == .live else { return }
        switch channel.call(.syncDir(path: node.path)) {
        case .ok, .unreachable: break
        case .refused(let e):
            // This disk has it; the peer's problem is its own to report (and the client's
            // data is not at risk of being lost from this node).
            log.error("\(PeerRefusal.describe(e, "sync directory \(node.path.debugDescription) to its disk"))")
        }
    }

    public func getxattr(_ node: NodeRef, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try checkCurrent()
        if name.hasPrefix(RealName.xattrPrefix) {
            // A name lookup in the directory, like opendir: after the peer's catch-up of the
            // namespace, and from the peer's listing while this brick is rebuilt.
            awaitPeerNamespace()
            try healHooks?.prepareDirectory(path: node.path)
        }
        return try local.getxattr(node, name: name, into: buffer)
    }

    public func setxattr(_ node: NodeRef, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try checkCurrent()
        let m = PeerMessage.setxattr(path: node.path, name: name, value: Array(value), flags: UInt32(bitPattern: flags) & 3)
        try replicate(keys: [], pre: m) { () throws(FSError) in
            try local.setxattr(node, name: name, value: value, flags: flags)
        } message: { _ in m }
    }

    public func listxattr(_ node: NodeRef) throws(FSError) -> [String] {
        try checkCurrent()
        return try local.listxattr(node)
    }

    public func removexattr(_ node: NodeRef, name: String) throws(FSError) {
        try checkCurrent()
        let m = PeerMessage.removexattr(path: node.path, name: name)
        try replicate(keys: [], pre: m) { () throws(FSError) in
            try local.removexattr(node, name: name)
        } message: { _ in m }
    }

    public func openHandle(for id: UInt64) -> UInt64? { local.openHandle(for: id) }

    // A file unlinked while open: local only (the unlink already reached the peer).
    public func getxattr(handle: UInt64, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try local.getxattr(handle: handle, name: name, into: buffer)
    }
    public func setxattr(handle: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try local.setxattr(handle: handle, name: name, value: value, flags: flags)
    }
    public func listxattr(handle: UInt64) throws(FSError) -> [String] { try local.listxattr(handle: handle) }
    public func removexattr(handle: UInt64, name: String) throws(FSError) { try local.removexattr(handle: handle, name: name) }

    // MARK: - Whole-file push (catch-up, pull, and repair of a refused commit)

    public enum PushResult: Sendable, Equatable {
        case ok, gone, unreachable, splitBrain
        case failed(String)
        /// This node's bytes do not hash to what they must (bit rot, or a change behind
        /// TwinFS's back): nothing was sent.
        case badSource(String)
    }

    /// Sends file `id` as it is on this brick now: create-if-missing with its id, attributes and
    /// size, every byte, then a commit whose XXH3-128 the peer checks against its own hash of
    /// the bytes it wrote.
    /// One push per file at a time; on node 2 the content lock is also taken on node 1, so two
    /// pushes of one file in opposite directions cannot cross.
    /// `verify`: before a single byte leaves, re-read the file and check it hashes to `verify`
    /// (or, when empty, to this journal's hash): a heal never spreads a bad copy.
    public func pushFile(_ id: UInt64, verify: [UInt8]? = nil) -> PushResult {
        pushCond.lock()
        while pushLocks.with({ $0.contains(id) }) { pushCond.wait() }
        // A handle streaming new bytes of this file: its own commit settles it; a push now
        // could land old bytes after them.
        if writers[id] != nil {
            pushCond.unlock()
            return .failed("the file is being written; its own close sends it")
        }
        pushLocks.with { _ = $0.insert(id) }
        pushCond.unlock()
        defer {
            pushCond.lock()
            pushLocks.with { _ = $0.remove(id) }
            pushCond.broadcast()
            pushCond.unlock()
        }
        if isSplit(id) { return .splitBrain }
        let release: () -> Void
        do { release = try takeLocks(["c/\(id)"], live: channel.isUp) } catch { return .failed("\(error)") }
        defer { release() }
        do { try journal.submit([], wait: .written) } catch { return .failed("journal: \(error)") }
        guard let path = try? journal.path(of: id), !path.isEmpty else { return .gone }
        let fd: Int32
        do { fd = try local.brick.openFile(path, flags: O_RDONLY) } catch { return error.errno == ENOENT ? .gone : .failed("open: \(error)") }
        defer { close(fd) }
        guard local.brick.readID(rel: path) == id else { return .gone }
        var st = stat()
        guard fstat(fd, &st) == 0, st.kind == .file else { return .gone }
        let (parent, name) = Self.split(path)
        let size = Int64(st.st_size)
        if let want = verify {
            let expected: [UInt8]
            if want.isEmpty {
                guard let rec = try? journal.inode(id), !rec.dirty, let h = rec.hash else {
                    return .failed("no clean hash in the journal yet (being written?)")
                }
                expected = h
            } else {
                expected = want
            }
            guard let (digest, n) = try? XXH128Hasher.hash(fd: fd) else { return .failed("read: \(FSError.last)") }
            guard digest.bytes == expected, n == size else {
                return .badSource("\(path) (id \(id)): its bytes hash to \(digest.hex), not to the recorded \(Self.hex(expected))")
            }
        }
        func outcome(_ o: PeerOutcome, _ what: String) -> PushResult? {
            switch o {
            case .ok: return nil
            case .unreachable(let why): markDegraded(why); return .unreachable
            case .refused(let e) where e == splitBrainErrno:
                recordSplitBrain(id: id, path: path, reason: "changed on both nodes while they could not talk")
                return .splitBrain
            case .refused(let e) where e == EEXIST && what == "create":
                if yieldName(parent: parent, name: name, id: id) { return .gone }
                recordSplitBrainOnBoth(id: id, path: path, reason: "the peer has another entry under this name")
                return .splitBrain
            case .refused(let e): return .failed("peer refused \(what): errno \(e)")
            }
        }
        // Staged at the peer: its readers keep the old version whole until the verified commit.
        if let r = outcome(channel.call(.stageWhole(parentPath: parent, name: name, mode: UInt32(st.st_mode), uid: st.st_uid,
                                                    gid: st.st_gid, stableID: id, size: size)), "create") { return r }
        let hasher = XXH128Hasher()
        let chunk = 1 << 20
        var off: Int64 = 0
        var inFlight: [PendingCall] = []
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        while off < size {
            let n = pread(fd, buf.baseAddress, chunk, off_t(off))
            if n < 0 { if errno == EINTR { continue }; return .failed("read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            let piece = UnsafeRawBufferPointer(rebasing: buf[0..<n])
            hasher.update(piece)
            inFlight.append(channel.start(.write(path: path, stableID: id, offset: off, data: ByteBuffer(bytes: piece))))
            off += Int64(n)
            if inFlight.count >= 8 {
                if let r = outcome(inFlight.removeFirst().wait(), "write") { return r }
            }
        }
        for p in inFlight { if let r = outcome(p.wait(), "write") { return r } }
        if let r = outcome(channel.call(.commit(path: path, stableID: id, size: off, xxh128: hasher.digest().bytes,
                                                mtimeNs: st.mtimeNs)), "commit") { return r }
        sendSamples.with { $0.append((.now, off)) }
        return .ok
    }

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    public static func split(_ path: String) -> (String, String) {
        guard let i = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<i]), String(path[path.index(after: i)...]))
    }
}

/// A writable handle's replication state.
final class RepHandle: @unchecked Sendable {
    let id: UInt64
    /// Where the file is (a rename of it or of a directory above it moves this).
    var path: String
    let cond = NSCondition()
    /// Opened while live: its writes stream to the peer.
    var live = false
    /// Written since the last commit to the peer.
    var touched = false
    /// A write did not reach the peer: the whole file must go.
    var broken = false
    /// Written while the peer could not be told.
    var apart = false
    var inFlight = 0
    /// Writes through this handle so far (a commit tells from it whether one raced it).
    var writes: UInt64 = 0
    /// Small adjacent writes not sent yet, at `pendingOffset`: sent as one message once they
    /// reach `ReplicatedVolume.coalesceLimit`, at a write elsewhere in the file, and before
    /// any commit (close, fsync) or truncate.
    var pending: [UInt8] = []
    var pendingOffset: Int64 = 0

    /// Whether a write may stream now (caller holds `cond`). If not, the handle is broken (its
    /// close sends the whole file, or owes it), apart too if the peer is unreachable, and
    /// what it gathered is dropped (the whole file carries those bytes).
    func canStream(liveNow: Bool) -> Bool {
        if live && !broken && liveNow { return true }
        broken = true
        if !liveNow { apart = true }
        pending = []
        return false
    }

    init(id: UInt64, path: String) {
        self.id = id
        self.path = path
    }

    func drain() {
        cond.lock()
        while inFlight > 0 { cond.wait() }
        cond.unlock()
    }

    /// Every field is read and written under `cond` (FUSE threads and write completions).
    func with<R>(_ body: (RepHandle) -> R) -> R {
        cond.lock()
        defer { cond.unlock() }
        return body(self)
    }
}

/// Who may send live: every change enters the gate, which records the mode it saw; the switch
/// to live waits until no change is inside (writer-preferring) so nothing slips between the
/// last owed change and the first live one.
final class ModeGate: @unchecked Sendable {
    /// Guards `current`, `inside`, `switching` and `wakeups`; taken alone (no other lock inside).
    /// Monotonic: a wall-clock step must not stall the catch-up thread's timed wait.
    private let cond = MonotonicCondition()
    private var current: ReplicatedVolume.Mode = .degraded
    private var inside = 0
    private var switching = false
    private var wakeups = 0

    var mode: ReplicatedVolume.Mode {
        cond.lock()
        defer { cond.unlock() }
        return current
    }

    func enter() -> ReplicatedVolume.Mode {
        cond.lock()
        defer { cond.unlock() }
        while switching { cond.wait() }
        inside += 1
        return current
    }

    func leave() {
        cond.lock()
        inside -= 1
        if inside == 0 { cond.broadcast() }
        cond.unlock()
    }

    /// True if this changed the mode.
    @discardableResult
    func setDegraded() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let changed = current != .degraded
        current = .degraded
        cond.broadcast()
        return changed
    }

    func setCatchingUp() {
        cond.lock()
        if current == .degraded { current = .catchingUp }
        cond.unlock()
    }

    /// Switches to live if `ready()` holds once no change is in flight.
    func switchToLive(_ ready: () -> Bool) -> Bool {
        cond.lock()
        while switching { cond.wait() }
        switching = true
        while inside > 0 { cond.wait() }
        let ok = current != .degraded && ready()
        if ok { current = .live }
        switching = false
        cond.broadcast()
        cond.unlock()
        return ok
    }

    func wakeCatchUp() {
        cond.lock()
        wakeups += 1
        cond.broadcast()
        cond.unlock()
    }

    /// Waits for a wake-up or `seconds`.
    func waitForWork(seconds: Double) {
        cond.lock()
        let seen = wakeups
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while wakeups == seen && cond.wait(until: deadline) {}
        cond.unlock()
    }
}
