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

/// What the peer owes this node, so that a node that was down never serves stale copies.
extension ReplicatedVolume {
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
}
