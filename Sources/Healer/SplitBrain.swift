import Foundation
import Journal
import PeerProtocol
import Replication
import TwinCore

/// How an admin settles a split brain (the names GlusterFS admins know).
public enum SplitPolicy: Sendable, Equatable {
    /// This node's copy wins when it names this node, the peer's otherwise.
    case source(String)
    case latestMtime
    case biggerFile

    public init?(name: String, source: String?) {
        switch name {
        case "source": guard let s = source else { return nil }; self = .source(s)
        case "latest-mtime": self = .latestMtime
        case "bigger-file": self = .biggerFile
        default: return nil
        }
    }
}

public struct SplitResolution: Codable, Sendable {
    public var path: String
    public var id: UInt64
    /// The node whose copy is now on both; empty when nothing was done.
    public var winner: String
    public var ok: Bool
    public var message: String
}

extension Healer {
    /// Which side wins under `policy`: true for this node. Nil with the reason when the policy
    /// cannot decide (equal times or sizes): an admin must then name the source.
    public static func localWins(_ policy: SplitPolicy, node: String, peer: String,
                          local: FileStateReport, remote: FileStateReport) -> (Bool?, String) {
        switch policy {
        case .source(let n):
            if n == node { return (true, "") }
            if n == peer { return (false, "") }
            return (nil, "'\(n)' is neither this node (\(node)) nor its peer (\(peer))")
        case .latestMtime:
            if local.mtimeNs == remote.mtimeNs { return (nil, "both copies have the same modification time; use --source NODE") }
            return (local.mtimeNs > remote.mtimeNs, "")
        case .biggerFile:
            if local.size == remote.size { return (nil, "both copies have the same size; use --source NODE or --latest-mtime") }
            return (local.size > remote.size, "")
        }
    }

    /// Resolves the split-brain entries at `path` (nil: all of them). The losing copy is kept
    /// in its node's quarantine area; the winning copy is sent whole and verified.
    public func resolveSplitBrain(path: String?, policy: SplitPolicy) -> [SplitResolution] {
        let rows = ((try? journal.splitBrains(limit: 100_000)) ?? []).filter { path == nil || $0.path == path }
        var out: [SplitResolution] = []
        for r in rows {
            guard r.id != 0 else {
                out.append(SplitResolution(path: r.path, id: 0, winner: "", ok: false,
                                           message: "a namespace conflict (\(r.reason)): compare both bricks by hand, then run `twinfs heal full`"))
                continue
            }
            out.append(resolveOne(r, policy: policy))
        }
        return out
    }

    private func resolveOne(_ r: SplitBrainRow, policy: SplitPolicy) -> SplitResolution {
        func result(_ ok: Bool, _ winner: String, _ msg: String) -> SplitResolution {
            SplitResolution(path: r.path, id: r.id, winner: winner, ok: ok, message: msg)
        }
        guard v.channel.isUp else { return result(false, "", "the peer is not reachable; both copies are needed to resolve") }
        let local = v.fileState(r.id, rehash: false)
        guard case .ok(let payload?) = v.channel.call(.fileState(stableID: r.id, rehash: false)),
              let remote = try? FileStateReport.decode(payload) else {
            return result(false, "", "the peer did not describe its copy")
        }
        guard local.exists || remote.exists else { return result(false, "", "neither node has the file any more") }
        let (decided, why) = local.exists && remote.exists
            ? Self.localWins(policy, node: node, peer: peer, local: local, remote: remote)
            : (local.exists, "")
        guard let localWins = decided else { return result(false, "", why) }
        if localWins {
            // Never let a copy win that does not match its own journal (bit rot) or that is
            // still a placeholder awaiting its content: checked before the peer gives up its copy.
            if awaitedSize(id: r.id) != nil {
                return result(false, "", "this node's copy has not been received yet (it is a placeholder); choose the peer's copy")
            }
            let check = v.fileState(r.id, rehash: true)
            guard !check.journalHash.isEmpty, check.bytesHash == check.journalHash else {
                return result(false, "", "this node's copy does not match its recorded XXH3-128 (damaged); choose the peer's copy")
            }
            switch v.channel.call(.resolveSplit(stableID: r.id, role: 1), timeout: .seconds(600)) {
            case .ok: break
            case .refused(let e): return result(false, "", "the peer could not set its copy aside (errno \(e))")
            case .unreachable(let w): return result(false, "", "the peer became unreachable: \(w)")
            }
            v.winSplit(r.id)
            let p = v.pushFile(r.id, verify: .journalHash)
            guard p == .ok else {
                try? v.oweFile(r.id)
                return result(false, node, "this node's copy could not be sent yet (\(p)); it stays owed and is sent when possible")
            }
            return result(true, node, "\(peer)'s copy is kept in its quarantine; \(node)'s copy is now on both")
        }
        // Awaited until it arrives (a failed send is retried by the healer, never forgotten),
        // but brought by the resolution itself, not by a worker racing it.
        cond.lock()
        resolving.insert(r.id)
        cond.unlock()
        defer {
            cond.lock()
            resolving.remove(r.id)
            cond.unlock()
        }
        do { try v.loseSplit(r.id, reason: "split brain resolved in favour of \(peer)'s copy") } catch {
            return result(false, "", "this node could not set its copy aside: \(error)")
        }
        markAwaited(r.id, rel: r.path, size: remote.size, hash: remote.journalHash.isEmpty ? emptyHash : remote.journalHash)
        switch v.channel.call(.resolveSplit(stableID: r.id, role: 2), timeout: .seconds(600)) {
        case .ok: return result(true, peer, "\(node)'s copy is kept in its quarantine; \(peer)'s copy is now on both")
        case .refused(let e): return result(false, peer, "the peer could not send its copy (errno \(e)); run `twinfs heal start` to retry")
        case .unreachable(let w): return result(false, peer, "the peer became unreachable: \(w); run `twinfs heal start` to retry")
        }
    }
}
