import BrickStore
import ControlSocket
import Foundation
import FuseAdapter
import Glibc
import Journal
import Logging
import NodeMetrics
import Prometheus
import TwinConfig
import TwinCore
import Volume

/// `twinfs status --json`: this shape is documented in README.md and kept stable.
public struct NodeStatus: Codable, Sendable {
    public var volume: String
    public var node: String
    public var brick: String
    public var mountpoint: String
    /// HEALTHY, or once a peer is configured DEGRADED / HEALING / SPLIT-BRAIN.
    public var state: String
    public var pid: Int32
    public var uptimeSeconds: Int
    public var files: Int64
    public var directories: Int64
    public var symlinks: Int64
    public var bytes: Int64
    /// Files being written now (their journal row is dirty until close/fsync).
    public var dirtyFiles: Int64
    public var journalPath: String
    public var journalBytes: Int64
    public var openHandles: Int
    public var kernelInodes: Int
    public var brickFreeBytes: Int64
    public var brickTotalBytes: Int64
    /// Copies kept in the brick's quarantine area (never deleted by TwinFS; an admin removes
    /// them once looked at). Optional: older nodes do not report them.
    public var quarantineFiles: Int64?
    public var quarantineBytes: Int64?
    /// "clean", "crash" (process ended without unmounting) or "system-crash" (the machine rebooted).
    public var lastShutdown: String
    public var recoveredIntents: Int
    public var recoveredFiles: Int
    public var peer: String?
    /// The pair's replication, when a peer is configured.
    public var replication: ReplicationStatus?
    /// The healer, when a peer is configured.
    public var heal: HealStatus?
    public var version: String

    enum CodingKeys: String, CodingKey {
        case volume, node, brick, mountpoint, state, pid, files, directories, symlinks, bytes, peer, version, replication, heal
        case uptimeSeconds = "uptime_seconds"
        case dirtyFiles = "dirty_files"
        case journalPath = "journal_path"
        case journalBytes = "journal_bytes"
        case openHandles = "open_handles"
        case kernelInodes = "kernel_inodes"
        case brickFreeBytes = "brick_free_bytes"
        case brickTotalBytes = "brick_total_bytes"
        case quarantineFiles = "quarantine_files"
        case quarantineBytes = "quarantine_bytes"
        case lastShutdown = "last_shutdown"
        case recoveredIntents = "recovered_intents"
        case recoveredFiles = "recovered_files"
    }
}

/// `replication` in `twinfs status --json`.
public struct ReplicationStatus: Codable, Sendable {
    public struct SplitBrainEntry: Codable, Sendable {
        public var path: String
        public var id: UInt64
        public var reason: String
        public var detected: String
    }
    public var peerNode: String
    public var peerAddress: String
    /// The link as this node's client sees it: up, connecting, or down (reason).
    public var link: String
    /// live (every change on both bricks), degraded (peer unreachable: recording what it must
    /// receive) or catching-up (sending it).
    public var mode: String
    /// What the peer must still receive from this node.
    public var pendingChanges: Int64
    public var pendingFiles: Int64
    public var pendingBytes: Int64
    public var splitBrainCount: Int64
    public var splitBrain: [SplitBrainEntry]
    public var lastLinkError: String
    /// What the peer reported it still owes this node.
    public var peerPendingChanges: UInt64
    public var peerPendingFiles: UInt64
    /// The witness (address) gating writes while cut off from the peer; nil: active-active.
    public var witness: String? = nil
    /// Why this node refuses writes now (cut off, without the witness's lease); nil: it does not.
    public var writesRefused: String? = nil

    enum CodingKeys: String, CodingKey {
        case link, mode, witness
        case writesRefused = "writes_refused"
        case peerNode = "peer_node"
        case peerAddress = "peer_address"
        case pendingChanges = "pending_changes"
        case pendingFiles = "pending_files"
        case pendingBytes = "pending_bytes"
        case splitBrainCount = "split_brain_count"
        case splitBrain = "split_brain"
        case lastLinkError = "last_link_error"
        case peerPendingChanges = "peer_pending_changes"
        case peerPendingFiles = "peer_pending_files"
    }
}

/// `heal` in `twinfs status --json`.
public struct HealStatus: Codable, Sendable {
    /// Files this node still has to receive from its peer (rebuild, scrub repair).
    public var filesAwaited: Int64
    public var bytesAwaited: Int64
    /// This brick is being rebuilt from the peer (replaced disk).
    public var rebuilding: Bool
    /// "idle", or the walk's kind and state ("rebuild running", "full done", ...).
    public var crawl: String
    public var paused: Bool
    /// The scrubber: idle, running or paused; when it last finished; files found bad and not repaired.
    public var scrub: String
    public var lastScrub: String?
    public var corruptFound: Int64
    /// Bytes healed per second over the last 20 s (received plus sent whole).
    public var rateBytesPerSecond: Double

    enum CodingKeys: String, CodingKey {
        case rebuilding, crawl, paused, scrub
        case rateBytesPerSecond = "rate_bytes_per_second"
        case filesAwaited = "files_awaited"
        case bytesAwaited = "bytes_awaited"
        case lastScrub = "last_scrub"
        case corruptFound = "corrupt_unrepaired"
    }
}

public let twinfsVersion = "0.3.0"

/// One TwinFS node process: brick + journal + volume + FUSE mount + control socket.
public final class Node: @unchecked Sendable {
    let cfg: NodeConfig
    let log: Logger
    let started = Date()

    public init(config: NodeConfig, logger: Logger) {
        cfg = config
        log = logger
    }

    /// Blocks the stop signals in every thread; a dedicated thread waits for them. Call first
    /// thing in main, before any thread exists, so that every later thread inherits the mask.
    public static func blockStopSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        // SIGUSR1 only interrupts the FUSE loop's sem_wait (no SA_RESTART).
        var sa = sigaction()
        sa.__sigaction_handler.sa_handler = { _ in }
        sa.sa_flags = 0
        sigaction(SIGUSR1, &sa, nil)
    }

    /// Runs the node until SIGTERM/SIGINT or an external unmount. Returns the exit status.
    public func run() throws(AdminError) -> Int32 {
        // Modes arrive from the kernel with the caller's umask already applied.
        umask(0)
        let plan = try Preflight.check(cfg)
        if plan.detachStaleMount {
            log.warning("detaching the dead mount at \(cfg.mountpoint) left by a crashed node")
            umount2(cfg.mountpoint, Int32(MNT_DETACH))
        }
        if plan.setAsideJournal {
            let aside = try Self.setJournalAside(cfg.journal)
            log.warning("brick \(cfg.brick) is new and empty (disk replaced?): the old journal is kept as \(aside); rebuilding this brick from \(cfg.peer?.node ?? "the peer")")
        }
        let brick = try Brick(path: cfg.brick)
        // A brick being rebuilt gets its marker only once the journal says "rebuild pending":
        // a crash in between leaves an unmarked (empty) brick, which the next start rebuilds.
        if plan.brick == .initialize && !plan.rebuild {
            log.notice("initialising empty brick \(cfg.brick) for \(cfg.identity)")
            try brick.writeMarker(cfg.identity)
        }
        let journal: Journal
        do {
            journal = try Journal(path: cfg.journal, identity: cfg.identity, create: plan.journal == .create)
            if plan.journal == .create {
                let st = try brick.lstat("")
                try journal.submit([.insertInode(LocalVolume.record(st, id: StableID.root))], wait: .durable)
            }
        } catch let e as JournalError {
            throw e.adminError
        } catch {
            throw AdminError(problem: "cannot read the brick root \(cfg.brick): \(error)", fix: "check the brick's disk")
        }

        let lastShutdown = Self.lastShutdown(journal)
        if lastShutdown == "system-crash" {
            log.warning("the machine went down without unmounting TwinFS; run `twinfs verify --config \(cfg.path)` to check every file")
        }
        // The ordinal in stable ids is fixed when the journal is made: adding a [peer] later
        // must not change which ids this node hands out.
        let ordinal = UInt8(((try? journal.meta("id_ordinal")) ?? nil) ?? "") ?? cfg.nodeOrdinal
        do {
            try journal.submit([.setMeta(key: "id_ordinal", value: "\(ordinal)")], wait: .durable)
        } catch {
            journal.close(cleanShutdown: false)
            throw error.adminError
        }
        let volume = LocalVolume(brick: brick, journal: journal, nodeOrdinal: ordinal, logger: log,
                                 sealCommits: cfg.sealCommits)
        if plan.rebuild {
            // Every id this node hands out from now on lies above any it handed out on the
            // lost disk (a counter never reaches today's time in microseconds); the peer's
            // high-water mark is added once it answers.
            do {
                try journal.submit([.setMeta(key: "rebuild", value: "pending"),
                                    .setMeta(key: "rebuild_strict", value: plan.setAsideJournal ? "1" : "0")], wait: .durable)
                log.notice("initialising empty brick \(cfg.brick) for \(cfg.identity); it is filled from \(cfg.peer?.node ?? "the peer")")
                try brick.writeMarker(cfg.identity)
                try volume.raiseIDs(atLeast: UInt64(Date().timeIntervalSince1970 * 1_000_000))
            } catch let e as AdminError {
                journal.close(cleanShutdown: false)
                throw e
            } catch {
                journal.close(cleanShutdown: false)
                throw AdminError(problem: "cannot prepare the rebuild of brick \(cfg.brick): \(error)", fix: "check the journal's and the brick's disks")
            }
        }
        let report: RecoveryReport
        do { report = try volume.recover() } catch {
            journal.close(cleanShutdown: false)
            throw AdminError(problem: "crash recovery failed: \(error)", fix: "check the brick's disk; then `twinfs journal rebuild`")
        }
        if report.intentsReplayed + report.filesRehashed + report.rowsDropped > 0 {
            log.notice("recovered after \(lastShutdown): \(report.intentsReplayed) unfinished changes re-read, \(report.filesRehashed) files re-hashed")
        }
        if report.sealsRederived > 0 {
            log.notice("recovered after \(lastShutdown): \(report.sealsRederived) of \(report.sealsChecked) sealed content commits re-derived from the brick (journal rows lost or stale)")
        }
        try? journal.submit([.setMeta(key: "clean_shutdown", value: "0"),
                             .setMeta(key: "boot_id", value: Self.bootID())], wait: .durable)

        var member: ClusterMember?
        if let peer = cfg.peer {
            guard ordinal == cfg.nodeOrdinal else {
                journal.close(cleanShutdown: true)
                throw AdminError(problem: "this node's journal hands out ids as node \(ordinal), but in the pair with '\(peer.node)' it is node \(cfg.nodeOrdinal) (the name that sorts first is node 1); both nodes would give out the same ids",
                                 fix: "name the nodes so that this one keeps its place (sorting \(ordinal == 1 ? "before" : "after") '\(peer.node)'), or start the pair from an empty brick")
            }
            do {
                member = try ClusterMember(cfg: cfg, peer: peer, local: volume, ordinal: ordinal, log: log)
            } catch {
                journal.close(cleanShutdown: true)
                throw error
            }
            member?.awaitPeer(timeout: .milliseconds(Int64(peer.timeout * 1000)), log: log)
        }
        let base: any VolumeOperations = member?.volume ?? volume
        // With `metrics_listen`, every operation is counted and timed on its way down.
        let registry = cfg.metricsListen != nil ? PrometheusCollectorRegistry() : nil
        let served: any VolumeOperations = registry.map { MeteredVolume(base, registry: $0) } ?? base
        let adapter = FuseAdapter(volume: served, attrTimeout: cfg.attrTimeout, keepCache: member == nil, logger: log)
        let session = try FuseSession(adapter: adapter, mountpoint: cfg.mountpoint,
                                      fsname: "twinfs:\(cfg.volume)", maxThreads: cfg.maxThreads)
        do {
            try session.mount()
        } catch {
            member?.stop()
            journal.close(cleanShutdown: true)
            throw error
        }
        member?.attach(session: session, adapter: adapter)
        let cluster = member
        let control: ControlServer
        do {
            control = try ControlServer(path: cfg.controlSocket, logger: log) { [self] req in
                self.handle(req, journal: journal, volume: volume, adapter: adapter, brick: brick,
                            lastShutdown: lastShutdown, report: report, member: cluster)
            }
        } catch {
            session.unmount()
            member?.stop()
            journal.close(cleanShutdown: true)
            throw error
        }
        var metrics: MetricsServer?
        if let registry, let listen = cfg.metricsListen, let (host, port) = NodeConfig.parseHostPort(listen) {
            let gauges = NodeGauges(registry: registry)
            do {
                metrics = try MetricsServer(host: host, port: port, registry: registry) { [self] in
                    guard let st = try? self.makeStatus(journal: journal, volume: volume, adapter: adapter, brick: brick,
                                                        lastShutdown: lastShutdown, report: report, member: cluster) else { return }
                    var v = NodeGauges.Values()
                    v.state = st.state
                    v.files = st.files
                    v.bytes = st.bytes
                    v.brickFreeBytes = st.brickFreeBytes
                    if let r = st.replication {
                        v.peerLinkUp = r.link == "up"
                        v.pendingChanges = r.pendingChanges
                        v.pendingFiles = r.pendingFiles
                        v.pendingBytes = r.pendingBytes
                        v.splitBrain = r.splitBrainCount
                    }
                    if let h = st.heal, let m = cluster {
                        v.filesAwaited = h.filesAwaited
                        v.bytesAwaited = h.bytesAwaited
                        v.corruptUnrepaired = h.corruptFound
                        let sc = m.healer.scrubber.current()
                        v.scrubRunning = sc.state == "running"
                        v.scrubFilesChecked = sc.filesChecked
                        v.scrubCorruptFound = sc.corruptFound
                        v.healRateBytes = h.rateBytesPerSecond
                    }
                    gauges.set(v)
                }
                log.notice("Prometheus metrics at http://\(listen)/metrics")
            } catch {
                control.close()
                session.unmount()
                member?.stop()
                journal.close(cleanShutdown: true)
                throw error
            }
        }
        let signals = Thread { [log] in
            var set = sigset_t()
            sigemptyset(&set)
            for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
            var sig: Int32 = 0
            sigwait(&set, &sig)
            log.notice("signal \(sig): finishing requests in flight and unmounting")
            session.requestExit()
        }
        signals.start()
        log.notice("TwinFS \(cfg.identity) mounted at \(cfg.mountpoint) over brick \(cfg.brick)")
        let rc = session.run()
        session.unmount()
        metrics?.close()
        control.close()
        member?.stop()
        journal.close(cleanShutdown: true)
        log.notice("unmounted \(cfg.mountpoint); journal closed cleanly")
        return rc == 0 || rc == SIGTERM || rc == SIGINT ? 0 : 1
    }

    func handle(_ req: ControlRequest, journal: Journal, volume: LocalVolume, adapter: FuseAdapter, brick: Brick,
                lastShutdown: String, report: RecoveryReport, member: ClusterMember?) -> ControlResponse {
        if let r = handleHeal(req, member: member) { return r }
        switch req.command {
        case "ping":
            return ControlResponse(ok: true, body: "{}")
        case "promote":
            guard let m = member else { return ControlResponse(ok: false, error: "this node has no peer configured: it is never outdated") }
            guard req.arguments["force"] == "1" else {
                return ControlResponse(ok: false, error: "promoting an OUTDATED node serves data that may lack changes the peer acknowledged; add --force to accept that")
            }
            let changed = m.volume.forceCurrent()
            return ControlResponse(ok: true, body: "{\"promoted\":\(changed)}")
        case "sync":
            // Commit every queued journal op (verify beside a running node reads the journal).
            do {
                try journal.sync()
                return ControlResponse(ok: true, body: "{}")
            } catch {
                return ControlResponse(ok: false, error: "\(error)")
            }
        case "status":
            do {
                let st = try makeStatus(journal: journal, volume: volume, adapter: adapter, brick: brick,
                                        lastShutdown: lastShutdown, report: report, member: member)
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                return ControlResponse(ok: true, body: String(decoding: try enc.encode(st), as: UTF8.self))
            } catch {
                return ControlResponse(ok: false, error: "\(error)")
            }
        default:
            return ControlResponse(ok: false, error: "unknown command '\(req.command)'")
        }
    }

    /// Renames the journal of a lost brick (and its side files) out of the way; returns the new name.
    static func setJournalAside(_ path: String) throws(AdminError) -> String {
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let aside = "\(path).replaced-\(stamp)"
        for suffix in ["", "-wal", "-shm", ".intents"] where FileManager.default.fileExists(atPath: path + suffix) {
            guard rename(path + suffix, aside + suffix) == 0 else {
                throw AdminError(problem: "cannot set the old journal \(path + suffix) aside: \(String(cString: strerror(errno)))",
                                 fix: "check that the journal's directory is writable")
            }
        }
        return aside
    }

    /// `twinfs status`: the node, its pair, its healer (also what a Prometheus scrape reports).
    func makeStatus(journal: Journal, volume: LocalVolume, adapter: FuseAdapter, brick: Brick, lastShutdown: String,
                    report: RecoveryReport, member: ClusterMember?) throws -> NodeStatus {
        let s = try journal.stats()
        let fs = try? brick.statfs()
        let quarantined = try? journal.quarantineTotals()
        var state = journal.failed == nil ? "HEALTHY" : "JOURNAL-FAILED"
        var replication: ReplicationStatus?
        var heal: HealStatus?
        if let m = member, let p = cfg.peer {
            let r = try m.volume.report()
            replication = ReplicationStatus(
                peerNode: p.node, peerAddress: p.address, link: r.link, mode: r.mode.rawValue,
                pendingChanges: r.backlog.ops, pendingFiles: r.backlog.files, pendingBytes: r.backlog.bytes,
                splitBrainCount: r.backlog.splitBrain,
                splitBrain: r.splitBrain.map { .init(path: $0.path, id: $0.id, reason: $0.reason, detected: $0.detected) },
                lastLinkError: r.lastLinkError, peerPendingChanges: r.peerCatchingUpOps,
                peerPendingFiles: r.peerCatchingUpFiles, witness: m.writeGate?.lease.witness,
                writesRefused: m.writeGate?.refusal(volume: m.volume))
            let hi = m.healer.summary()
            let sc = m.healer.scrubber.current()
            heal = HealStatus(filesAwaited: hi.filesAwaited, bytesAwaited: hi.bytesAwaited, rebuilding: m.healer.isRebuilding,
                              crawl: hi.crawl.kind == "none" ? "idle" : "\(hi.crawl.kind) \(hi.crawl.state)",
                              paused: hi.paused, scrub: sc.state, lastScrub: sc.finished,
                              corruptFound: Int64(sc.findings.filter { $0.state != .repaired }.count),
                              rateBytesPerSecond: hi.rateBytesPerSecond)
            if state == "HEALTHY" {
                if m.volume.currencyState == .outdated { state = "OUTDATED" }
                else if r.mode == .degraded { state = "DEGRADED" }
                else if r.backlog.splitBrain > 0 { state = "SPLIT-BRAIN" }
                else if r.mode != .live || r.backlog.ops + r.backlog.files > 0 || m.healer.busy { state = "HEALING" }
            }
        }
        let st = NodeStatus(
            volume: cfg.volume, node: cfg.node, brick: cfg.brick, mountpoint: cfg.mountpoint,
            state: state, pid: getpid(), uptimeSeconds: Int(Date().timeIntervalSince(started)),
            files: s.files, directories: s.directories, symlinks: s.symlinks, bytes: s.bytes,
            dirtyFiles: s.dirty, journalPath: cfg.journal, journalBytes: journal.sizeOnDisk(),
            openHandles: volume.openHandles, kernelInodes: adapter.knownInodes,
            brickFreeBytes: fs.map { Int64($0.f_bavail) * Int64($0.f_frsize) } ?? 0,
            brickTotalBytes: fs.map { Int64($0.f_blocks) * Int64($0.f_frsize) } ?? 0,
            quarantineFiles: quarantined?.files, quarantineBytes: quarantined?.bytes,
            lastShutdown: lastShutdown, recoveredIntents: report.intentsReplayed,
            recoveredFiles: report.filesRehashed, peer: cfg.peer?.node, replication: replication, heal: heal, version: twinfsVersion)
        return st
    }

    static func bootID() -> String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    }

    static func lastShutdown(_ journal: Journal) -> String {
        let clean = (try? journal.meta("clean_shutdown")) ?? nil
        guard clean == "0" else { return "clean" }
        let boot = (try? journal.meta("boot_id")) ?? nil
        return boot == bootID() ? "crash" : "system-crash"
    }
}
