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

/// close() and fsync(): the local commit and the peer's verified commit of a file's content.
extension ReplicatedVolume {
    /// close()/fsync(): the local commit and the peer's commit, in parallel when the hash is
    /// known up front. Returns once both disks have the bytes, or the peer is owed the file.
    func commit(handle: UInt64, _ localCommit: () throws(FSError) -> Void) throws(FSError) {
        guard let rh = handles.with({ $0[handle] }), rh.with({ $0.touched }) else { return try localCommit() }
        // Every handle's gathered writes, not only this one's: the commit covers the whole file.
        drainWrites(of: rh.id)
        let (live, broken, apart, path, seen) = rh.with { h -> (Bool, Bool, Bool, String, UInt64) in
            h.touched = false
            return (h.live, h.broken, h.apart, h.path, h.writes)
        }
        var writing = true
        defer { if writing { doneWriting(rh.id) } }
        // A write through this handle on another thread that raced this commit may not be
        // covered by it: the handle counts as written again, so the next commit settles it.
        defer { if rh.with({ $0.writes != seen }) { markTouched(rh) } }
        let c = CommitContext(rh: rh, handle: handle, path: path, seen: seen, generation: streamGeneration(rh.id))
        guard live, !apart, gate.mode == .live else {
            try localCommit()
            try owe(rh.id, changedApart: apart)
            return try permitApart()
        }
        // A write or truncate the peer did not apply (a fallocate, which has no message): the
        // commit cannot settle it.
        if broken {
            try localCommit()
            log.notice("\(path.debugDescription): a change did not stream to the peer; sending the whole file")
            return try sendWhole(c, writing: &writing)
        }
        try commitOnBoth(c, localCommit, writing: &writing)
    }

    /// What one commit of a handle works with.
    struct CommitContext {
        let rh: RepHandle
        let handle: UInt64
        let path: String
        /// The handle's write count when the commit began.
        let seen: UInt64
        /// The file's streaming row generation this commit settles.
        let generation: Int64
    }

    /// The generation of the file's streaming or owed row this commit will settle. Marks made
    /// after this point (another handle, a later write) are newer and stay. Our own mark may
    /// still be queued: a fresh row starts at generation 1; an owed row is read again once
    /// the queue is written.
    func streamGeneration(_ id: UInt64) -> Int64 {
        guard let row = (try? journal.peerFile(id)) ?? nil else { return 1 }
        guard row.owed else { return row.generation }
        try? journal.submit([], wait: .written)
        return ((try? journal.peerFile(id)) ?? nil)?.generation ?? row.generation
    }

    /// The live commit: sent before the local fsync when the hash is known from the stream
    /// (the two fsyncs overlap), else after it from the journal's hash; a refusal sends the
    /// whole file.
    func commitOnBoth(_ c: CommitContext, _ localCommit: () throws(FSError) -> Void, writing: inout Bool) throws(FSError) {
        let id = c.rh.id
        var pending: PendingCall?
        if let p = local.contentPreview(handle: c.handle) {
            pending = channel.start(.commit(path: c.path, stableID: id, size: p.size, xxh128: p.hash, mtimeNs: p.mtimeNs))
        }
        do throws(FSError) { try localCommit() } catch {
            _ = pending?.wait()
            c.rh.with { $0.broken = true }
            throw error
        }
        if pending == nil {
            guard let rec = try? journal.inode(id), let hash = rec.hash else { try owe(id); return }
            pending = channel.start(.commit(path: c.path, stableID: id, size: rec.size, xxh128: hash, mtimeNs: rec.mtimeNs))
        }
        switch pending!.wait() {
        case .ok:
            settle(id, generation: c.generation)
        case .unreachable(let why):
            markDegraded(why)
            c.rh.with { $0.live = false }
            try owe(id)
            // Durable here and owed, not acknowledged without the lease (see `finishTransaction`).
            try permitApart(cutOff: true)
        case .refused(let e) where e == splitBrainErrno:
            recordSplitBrain(.entry(id), path: c.path, reason: "the peer changed this file too while the nodes were apart")
        case .refused(let e):
            // The peer's bytes differ (a lost write, or writers on both nodes): send the whole file.
            log.warning("peer refused the commit of \(c.path.debugDescription) (errno \(e)); sending the whole file")
            try sendWhole(c, writing: &writing)
        }
    }

    /// The peer's copy cannot be brought up to date by a commit: the whole file goes now, so
    /// that this close or fsync, too, returns with the bytes on both disks.
    func sendWhole(_ c: CommitContext, writing: inout Bool) throws(FSError) {
        let id = c.rh.id
        doneWriting(id)
        writing = false
        switch pushFile(id) {
        case .gone where (try? journal.path(of: id))?.isEmpty == false:
            // Renamed while it was being sent: still here, so still owed.
            try owe(id)
        case .ok, .gone:
            settle(id, generation: c.generation)
            // The peer holds the file as it is: this handle's next writes stream again,
            // unless one ran meanwhile (the push may have missed it).
            c.rh.with { if $0.writes == c.seen { $0.broken = false } }
        case .unreachable:
            try owe(id)
            try permitApart(cutOff: true)
        case .splitBrain: break
        case .failed(let why), .badSource(let why):
            log.error("could not bring the peer's copy of \(c.path.debugDescription) up to date: \(why); it stays owed")
            try owe(id)
        }
    }

    public func flush(handle: UInt64) throws(FSError) {
        try commit(handle: handle) { () throws(FSError) in try local.flush(handle: handle) }
    }

    public func fsync(handle: UInt64, dataOnly: Bool) throws(FSError) {
        try commit(handle: handle) { () throws(FSError) in try local.fsync(handle: handle, dataOnly: dataOnly) }
    }

    public func release(handle: UInt64) throws(FSError) {
        defer { _ = handles.with { $0.removeValue(forKey: handle) } }
        do throws(FSError) {
            try commit(handle: handle) { () throws(FSError) in try local.flush(handle: handle) }
        } catch {
            try? local.release(handle: handle)
            throw error
        }
        try local.release(handle: handle)
    }
}
