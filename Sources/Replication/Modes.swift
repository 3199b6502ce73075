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

/// The mode a change sees (live, degraded, catching up) and the node's report of it.
extension ReplicatedVolume {
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
}
