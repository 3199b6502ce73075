import ControlSocket
import Foundation
import Healer
import Journal
import PeerProtocol
import TwinCore

/// The control-socket side of `twinfs heal ...` and `twinfs scrub ...`.
extension Node {
    func handleHeal(_ req: ControlRequest, member: ClusterMember?) -> ControlResponse? {
        let heal = ["heal-info", "heal-start", "heal-full", "heal-pause", "heal-resume", "split-brain-list",
                    "split-brain-resolve", "quarantine-list", "scrub-start", "scrub-pause", "scrub-status"]
        guard heal.contains(req.command) else { return nil }
        guard let m = member else {
            return ControlResponse(ok: false, error: "this node has no peer configured: there is no replica to heal from")
        }
        let h = m.healer
        func ok(_ body: some Encodable) -> ControlResponse {
            ControlResponse(ok: true, body: String(decoding: NodeHealInfo.encode(body), as: UTF8.self))
        }
        switch req.command {
        case "heal-info":
            let summary = req.arguments["summary"] == "1"
            var nodes = [h.info(summary: summary)]
            var peerInfo: NodeHealInfo?
            if m.volume.channel.isUp, case .ok(let payload?) = m.volume.channel.call(.healInfo(summary: summary), timeout: .seconds(10)) {
                peerInfo = try? JSONDecoder().decode(NodeHealInfo.self, from: Data(payload.readableBytesView))
            }
            if var p = peerInfo {
                p.reachable = true
                nodes.append(p)
            } else {
                var p = NodeHealInfo.fromJournalFailed(node: h.peer)
                p.reachable = false
                p.state = "UNREACHABLE"
                nodes.append(p)
            }
            return ok(HealInfoDocument(volume: cfg.volume, nodes: nodes))
        case "heal-start":
            h.kick()
            return ok(h.info(summary: true))
        case "heal-full":
            h.requestFull()
            return ok(h.info(summary: true))
        case "heal-pause":
            h.setPaused(true)
            return ok(h.info(summary: true))
        case "heal-resume":
            h.setPaused(false)
            h.kick()
            return ok(h.info(summary: true))
        case "split-brain-list":
            let rows = (try? m.volume.journal.splitBrains(limit: 100_000)) ?? []
            return ok(rows.map { SplitBrainListing(path: $0.path, id: $0.id, reason: $0.reason, detected: $0.detected) })
        case "split-brain-resolve":
            guard let policy = SplitPolicy(name: req.arguments["policy"] ?? "", source: req.arguments["source"]) else {
                return ControlResponse(ok: false, error: "unknown policy; use --source NODE, --latest-mtime or --bigger-file")
            }
            let path = req.arguments["path"].map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
            let results = h.resolveSplitBrain(path: path, policy: policy)
            return ok(results)
        case "quarantine-list":
            let rows = (try? m.volume.journal.quarantine()) ?? []
            return ok(rows.map { QuarantineListing(row: $0, brick: cfg.brick) })
        case "scrub-start":
            h.scrubber.begin()
            return ok(h.scrubber.current())
        case "scrub-pause":
            h.scrubber.pause()
            return ok(h.scrubber.current())
        case "scrub-status":
            return ok(h.scrubber.current())
        default:
            return nil
        }
    }
}

public struct SplitBrainListing: Codable, Sendable {
    public var path: String
    public var id: UInt64
    public var reason: String
    public var detected: String
}

public struct QuarantineListing: Codable, Sendable {
    public var qid: Int64
    public var id: UInt64
    public var path: String
    /// Absolute path of the kept copy inside the brick.
    public var stored: String
    public var size: Int64
    public var xxh128: String
    public var reason: String
    public var created: String

    init(row: QuarantineRow, brick: String) {
        qid = row.qid; id = row.id; path = row.path; stored = brick + "/" + row.stored; size = row.size
        xxh128 = row.hash.map { String(format: "%02x", $0) }.joined(); reason = row.reason; created = row.created
    }
}
