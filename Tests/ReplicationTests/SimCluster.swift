import BrickStore
import Fixity
import Foundation
import Glibc
import Healer
import Journal
import Logging
import Replication
import ReplicationTesting
import TwinCore
import Volume
import XCTest

/// Log lines of one run, kept to print when its seed fails (bounded: a long run keeps its last lines).
final class RunLog: Sendable {
    /// The lines, oldest first.
    private let lines = Locked<[String]>([])
    let limit = ProcessInfo.processInfo.environment["TWINFS_LOG_LINES"].flatMap(Int.init) ?? 400

    func append(_ line: String) {
        lines.with { l in
            l.append(line)
            if l.count > limit { l.removeFirst(l.count - limit) }
        }
    }

    var all: [String] { lines.with { $0 } }

    func logger(_ node: LinkSide) -> Logger {
        var l = Logger(label: "sim.\(node)") { _ in RunLogHandler(log: self, node: node) }
        l.logLevel = ProcessInfo.processInfo.environment["TWINFS_LOG_INFO"] == "1" ? .info : .notice
        return l
    }
}

struct RunLogHandler: LogHandler {
    let log: RunLog
    let node: LinkSide
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { log.append("\(node) \(event.level): \(event.message)") }
}

/// One node of an in-process pair, wired as `ClusterMember` wires a real one (without FUSE):
/// brick + journal + LocalVolume, ReplicatedVolume, PeerService, CatchUp, Healer.
final class SimNode {
    let side: LinkSide
    let dir: String
    let link: InProcessLink
    let log: RunLog
    private(set) var local: LocalVolume
    private(set) var journal: Journal
    private(set) var volume: ReplicatedVolume
    private(set) var service: PeerService
    private(set) var catchUp: CatchUp
    private(set) var healer: Healer
    private(set) var running = true

    static let timeout = Duration.seconds(1)
    /// No rate limit (tmpfs, small files) and no scheduled scrub: the scrubber repairs rot,
    /// and the simulation injects none.
    static let heal = HealSettings(rateBytesPerSecond: 0, concurrency: 2, scrubBytesPerSecond: 0, scrubInterval: nil)

    init(_ side: LinkSide, dir: String, link: InProcessLink, log: RunLog) throws {
        self.side = side
        self.dir = dir
        self.link = link
        self.log = log
        (local, journal, volume, service, catchUp, healer) = try Self.open(side, dir: dir, link: link, log: log)
    }

    /// Opens from disk as a start does: recovery, then replication; attaches to the link.
    static func open(_ side: LinkSide, dir: String, link: InProcessLink, log: RunLog) throws
        -> (LocalVolume, Journal, ReplicatedVolume, PeerService, CatchUp, Healer) {
        let logger = log.logger(side)
        let (local, journal) = try makeVolume(dir, node: "\(side)", ordinal: side == .a ? 1 : 2, logger: logger)
        _ = try local.recover()
        let volume = try ReplicatedVolume(local: local, channel: PeerChannel(transport: link.transport(from: side), timeout: timeout),
                                          ordinal: side == .a ? 1 : 2, logger: logger)
        let service = PeerService(volume: volume, logger: logger) { _ in }
        volume.localApply = { [service] m in service.applyHealed(m) }
        link.attach(side, service)
        let catchUp = CatchUp(volume: volume, logger: logger)
        let healer = try Healer(volume: volume, service: service, node: "\(side)", peer: "\(side.other)",
                                settings: heal, logger: logger)
        volume.healHooks = healer
        catchUp.start()
        healer.start()
        return (local, journal, volume, service, catchUp, healer)
    }

    /// Stops the node. Not clean: as a killed process, its journal is closed without the clean
    /// mark and the next start recovers from brick and journal.
    func stop(clean: Bool) {
        guard running else { return }
        running = false
        link.detach(side)
        healer.requestStop()
        catchUp.stop()
        // Its threads end once their requests in flight failed with the link.
        healer.stop()
        service.applier.releaseAll()
        journal.close(cleanShutdown: clean)
    }

    /// A start after `stop`: everything reopened from disk.
    func restart() throws {
        precondition(!running)
        (local, journal, volume, service, catchUp, healer) = try Self.open(side, dir: dir, link: link, log: log)
        running = true
    }

    /// The id of the entry at `rel` on this node's brick (root for "").
    func ref(_ rel: String) -> NodeRef? {
        if rel.isEmpty { return .root }
        return local.brick.readID(rel: rel).map { NodeRef(id: $0, path: rel) }
    }

    func kind(_ rel: String) -> EntryKind? { (try? local.brick.lstat(rel))?.kind }

    /// Nothing owed either way as far as this node knows, live, and nothing left to heal
    /// (what `twinfs status` reports as HEALTHY or SPLIT-BRAIN, not HEALING).
    var settled: Bool {
        guard running, volume.mode == .live, let b = try? journal.peerBacklog() else { return false }
        return b.ops == 0 && b.files == 0 && !volume.peerOwesUs && !healing
    }

    /// The healer has work left. A file the peer holds in split brain stays awaited here until
    /// an admin resolves it (the healer's `.split`: never served as an empty file), which is
    /// the split brain's visible state, not healing left undone.
    var healing: Bool {
        guard healer.busy else { return false }
        let rows = (try? journal.healPending(limit: 1000)) ?? []
        return rows.isEmpty || rows.contains { !volume.isSplit($0.id) }
    }
}

/// A journal's view of the namespace: path -> (id, kind, size, hash), and its dirty inodes.
struct JournalView: Equatable {
    struct Row: Equatable {
        var id: UInt64
        var kind: EntryKind
        var size: Int64
        var hash: [UInt8]?
    }
    var rows: [String: Row] = [:]
    var dirty: [UInt64] = []

    init(_ j: Journal) throws {
        var stack: [(String, UInt64)] = [("", StableID.root)]
        var seen: Set<UInt64> = []
        while let (rel, id) = stack.popLast() {
            guard let r = try j.inode(id) else { continue }
            rows[rel] = Row(id: id, kind: r.kind, size: r.kind == .directory ? 0 : r.size, hash: r.hash)
            guard r.kind == .directory, seen.insert(id).inserted else { continue }
            for (name, child) in try j.children(of: id) { stack.append((rel.isEmpty ? name : rel + "/" + name, child)) }
        }
        dirty = try j.dirtyInodes().sorted()
    }
}

/// Whether `path` is `dir` or lies beneath it.
func isWithin(_ path: String, _ dir: String) -> Bool {
    dir.isEmpty || path == dir || path.hasPrefix(dir + "/")
}
