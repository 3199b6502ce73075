import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import NIOCore
import PeerProtocol
import Replication
import TwinCore
import Volume

/// How hard the healer and the scrubber may work (the `[heal]` and `[scrub]` config sections).
public struct HealSettings: Sendable {
    /// Bytes per second healing may move (0: unlimited).
    public var rateBytesPerSecond: Int64
    /// Files received at once.
    public var concurrency: Int
    public var scrubBytesPerSecond: Int64
    /// Seconds between scheduled scrubs (nil: only when started by hand).
    public var scrubInterval: Double?

    public init(rateBytesPerSecond: Int64, concurrency: Int, scrubBytesPerSecond: Int64, scrubInterval: Double?) {
        self.rateBytesPerSecond = rateBytesPerSecond
        self.concurrency = concurrency
        self.scrubBytesPerSecond = scrubBytesPerSecond
        self.scrubInterval = scrubInterval
    }
}

/// The self-heal daemon of one node (GlusterFS's shd, purpose-built).
///
/// - Pending entries (what this node owes its peer) are sent by the replication layer's
///   catch-up thread as soon as the peer is reachable; the healer adds what that cannot know.
/// - Rebuild: a node started on a new, empty brick (disk replaced) has no marker, so it is
///   never mistaken for "everything was deleted": it lists the peer's namespace directory by
///   directory, creates every directory and symlink, makes an empty placeholder for every
///   file (marked in the journal and in an xattr) and receives the files in the background,
///   each verified by XXH3-128 on both ends. The mount serves from the first minute: a
///   directory is listed from the peer the first time it is used and an awaited file is
///   received before it is opened.
/// - Full heal (`twinfs heal full`): the same walk over both namespaces, comparing names,
///   ids, sizes and hashes; what differs is repaired from the side whose bytes match its own
///   journal. Nothing is ever deleted: an entry on one side only is copied to the other.
/// - Everything is throttled (bytes per second, files at once), resumable (the journal keeps
///   what is awaited; the walk is idempotent) and paused on request.
public final class Healer: HealHooks, @unchecked Sendable {
    let v: ReplicatedVolume
    let service: PeerService
    let journal: Journal
    let brick: Brick
    let log: Logger
    public let node: String
    public let peer: String
    public let throttle: Throttle
    let concurrency: Int
    let emptyHash = XXH128Hasher.hash([UInt8]()).bytes

    let cond = MonotonicCondition()
    // Everything below is guarded by `cond`.
    var stopped = false
    var paused = false
    var fullRequested = false
    var rebuilding = false
    /// The brick replaced one that held data (its old journal was set aside): never serve its
    /// emptiness as the volume's state.
    var strictRebuild = false
    var idsRaised = false
    /// Directories whose entries are complete here (while rebuilding).
    var listed: Set<UInt64> = []
    var listing: Set<UInt64> = []
    /// Files awaiting their content from the peer: size and hash they must end with.
    var awaited: [UInt64: (size: Int64, hash: [UInt8])] = [:]
    /// Ids to receive, in order; `queueHead` is the next one (no O(n) removal from the front).
    var queue: [UInt64] = []
    var queueHead = 0
    var queued: Set<UInt64> = []
    var inflight: [UInt64: String] = [:]
    var retryAt: [UInt64: ContinuousClock.Instant] = [:]
    var crawl = NodeHealInfo.Crawl(kind: "none", state: "idle", directories: 0, entries: 0, filesHealed: 0, bytesHealed: 0, problems: 0)
    var samples: [(at: ContinuousClock.Instant, bytes: Int64, files: Int64)] = []
    var peerBytes: Int64 = 0
    /// When a client last wrote here or through the peer (heal yields to ingest).
    let lastIngest = Locked<ContinuousClock.Instant>(.now - .seconds(3600))
    /// Split-brain entries being resolved: awaited, but the resolution brings them, not a worker.
    var resolving: Set<UInt64> = []
    /// Files whose last try found the peer's copy bad too.
    var badSources: Set<UInt64> = []
    private var threads: [Thread] = []
    private let done = DispatchSemaphore(value: 0)
    public let scrubber: Scrubber

    public init(volume: ReplicatedVolume, service: PeerService, node: String, peer: String, settings: HealSettings, logger: Logger) throws(FSError) {
        v = volume
        self.service = service
        journal = volume.journal
        brick = volume.local.brick
        log = logger
        self.node = node
        self.peer = peer
        throttle = Throttle(bytesPerSecond: settings.rateBytesPerSecond)
        concurrency = max(1, min(settings.concurrency, 64))
        scrubber = Scrubber(volume: volume, settings: settings, logger: logger)
        do {
            rebuilding = try journal.meta("rebuild") == "pending"
            strictRebuild = try journal.meta("rebuild_strict") == "1"
            var after: UInt64 = 0
            while true {
                let rows = try journal.healPending(after: after, limit: 10_000)
                guard let last = rows.last else { break }
                for r in rows { awaited[r.id] = (r.size, r.hash) }
                after = last.id
            }
        } catch {
            throw FSError.io
        }
        if rebuilding {
            crawl.kind = "rebuild"
            crawl.state = "waiting-for-peer"
        }
        scrubber.healer = self
    }

    public func start() {
        let c = Thread { [self] in controller(); done.signal() }
        c.name = "twinfs-heal"
        threads.append(c)
        for i in 0..<concurrency {
            let t = Thread { [self] in worker(i); done.signal() }
            t.name = "twinfs-heal-\(i)"
            threads.append(t)
        }
        for t in threads { t.start() }
        scrubber.start()
    }

    /// Tells every thread to end (returns at once; `stop` waits for them).
    public func requestStop() {
        scrubber.requestStop()
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    public func stop() {
        requestStop()
        scrubber.stop()
        for _ in threads { done.wait() }
        threads = []
    }

    // MARK: - Admin controls

    public func requestFull() {
        cond.lock()
        fullRequested = true
        paused = false
        cond.broadcast()
        cond.unlock()
        v.gateWake()
    }

    public func kick() {
        cond.lock()
        retryAt = [:]
        paused = false
        cond.broadcast()
        cond.unlock()
        // Now, not at the controller's next 2 s pass: `twinfs heal start` means heal now.
        requeueAwaited()
        v.gateWake()
    }

    public func setPaused(_ p: Bool) {
        cond.lock()
        paused = p
        cond.broadcast()
        cond.unlock()
        log.notice(p ? "healing paused by the admin" : "healing resumed")
    }

    var isStopped: Bool { cond.lock(); defer { cond.unlock() }; return stopped }

    public var isRebuilding: Bool { cond.lock(); defer { cond.unlock() }; return rebuilding }

    /// True while anything is being healed or waits to be (the node's HEALING state).
    public var busy: Bool {
        cond.lock()
        defer { cond.unlock() }
        return rebuilding || awaited.keys.contains { !badSources.contains($0) } || crawl.state == "running"
    }

    // MARK: - The controller

    private func controller() {
        var lastTry = ContinuousClock.now - .seconds(60)
        while true {
            cond.lock()
            if !stopped { _ = cond.wait(for: .milliseconds(1000)) }
            let (stop, isPaused, full, rebuild) = (stopped, paused, fullRequested, rebuilding)
            cond.unlock()
            if stop { return }
            guard !isPaused else { setCrawlState("paused"); continue }
            guard v.channel.isUp else {
                if rebuild || full { setCrawlState("waiting-for-peer") }
                continue
            }
            if rebuild && !raiseIDs() { continue }
            if rebuild || full {
                // A full compare waits until neither node owes the other anything: pending
                // entries are healed by replay, not by guessing from the two namespaces.
                if !rebuild, (try? journal.peerBacklog()).map({ $0.ops + $0.files > 0 }) ?? true || v.peerOwesUs {
                    setCrawlState("waiting-for-catch-up")
                    continue
                }
                runCrawl(kind: rebuild ? "rebuild" : "full")
                continue
            }
            // Awaited files left by an earlier walk, a restart or a failed try.
            if ContinuousClock.now - lastTry > .seconds(2) {
                lastTry = .now
                requeueAwaited()
            }
        }
    }

    func setCrawlState(_ s: String) {
        cond.lock()
        if crawl.state != "idle" && crawl.state != "done" || s == "waiting-for-peer" && crawl.kind != "none" { crawl.state = s }
        cond.unlock()
    }

    /// A node on a new brick must never hand out an id it gave out before it lost its disk:
    /// the peer's journal knows every id this node handed out that still exists.
    private func raiseIDs() -> Bool {
        cond.lock()
        let done = idsRaised
        cond.unlock()
        if done { return true }
        guard case .ok(let payload?) = v.channel.call(.volumeInfo(ordinal: v.ordinal)),
              let info = try? VolumeInfo.decode(payload) else { return false }
        // A margin covers ids handed out just before the old disk died and since deleted.
        let floor = info.highestCounter == 0 ? 0 : info.highestCounter + (1 << 20)
        do { try v.local.raiseIDs(atLeast: floor) } catch {
            log.error("cannot raise this node's id counter above the peer's: \(error); the rebuild waits")
            return false
        }
        _ = service.applyHealed(.setattr(path: "", changes: AttrUpdate(mode: info.rootMode, uid: info.rootUid, gid: info.rootGid)))
        cond.lock()
        idsRaised = true
        peerBytes = info.bytes
        cond.unlock()
        log.notice("rebuilding this brick from \(peer): \(info.files) files, \(info.bytes) bytes; ids continue above \(floor)")
        return true
    }

    private func runCrawl(kind: String) {
        cond.lock()
        crawl = NodeHealInfo.Crawl(kind: kind, state: "running", started: Self.now(), directories: 0, entries: 0,
                                   filesHealed: crawl.kind == kind ? crawl.filesHealed : 0,
                                   bytesHealed: crawl.kind == kind ? crawl.bytesHealed : 0, problems: 0)
        fullRequested = false
        cond.unlock()
        log.notice("\(kind == "rebuild" ? "rebuild" : "full heal") started: walking both namespaces from the root")
        var stack: [(UInt64, String)] = [(StableID.root, "")]
        var complete = true
        while let (id, listedPath) = stack.popLast() {
            cond.lock()
            let stop = stopped || paused
            cond.unlock()
            if stop || !v.channel.isUp { complete = false; break }
            // Where the directory is now (a client may have renamed it since it was listed).
            try? journal.submit([], wait: .written)
            guard let path = id == StableID.root ? "" : ((try? journal.path(of: id)) ?? nil) else {
                continue   // gone meanwhile
            }
            _ = listedPath
            do {
                let dirs = try exclusively(id) { () throws(HealError) in try healDirectory(id, path: path, full: kind == "full") }
                stack.append(contentsOf: dirs.reversed())
                cond.lock()
                crawl.directories += 1
                listed.insert(id)
                cond.unlock()
            } catch {
                complete = false
                noteProblem("directory \(path.isEmpty ? "/" : path): \(error)")
                if !v.channel.isUp { break }
            }
        }
        guard complete else {
            setCrawlState(isPausedNow ? "paused" : "interrupted")
            if kind == "full" { cond.lock(); fullRequested = true; cond.unlock() }
            return
        }
        // The namespace is complete; the walk is done once every awaited file arrived (or was
        // found bad on the peer too: reported, retried now and then, not waited for).
        while !isStopped && !isPausedNow && v.channel.isUp {
            cond.lock()
            let left = awaited.keys.filter { !badSources.contains($0) }.count
            cond.unlock()
            if left == 0 { break }
            requeueAwaited()
            cond.lock()
            _ = cond.wait(for: .milliseconds(500))
            cond.unlock()
        }
        cond.lock()
        let finished = awaited.keys.allSatisfy { badSources.contains($0) }
        if finished {
            crawl.state = "done"
            crawl.finished = Self.now()
            if kind == "rebuild" { rebuilding = false }
        } else {
            crawl.state = paused ? "paused" : "interrupted"
        }
        let summary = "\(crawl.directories) directories, \(crawl.entries) entries, \(crawl.filesHealed) files (\(crawl.bytesHealed) bytes) healed, \(crawl.problems) problems"
        cond.unlock()
        if finished {
            if kind == "rebuild" { try? journal.submit([.setMeta(key: "rebuild", value: "done")], wait: .durable) }
            log.notice("\(kind == "rebuild" ? "rebuild" : "full heal") finished: \(summary)")
        }
    }

    var isPausedNow: Bool { cond.lock(); defer { cond.unlock() }; return paused }

    func noteProblem(_ what: String) {
        log.error("heal: \(what)")
        cond.lock()
        crawl.problems += 1
        crawl.lastProblem = what
        cond.unlock()
    }

    static func now() -> String { ISO8601DateFormatter().string(from: Date()) }

    // MARK: - Awaited files: the work queue

    func expect(_ id: UInt64, size: Int64, hash: [UInt8]) {
        cond.lock()
        awaited[id] = (size, hash)
        if !queued.contains(id) && inflight[id] == nil {
            queue.append(id)
            queued.insert(id)
        }
        cond.broadcast()
        cond.unlock()
    }

    func requeueAwaited() {
        let now = ContinuousClock.now
        cond.lock()
        for id in awaited.keys where !queued.contains(id) && inflight[id] == nil && (retryAt[id].map { $0 <= now } ?? true) {
            queue.append(id)
            queued.insert(id)
        }
        cond.broadcast()
        cond.unlock()
    }

    /// PACS ingest keeps priority: while a client writes (here, or on the peer, whose writes
    /// arrive here), one worker goes on, one file at a time with a pause between files,
    /// and the others wait. Healing never stops entirely, so a 24x7 ingest cannot starve it.
    static let ingestWindow: Duration = .seconds(1)
    static let ingestGap: UInt32 = 50_000

    var ingestActive: Bool { ContinuousClock.now - lastIngest.with { $0 } < Self.ingestWindow }

    public func noteIngest(id: UInt64) {
        if id != 0 {
            cond.lock()
            let heal = inflight[id] != nil
            cond.unlock()
            if heal { return }
        }
        lastIngest.with { $0 = .now }
    }

    private func worker(_ index: Int) {
        while true {
            if ingestActive {
                if index > 0 {
                    cond.lock()
                    if !stopped { _ = cond.wait(for: .milliseconds(100)) }
                    let stop = stopped
                    cond.unlock()
                    if stop { return }
                    continue
                }
                usleep(Self.ingestGap)
            }
            cond.lock()
            while !stopped && (paused || queueHead == queue.count) { cond.wait() }
            if stopped { cond.unlock(); return }
            let id = queue[queueHead]
            queueHead += 1
            if queueHead > 4096 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            queued.remove(id)
            if resolving.contains(id) {
                retryAt[id] = .now + .seconds(2)
                cond.unlock()
                continue
            }
            guard let want = awaited[id], inflight[id] == nil else { cond.unlock(); continue }
            // A copy interrupted by a crash is taken from the peer only once the peer has told
            // this node everything it owes it (a delete there must not look like "the peer
            // lacks it, send ours").
            if AwaitKind(storedSize: want.size) == .interruptedHere && v.peerOwesUsOrUnknown {
                retryAt[id] = .now + .seconds(1)
                cond.unlock()
                continue
            }
            inflight[id] = (try? journal.path(of: id)) ?? "<id \(id)>"
            cond.unlock()
            throttle.acquire(max(want.size, 4096))
            let r = receive(id, want: want)
            finish(id, r)
        }
    }

    enum Received: Equatable {
        case ok, retry(String), gone, bad(String), split
        /// The peer holds this file only as an incomplete replica (it was receiving it from
        /// this node when the transfer broke off): it has no copy to give.
        case noCompleteCopy
    }

    /// Asks the peer to send file `id` whole (it verifies its bytes against `want.hash` before
    /// sending; this node's replica applier verifies them again at commit).
    func receive(_ id: UInt64, want: (size: Int64, hash: [UInt8])) -> Received {
        guard v.channel.isUp else { return .retry("peer unreachable") }
        // The sender checks its bytes against its own current journal hash, not the one this
        // node saw when it listed the directory: the file may have changed legitimately since.
        switch v.channel.call(.healFile(stableID: id, expected: PeerMessage.journalHashOnPeer), timeout: .seconds(600)) {
        case .ok: return .ok
        case .refused(ENOENT): return .gone
        case .refused(ENODATA): return .noCompleteCopy
        case .refused(EIO): return .bad("the peer's copy does not match its recorded XXH3-128 either")
        case .refused(let e) where e == splitBrainErrno: return .split
        case .refused(let e): return .retry("peer answered errno \(e)")
        case .unreachable(let why): return .retry(why)
        }
    }

    func finish(_ id: UInt64, _ r: Received) {
        switch r {
        case .ok:
            received(id: id)
        case .gone, .noCompleteCopy:
            cond.lock()
            let kind = AwaitKind(storedSize: awaited[id]?.size ?? 0)
            cond.unlock()
            if kind == .interruptedHere {
                // The peer never got this file (this node stopped before its create reached
                // the peer): this node's copy is the only one, so it is sent.
                // Likewise when the peer's copy is only the part this node had sent it.
                clearAwaited(id)
                if (try? journal.path(of: id)) != nil { try? v.oweFile(id) }
            } else if r == .noCompleteCopy {
                // Neither node holds a complete copy yet: the sender's close will bring it.
                cond.lock()
                retryAt[id] = .now + .seconds(5)
                cond.unlock()
            } else if kind == .incompleteReplica {
                // The peer no longer has the file these bytes were part of: its removal
                // reaches this node as a namespace change; nothing is left to receive.
                clearAwaited(id)
            } else {
                // The peer no longer has it (deleted meanwhile, e.g. a client's unlink racing
                // the walk): nothing left to receive, and an empty placeholder made by the
                // walk goes too (it never held data).
                removePlaceholder(id)
                clearAwaited(id)
            }
        case .split:
            // The peer holds this file in split brain: nothing comes until an admin resolves
            // it. The placeholder stays awaited (never served as an empty file) and the split
            // is recorded here too, so the mount answers EIO and `status` lists it.
            let path = (try? journal.path(of: id)) ?? "<id \(id)>"
            if !v.isSplit(id) {
                v.recordSplitBrain(.entry(id), path: path, reason: "the peer holds this file in split brain; this node has no copy of it yet")
            }
            cond.lock()
            retryAt[id] = .now + .seconds(60)
            cond.unlock()
        case .bad(let why):
            let path = (try? journal.path(of: id)) ?? "<id \(id)>"
            noteProblem("\(path) (id \(id)): \(why); left as it is")
            try? journal.submit([.scrubFinding(ScrubFinding(id: id, path: path, state: .badOnBothNodes,
                                                            detail: "not healed: \(why)", found: Self.now()))], wait: .written)
            cond.lock()
            retryAt[id] = .now + .seconds(300)
            badSources.insert(id)
            cond.unlock()
        case .retry(let why):
            cond.lock()
            retryAt[id] = .now + .seconds(2)
            cond.unlock()
            log.debug("heal of file id \(id) postponed: \(why)")
        }
        cond.lock()
        inflight[id] = nil
        cond.broadcast()
        cond.unlock()
    }

    private func removePlaceholder(_ id: UInt64) {
        guard let path = try? journal.path(of: id), !path.isEmpty,
              brick.isPending(rel: path), let st = try? brick.lstat(path), st.kind == .file, st.st_size == 0 else { return }
        let (parent, name) = ReplicatedVolume.split(path)
        _ = service.applyHealed(.unlink(parentPath: parent, name: name))
        log.info("heal: \(path.debugDescription) was deleted on \(peer) before it arrived; its placeholder is removed")
    }

    func lastResultBad(_ id: UInt64) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        return badSources.contains(id)
    }

    func clearAwaited(_ id: UInt64) {
        let path = try? journal.path(of: id)
        try? journal.submit([.healReceived(id: id)], wait: .written)
        if let p = path { brick.clearPending(rel: p) }
        cond.lock()
        awaited[id] = nil
        badSources.remove(id)
        cond.unlock()
    }

    func recordRate(bytes: Int64, files: Int64) {
        cond.lock()
        let now = ContinuousClock.now
        samples.append((now, bytes, files))
        samples.removeAll { now - $0.at > .seconds(20) }
        cond.unlock()
    }

    // MARK: - HealHooks

    public func received(id: UInt64) {
        cond.lock()
        let want = awaited[id]
        cond.unlock()
        guard let want else { return }
        // The commit verified the peer's bytes; check they are what the walk expected.
        if let rec = try? journal.inode(id), !rec.dirty, rec.hash != nil {
            clearAwaited(id)
            try? journal.submit([.clearScrubFinding(id: id)], wait: .queued)
            cond.lock()
            crawl.filesHealed += 1
            crawl.bytesHealed += rec.size
            cond.unlock()
            recordRate(bytes: rec.size, files: 1)
            if rec.hash != want.hash { log.info("file id \(id) changed on the peer while it was healed; the newest copy is here") }
        }
    }

    public func awaitReplica(id: UInt64) {
        cond.lock()
        let known = awaited[id] != nil
        cond.unlock()
        if !known { expect(id, size: AwaitKind.incompleteReplicaSize, hash: []) }
    }

    public func replacedLocally(id: UInt64) {
        cond.lock()
        let incomplete = awaited[id].map { AwaitKind(storedSize: $0.size) == .incompleteReplica } ?? false
        cond.unlock()
        if incomplete {
            clearAwaited(id)
            log.info("file id \(id): a client replaced its content here; the incomplete copy the peer had sent is no longer awaited")
        }
    }

    public func awaitedSize(id: UInt64) -> Int64? {
        cond.lock()
        defer { cond.unlock() }
        // -1: a copy interrupted by a crash, which keeps showing its own size meanwhile.
        guard !awaited.isEmpty, let size = awaited[id]?.size, !AwaitKind(storedSize: size).keepsOwnSize else { return nil }
        return size
    }

    public func prepareFile(id: UInt64) throws(FSError) {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            cond.lock()
            guard let want = awaited[id] else { cond.unlock(); return }
            if AwaitKind(storedSize: want.size) == .interruptedHere && v.peerOwesUsOrUnknown {
                cond.unlock()
                if ContinuousClock.now > deadline { return }   // serve this node's copy
                usleep(50_000)
                continue
            }
            if inflight[id] != nil {
                _ = cond.wait(for: .milliseconds(50))
                cond.unlock()
            } else {
                inflight[id] = (try? journal.path(of: id)) ?? "<id \(id)>"
                cond.unlock()
                let r = receive(id, want: want)
                finish(id, r)
                switch r {
                case .ok, .gone: return
                case .noCompleteCopy where AwaitKind(storedSize: want.size) == .interruptedHere: return
                case .bad(let why):
                    log.error("file id \(id) cannot be served: not yet healed and \(why)")
                    throw FSError.io
                case .split: throw FSError.io
                case .retry, .noCompleteCopy: break
                }
            }
            if ContinuousClock.now > deadline {
                log.error("file id \(id) is not healed yet and the peer could not send it within 60 s; answering EIO")
                throw FSError.io
            }
            usleep(50_000)
        }
    }

    public func prepareDirectory(path: String) throws(FSError) {
        cond.lock()
        let active = rebuilding
        cond.unlock()
        guard active else { return }
        var dirID = StableID.root
        var cur = ""
        let comps = path.split(separator: "/").map(String.init)
        var i = 0
        while true {
            try ensureListed(dirID, path: cur)
            guard i < comps.count else { return }
            cur = Brick.join(cur, comps[i])
            i += 1
            guard case let (st, id?)? = try? brick.statAndID(cur), st.kind == .directory else { return }
            dirID = id
        }
    }

    /// Runs `body` while no other thread compares directory `id` (the walk and on-demand
    /// listings would otherwise create the same entries twice at once).
    func exclusively<R>(_ id: UInt64, _ body: () throws(HealError) -> R) throws(HealError) -> R {
        cond.lock()
        while listing.contains(id) { cond.wait() }
        listing.insert(id)
        cond.unlock()
        defer {
            cond.lock()
            listing.remove(id)
            cond.broadcast()
            cond.unlock()
        }
        return try body()
    }

    private func ensureListed(_ id: UInt64, path: String) throws(FSError) {
        cond.lock()
        // Listed once is enough (the walk may be comparing it again: no need to wait for that).
        while !listed.contains(id) && listing.contains(id) { cond.wait() }
        if listed.contains(id) || !rebuilding { cond.unlock(); return }
        listing.insert(id)
        cond.unlock()
        var ok = false
        if v.channel.isUp {
            do { _ = try healDirectory(id, path: path, full: false); ok = true } catch {
                log.warning("could not list \(path.isEmpty ? "/" : path) from \(peer) on demand: \(error)")
            }
        }
        cond.lock()
        listing.remove(id)
        if ok { listed.insert(id) }
        let strict = strictRebuild
        cond.broadcast()
        cond.unlock()
        // A replaced disk must not answer "no such file" for what the peer holds: until the
        // directory can be listed, requests in it fail (EIO) instead of seeing it empty.
        if !ok && strict { throw FSError.io }
    }

    /// Bytes and files per second over the last 20 s: received here plus sent whole from here.
    func rate() -> (bytes: Double, files: Double) {
        cond.lock()
        let now = ContinuousClock.now
        samples.removeAll { now - $0.at > .seconds(20) }
        var r = (bytes: 0.0, files: 0.0)
        if let first = samples.first {
            let span = max(1.0, Double((now - first.at).components.seconds))
            r = (Double(samples.reduce(0) { $0 + $1.bytes }) / span, Double(samples.reduce(0) { $0 + $1.files }) / span)
        }
        cond.unlock()
        let sent = v.healSendStats
        return sent.files > 0 ? (r.bytes + sent.bytesPerSecond, r.files + sent.filesPerSecond) : r
    }

    public struct Summary: Sendable {
        public var filesAwaited: Int64
        public var bytesAwaited: Int64
        public var crawl: NodeHealInfo.Crawl
        public var paused: Bool
        public var rateBytesPerSecond: Double
    }

    /// What `twinfs status` shows of the healer: without `info`'s backlog queries, which the
    /// status already makes for its `replication` part.
    public func summary() -> Summary {
        let totals = (try? journal.healPendingTotals()) ?? (files: 0, bytes: 0)
        cond.lock()
        let (c, p) = (crawl, paused)
        cond.unlock()
        return Summary(filesAwaited: totals.files, bytesAwaited: totals.bytes, crawl: c, paused: p, rateBytesPerSecond: rate().bytes)
    }

    public func infoJSON(summary: Bool) -> [UInt8] {
        NodeHealInfo.encode(info(summary: summary))
    }

    /// This node's heal state: the journal's counts plus what the healer is doing now.
    public func info(summary: Bool) -> NodeHealInfo {
        var i = (try? NodeHealInfo.fromJournal(journal, node: node, summary: summary))
            ?? NodeHealInfo.fromJournalFailed(node: node)
        cond.lock()
        i.paused = paused
        i.crawl = crawl
        i.healingNow = Array(inflight.values.sorted().prefix(32))
        let (isRebuilding, peerTotal) = (rebuilding, peerBytes)
        cond.unlock()
        (i.rateBytesPerSecond, i.rateFilesPerSecond) = rate()
        let stats = try? journal.stats()
        if isRebuilding {
            i.state = "HEALING"
            i.bytesLeft = max(i.bytesLeft, peerTotal - (stats?.bytes ?? 0))
        }
        if v.mode == .degraded { i.state = "DEGRADED" }
        if let fs = try? brick.statfs() {
            i.brickFreeBytes = Int64(fs.f_bavail) * Int64(fs.f_frsize)
            i.brickTotalBytes = Int64(fs.f_blocks) * Int64(fs.f_frsize)
        }
        if let st = stats { i.files = st.files; i.bytes = st.bytes }
        i.brickPath = brick.path
        i.journalPath = journal.path
        i.journalBytes = journal.sizeOnDisk()
        i.lastScrub = scrubber.lastFinished
        if i.rateBytesPerSecond > 0 && i.bytesLeft > 0 { i.etaSeconds = Int64(Double(i.bytesLeft) / i.rateBytesPerSecond) }
        return i
    }
}

extension NodeHealInfo {
    public static func fromJournalFailed(node: String) -> NodeHealInfo {
        NodeHealInfo(node: node, reachable: true, state: "JOURNAL-FAILED", pendingEntries: 0, changesToPeer: 0, filesToPeer: 0,
                     bytesToPeer: 0, filesAwaited: 0, bytesAwaited: 0, splitBrain: 0, healingNow: [], bytesLeft: 0,
                     rateBytesPerSecond: 0, rateFilesPerSecond: 0, etaSeconds: nil, paused: false,
                     crawl: Crawl(kind: "none", state: "idle", directories: 0, entries: 0, filesHealed: 0, bytesHealed: 0, problems: 0),
                     entries: nil, entriesNotListed: 0)
    }
}
