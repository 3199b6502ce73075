import Foundation
import NIOCore

/// A writable handle's replication state.
final class RepHandle: @unchecked Sendable {
    let id: UInt64
    /// Where the file is (a rename of it or of a directory above it moves this).
    var path: String
    /// Guards every field of the handle. After the volume's `handles` table; before nothing
    /// (sends and waits for writes in flight happen after it is released).
    let cond = NSCondition()
    /// Opened while live: its writes stream to the peer.
    var live = false
    /// Written since the last commit to the peer.
    var touched = false
    /// A write did not reach the peer: the whole file must go.
    var broken = false
    /// Written while the peer could not be told.
    var apart = false
    var inFlight = 0
    /// Writes through this handle so far (a commit tells from it whether one raced it).
    var writes: UInt64 = 0
    /// Small adjacent writes not sent yet, at `pendingOffset`: sent as one message once they
    /// reach `ReplicatedVolume.coalesceLimit`, at a write elsewhere in the file, and before
    /// any commit (close, fsync) or truncate.
    var pending: [UInt8] = []
    var pendingOffset: Int64 = 0

    /// Whether a write may stream now (caller holds `cond`). If not, the handle is broken (its
    /// close sends the whole file, or owes it), apart too if the peer is unreachable, and
    /// what it gathered is dropped (the whole file carries those bytes).
    func canStream(liveNow: Bool) -> Bool {
        if live && !broken && liveNow { return true }
        broken = true
        if !liveNow { apart = true }
        pending = []
        return false
    }

    init(id: UInt64, path: String) {
        self.id = id
        self.path = path
    }

    func drain() {
        cond.lock()
        while inFlight > 0 { cond.wait() }
        cond.unlock()
    }

    /// Every field is read and written under `cond` (FUSE threads and write completions).
    func with<R>(_ body: (RepHandle) -> R) -> R {
        cond.lock()
        defer { cond.unlock() }
        return body(self)
    }
}
