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
    // Lock order (outermost first; no peer round trip is made while holding a mutex below):
    //   remoteOrder -> gate -> cluster name locks: logical locks, held across a change and its
    //   peer call (see `RemoteOrder`: a removal's or rename's peer step holds remoteOrder
    //   exclusively, after the FUSE adapter released its namespace lock)
    //   yieldLock -> state, and the applier's and the journal's own locks (through localApply)
    //   gate's condition -> the journal's (switchToLive's `ready` reads the backlog)
    //   pushCond -> pushLocks
    //   handles -> a RepHandle's cond (rename finds the open files under a name)
    //   state, pushLocks, hooksBox, sendSamples, currency, localApplyBox, writeGateBox: leaves,
    //   held for one dictionary or field access. Cluster name locks (`locks`) are logical locks
    //   held across a change and its peer call (and the write gate's witness round trip); they
    //   block only changes of the same names.
    /// Orders peer steps behind removals' and renames' (see `RemoteOrder`).
    let remoteOrder = RemoteOrder()
    /// Guards its mode, the changes inside it and catch-up's wake-ups (see `ModeGate`).
    let gate = ModeGate()
    /// Guards `SharedState` (owed, split, yielding, the peer's catch-up report). Leaf.
    let state: Locked<SharedState>
    /// Guards the open writable handles by FUSE handle number. Before a RepHandle's cond.
    let handles = Locked<[UInt64: RepHandle]>([:])
    let budget = ByteBudget(limit: 64 << 20)
    /// Guards the ids whose whole-file push runs now. Taken inside `pushCond`.
    let pushLocks = Locked<Set<UInt64>>([])
    /// Guards `writers`; a file's first write waits on it while a whole-file push of that file
    /// runs (a push refuses, rather than waits, while a handle writes). Before `pushLocks`.
    let pushCond = NSCondition()
    /// Handles writing each file (first write to commit), under `pushCond`.
    var writers: [UInt64: Int] = [:]
    /// The healer's on-demand side (set once at start; nil: nothing to heal on demand).
    let hooksBox = Locked<(any HealHooks)?>(nil)
    let sendSamples = Locked<[(ContinuousClock.Instant, Int64)]>([])
    /// Whether this node may serve (see `DataCurrency`). Leaf.
    let currency = Locked(CurrencyState())
    /// Guards the write gate (see `WriteGate`; set once at start). Leaf.
    let writeGateBox = Locked<(any WriteGate)?>(nil)
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

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    public static func split(_ path: String) -> (String, String) {
        guard let i = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<i]), String(path[path.index(after: i)...]))
    }
}
