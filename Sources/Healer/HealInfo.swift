import Foundation
import Journal
import Replication
import TwinCore

/// `twinfs heal info --json`: one object per node. The shape is documented in README.md and
/// kept stable (new keys may be added; none is renamed or removed).
public struct HealInfoDocument: Codable, Sendable {
    public var volume: String
    public var nodes: [NodeHealInfo]

    public init(volume: String, nodes: [NodeHealInfo]) {
        self.volume = volume
        self.nodes = nodes
    }
}

public struct NodeHealInfo: Codable, Sendable {
    public struct Entry: Codable, Sendable {
        public var path: String
        public var id: UInt64
        /// "to-peer" (this node must send it), "awaited" (this node must receive it),
        /// "change-to-peer" (a namespace change the peer has not applied yet).
        public var why: String
    }

    public struct Crawl: Codable, Sendable {
        /// "rebuild" (replaced disk), "full" (`twinfs heal full`) or "none".
        public var kind: String
        /// idle, running, paused, waiting-for-peer, done
        public var state: String
        public var started: String?
        public var finished: String?
        public var directories: Int64
        public var entries: Int64
        public var filesHealed: Int64
        public var bytesHealed: Int64
        public var problems: Int64
        public var lastProblem: String?

        enum CodingKeys: String, CodingKey {
            case kind, state, started, finished, directories, entries, problems
            case filesHealed = "files_healed"
            case bytesHealed = "bytes_healed"
            case lastProblem = "last_problem"
        }
    }

    public var node: String
    /// False when the node could not be asked (its entry then holds what is known of it).
    public var reachable: Bool
    public var state: String
    public var pendingEntries: Int64
    public var changesToPeer: Int64
    public var filesToPeer: Int64
    public var bytesToPeer: Int64
    public var filesAwaited: Int64
    public var bytesAwaited: Int64
    public var splitBrain: Int64
    public var healingNow: [String]
    public var bytesLeft: Int64
    public var rateBytesPerSecond: Double
    public var rateFilesPerSecond: Double
    /// Seconds until nothing is pending at the current rate; nil while nothing moves.
    public var etaSeconds: Int64?
    public var paused: Bool
    public var crawl: Crawl
    /// Omitted with --summary; at most 1000 (see `entriesNotListed`).
    public var entries: [Entry]?
    public var entriesNotListed: Int64
    /// The node's brick and volume, for a one-screen view of the pair (`twinfs status`).
    public var brickPath: String?
    public var brickFreeBytes: Int64?
    public var brickTotalBytes: Int64?
    public var journalPath: String?
    public var journalBytes: Int64?
    public var files: Int64?
    public var bytes: Int64?
    public var lastScrub: String?

    enum CodingKeys: String, CodingKey {
        case node, reachable, state, paused, crawl, entries, files, bytes
        case brickPath = "brick_path"
        case journalPath = "journal_path"
        case journalBytes = "journal_bytes"
        case brickFreeBytes = "brick_free_bytes"
        case brickTotalBytes = "brick_total_bytes"
        case lastScrub = "last_scrub"
        case pendingEntries = "pending_entries"
        case changesToPeer = "changes_to_peer"
        case filesToPeer = "files_to_peer"
        case bytesToPeer = "bytes_to_peer"
        case filesAwaited = "files_awaited"
        case bytesAwaited = "bytes_awaited"
        case splitBrain = "split_brain"
        case healingNow = "healing_now"
        case bytesLeft = "bytes_left"
        case rateBytesPerSecond = "rate_bytes_per_second"
        case rateFilesPerSecond = "rate_files_per_second"
        case etaSeconds = "eta_seconds"
        case entriesNotListed = "entries_not_listed"
    }

    /// What the journal alone says (a stopped node, or before the healer adds its live view).
    public static func fromJournal(_ j: Journal, node: String, summary: Bool, listLimit: Int = 1000) throws(JournalError) -> NodeHealInfo {
        let b = try j.peerBacklog()
        let awaited = try j.healPendingTotals()
        var info = NodeHealInfo(
            node: node, reachable: true, state: "HEALTHY", pendingEntries: b.ops + b.files + awaited.files,
            changesToPeer: b.ops, filesToPeer: b.files, bytesToPeer: b.bytes, filesAwaited: awaited.files,
            bytesAwaited: awaited.bytes, splitBrain: b.splitBrain, healingNow: [], bytesLeft: b.bytes + awaited.bytes,
            rateBytesPerSecond: 0, rateFilesPerSecond: 0, etaSeconds: nil, paused: false,
            crawl: Crawl(kind: "none", state: "idle", directories: 0, entries: 0, filesHealed: 0, bytesHealed: 0, problems: 0),
            entries: nil, entriesNotListed: 0)
        if b.splitBrain > 0 { info.state = "SPLIT-BRAIN" } else if info.pendingEntries > 0 { info.state = "HEALING" }
        if (try j.meta("rebuild")) == "pending" {
            info.crawl.kind = "rebuild"
            info.crawl.state = "waiting"
            if info.state == "HEALTHY" { info.state = "HEALING" }
        }
        guard !summary else { return info }
        var entries: [Entry] = []
        for r in try j.peerOps(after: 0, limit: listLimit) {
            let what = (try? ReplicatedVolume.decodeOp(r.message)).map { ReplicatedVolume.describe($0) } ?? "change \(r.seq)"
            entries.append(Entry(path: what, id: 0, why: "change-to-peer"))
        }
        if entries.count < listLimit {
            for f in try j.peerFiles(limit: listLimit - entries.count) {
                entries.append(Entry(path: (try j.path(of: f.id)) ?? "<id \(f.id)>", id: f.id, why: "to-peer"))
            }
        }
        if entries.count < listLimit {
            for f in try j.healPending(limit: listLimit - entries.count) {
                entries.append(Entry(path: (try j.path(of: f.id)) ?? "<id \(f.id)>", id: f.id, why: "awaited"))
            }
        }
        info.entries = entries
        info.entriesNotListed = max(0, info.pendingEntries - Int64(entries.count))
        return info
    }

    public static func encode(_ doc: some Encodable, pretty: Bool = false) -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? enc.encode(doc)) ?? Data("{}".utf8))
    }
}
