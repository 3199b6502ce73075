import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Logging
import Replication
import TwinCore

/// Bit-rot scrub: re-reads every file of this brick at a throttled rate and re-hashes it. A
/// file whose bytes no longer match its journal hash is copied to quarantine (kept for
/// forensics), then replaced by the peer's copy, which the peer checks against the same hash
/// before sending and this node checks again on arrival. Bad on both nodes: reported, left
/// untouched. The position is kept in the journal, so a pause or a restart resumes.
public final class Scrubber: @unchecked Sendable {
    public struct Status: Codable, Sendable {
        /// idle, running, paused
        public var state: String
        public var started: String?
        public var finished: String?
        public var nextScheduled: String?
        public var filesChecked: Int64
        public var bytesChecked: Int64
        public var filesTotal: Int64
        public var bytesTotal: Int64
        public var corruptFound: Int64
        public var repaired: Int64
        public var rateBytesPerSecond: Int64
        public var findings: [ScrubFinding]

        enum CodingKeys: String, CodingKey {
            case state, started, finished, findings, repaired
            case nextScheduled = "next_scheduled"
            case filesChecked = "files_checked"
            case bytesChecked = "bytes_checked"
            case filesTotal = "files_total"
            case bytesTotal = "bytes_total"
            case corruptFound = "corrupt_found"
            case rateBytesPerSecond = "rate_bytes_per_second"
        }
    }

    let v: ReplicatedVolume
    let journal: Journal
    let log: Logger
    let throttle: Throttle
    let interval: Double?
    weak var healer: Healer?
    private let cond = MonotonicCondition()
    private var stopped = false
    private var status: Status
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    /// Timestamps with milliseconds: two scrubs may start within one second.
    static func stamp(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }

    static func date(from s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.date(from: s) ?? ISO8601DateFormatter().date(from: s)
    }

    init(volume: ReplicatedVolume, settings: HealSettings, logger: Logger) {
        v = volume
        journal = volume.journal
        log = logger
        throttle = Throttle(bytesPerSecond: settings.scrubBytesPerSecond)
        interval = settings.scrubInterval
        let m = { (k: String) in (try? volume.journal.meta(k)) ?? nil }
        status = Status(state: m("scrub_state") ?? "idle", started: m("scrub_started"), finished: m("scrub_finished"),
                        filesChecked: Int64(m("scrub_files") ?? "") ?? 0, bytesChecked: Int64(m("scrub_bytes") ?? "") ?? 0,
                        filesTotal: 0, bytesTotal: 0, corruptFound: Int64(m("scrub_found") ?? "") ?? 0,
                        repaired: Int64(m("scrub_repaired") ?? "") ?? 0,
                        rateBytesPerSecond: settings.scrubBytesPerSecond, findings: [])
    }

    func start() {
        let t = Thread { [self] in run(); done.signal() }
        t.name = "twinfs-scrub"
        thread = t
        t.start()
    }

    func requestStop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    func stop() {
        requestStop()
        if thread != nil { done.wait() }
        thread = nil
    }

    /// Starts a scrub (or resumes a paused one).
    public func begin() {
        cond.lock()
        if status.state != "paused" {
            status.filesChecked = 0
            status.bytesChecked = 0
            status.corruptFound = 0
            status.repaired = 0
            status.started = Self.stamp(Date())
            status.finished = nil
            try? journal.submit([.setMeta(key: "scrub_cursor", value: "0"), .setMeta(key: "scrub_started", value: status.started!)],
                                wait: .written)
        }
        status.state = "running"
        try? journal.submit([.setMeta(key: "scrub_state", value: "running")], wait: .written)
        cond.broadcast()
        cond.unlock()
        log.notice("scrub started: re-reading every file of this brick at up to \(throttle.bytesPerSecond / 1_000_000) MB/s")
    }

    public func pause() {
        cond.lock()
        if status.state == "running" { status.state = "paused" }
        try? journal.submit([.setMeta(key: "scrub_state", value: status.state)], wait: .written)
        cond.broadcast()
        cond.unlock()
    }

    public var lastFinished: String? {
        cond.lock()
        defer { cond.unlock() }
        return status.finished
    }

    public func current() -> Status {
        cond.lock()
        var s = status
        cond.unlock()
        if let st = try? journal.stats() { s.filesTotal = st.files; s.bytesTotal = st.bytes }
        s.findings = (try? journal.scrubFindings(limit: 1000)) ?? []
        if let i = interval, s.state != "running" {
            let last = s.finished.flatMap { Self.date(from: $0) } ?? Date()
            s.nextScheduled = Self.stamp(last.addingTimeInterval(i))
        }
        return s
    }

    private func run() {
        while true {
            cond.lock()
            var due = false
            while !stopped && status.state != "running" {
                _ = cond.wait(for: .milliseconds(5000))
                due = scheduleDue()
                if due { break }
            }
            if stopped { cond.unlock(); return }
            cond.unlock()
            // Decided under the lock (`status` is shared with the control socket's threads).
            if due { begin() }
            pass()
        }
    }

    /// The config's schedule: a scrub is due `interval` after the last one finished. Caller holds `cond`.
    private func scheduleDue() -> Bool {
        guard let i = interval, status.state == "idle" else { return false }
        guard let f = status.finished, let last = Self.date(from: f) else {
            // Never scrubbed: the first one starts one interval after the node first started.
            let first = ((try? journal.meta("created")) ?? nil).flatMap { Self.date(from: $0) } ?? Date()
            return Date().timeIntervalSince(first) > i
        }
        return Date().timeIntervalSince(last) > i
    }

    private var running: Bool {
        cond.lock()
        defer { cond.unlock() }
        return !stopped && status.state == "running"
    }

    private func pass() {
        var cursor = UInt64(((try? journal.meta("scrub_cursor")) ?? nil) ?? "") ?? 0
        while running {
            guard let rows = try? journal.cleanFiles(after: cursor, limit: 256) else { return }
            if rows.isEmpty {
                cond.lock()
                status.state = "idle"
                status.finished = Self.stamp(Date())
                let s = status
                cond.unlock()
                try? journal.submit([.setMeta(key: "scrub_state", value: "idle"), .setMeta(key: "scrub_finished", value: s.finished!)],
                                    wait: .durable)
                log.notice("scrub finished: \(s.filesChecked) files (\(s.bytesChecked) bytes) re-hashed, \(s.corruptFound) corrupt, \(s.repaired) repaired")
                return
            }
            for rec in rows {
                guard running else { break }
                cursor = rec.id
                throttle.acquire(max(rec.size, 4096))
                check(rec)
            }
            cond.lock()
            let s = status
            cond.unlock()
            try? journal.submit([.setMeta(key: "scrub_cursor", value: "\(cursor)"), .setMeta(key: "scrub_files", value: "\(s.filesChecked)"),
                                 .setMeta(key: "scrub_bytes", value: "\(s.bytesChecked)"), .setMeta(key: "scrub_found", value: "\(s.corruptFound)"),
                                 .setMeta(key: "scrub_repaired", value: "\(s.repaired)")], wait: .written)
        }
    }

    private func check(_ rec: InodeRecord) {
        guard let path = try? journal.path(of: rec.id), let expected = rec.hash else { return }
        let fd: Int32
        do { fd = try v.local.brick.openFile(path, flags: O_RDONLY) } catch {
            // Gone from the brick behind TwinFS's back while the journal still lists it (and not
            // just unlinked or renamed by a client: the journal, flushed, still says so).
            try? journal.submit([], wait: .written)
            guard error.errno == ENOENT, let now = try? journal.inode(rec.id), now.version == rec.version,
                  ((try? journal.path(of: rec.id)) ?? nil) == path, (try? v.local.brick.lstat(path)) == nil else { return }
            cond.lock()
            status.filesChecked += 1
            status.corruptFound += 1
            cond.unlock()
            log.critical("SCRUB: \(path.debugDescription) (id \(rec.id)) is missing from the brick; restoring it from the peer")
            repair(rec, path: path)
            return
        }
        let result = try? XXH128Hasher.hash(fd: fd)
        close(fd)
        cond.lock()
        status.filesChecked += 1
        status.bytesChecked += result?.1 ?? 0
        cond.unlock()
        guard let (digest, size) = result, digest.bytes != expected || size != rec.size else { return }
        // Written or healed meanwhile: the record moved on, the bytes are not suspect.
        guard let now = try? journal.inode(rec.id), now.version == rec.version, !now.dirty, now.hash == expected,
              healer?.awaitedSize(id: rec.id) == nil else { return }
        cond.lock()
        status.corruptFound += 1
        cond.unlock()
        log.critical("SCRUB: \(path.debugDescription) (id \(rec.id)) no longer matches its journal: \(size) bytes hashing to \(digest.hex), recorded \(rec.size) bytes \(expected.map { String(format: "%02x", $0) }.joined()); repairing from the peer")
        repair(rec, path: path)
    }

    /// The bad copy goes to quarantine; the peer's copy, checked against the same hash, replaces it.
    private func repair(_ rec: InodeRecord, path: String) {
        let brick = v.local.brick
        var detail = ""
        if (try? brick.lstat(path)) != nil, let q = try? brick.quarantineCopy(rel: path, id: rec.id, tag: "scrub") {
            let row = QuarantineRow(id: rec.id, path: path, stored: q.stored, size: q.size, hash: q.hash,
                                    reason: "failed scrub: bytes no longer matched the recorded XXH3-128",
                                    created: Self.stamp(Date()))
            try? journal.submit([.quarantined(row)], wait: .durable)
            detail = "bad copy kept at \(q.stored); "
        }
        guard let healer else { return }
        healer.markAwaited(rec.id, rel: path, size: rec.size, hash: rec.hash!)
        // Wait (bounded) for the healer's workers to receive it.
        let deadline = Date().addingTimeInterval(600)
        while healer.awaitedSize(id: rec.id) != nil && Date() < deadline && running && !healer.lastResultBad(rec.id) {
            usleep(50_000)
        }
        let now = Self.stamp(Date())
        if healer.lastResultBad(rec.id) {
            healer.clearAwaited(rec.id)
            log.critical("SCRUB: \(path.debugDescription) is bad on both nodes; left untouched on both, reported")
            try? journal.submit([.scrubFinding(ScrubFinding(id: rec.id, path: path, state: .badOnBothNodes,
                                                            detail: detail + "the peer's copy does not match the recorded hash either",
                                                            found: now))], wait: .durable)
        } else if healer.awaitedSize(id: rec.id) == nil {
            cond.lock()
            status.repaired += 1
            cond.unlock()
            log.notice("SCRUB: \(path.debugDescription) repaired from the peer's verified copy")
            try? journal.submit([.scrubFinding(ScrubFinding(id: rec.id, path: path, state: .repaired,
                                                            detail: detail + "replaced by the peer's verified copy", found: now))], wait: .durable)
        } else {
            try? journal.submit([.scrubFinding(ScrubFinding(id: rec.id, path: path, state: .awaitingPeer,
                                                            detail: detail + "the peer's copy is awaited; reads are served from the peer", found: now))],
                                wait: .durable)
        }
    }
}
