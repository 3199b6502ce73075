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

/// The whole-file push: catch-up, pulls, heal sends and the repair of a refused commit.
extension ReplicatedVolume {
    /// What a push checks of this node's bytes before a single one leaves.
    public enum SourceCheck: Sendable, Equatable {
        /// Nothing: the file is this node's newest (a commit's repair, catch-up, a pull).
        case none
        /// Its bytes must hash to this journal's clean XXH3-128 (a heal: never spread a bad copy).
        case journalHash
        /// Its bytes must hash to this XXH3-128 (what the asking peer expects).
        case hash([UInt8])
    }

    public enum PushResult: Sendable, Equatable {
        case ok, gone, unreachable, splitBrain
        case failed(String)
        /// This node's bytes do not hash to what they must (bit rot, or a change behind
        /// TwinFS's back): nothing was sent.
        case badSource(String)
    }

    /// Sends file `id` as it is on this brick now: staged at the peer (created if missing, with
    /// its id, attributes and size), every byte, then a commit whose XXH3-128 the peer checks
    /// against its own hash of the bytes it received before it swaps them in.
    /// One push per file at a time; on node 2 the content lock is also taken on node 1, so two
    /// pushes of one file in opposite directions cannot cross.
    /// `verify`: what to check of the bytes, re-read, before a single one leaves.
    public func pushFile(_ id: UInt64, verify: SourceCheck = .none) -> PushResult {
        guard beginPush(id) else { return .failed("the file is being written; its own close sends it") }
        defer { endPush(id) }
        if isSplit(id) { return .splitBrain }
        let release: () -> Void
        do { release = try takeLocks(["c/\(id)"], live: channel.isUp) } catch { return .failed("\(error)") }
        defer { release() }
        let fd: Int32, path: String
        switch openForPush(id) {
        case .success(let opened): (fd, path) = opened
        case .failure(let stopped): return stopped.result
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failed("stat: \(FSError.last)") }
        guard st.kind == .file else { return .gone }
        if let bad = checkSource(fd, id: id, path: path, size: Int64(st.st_size), verify) { return bad }
        let push = Push(id: id, path: path, volume: self)
        // Staged at the peer: its readers keep the old version whole until the verified commit.
        if let r = push.outcome(channel.call(.stageWhole(parentPath: push.parent, name: push.name, mode: UInt32(st.st_mode),
                                                         uid: st.st_uid, gid: st.st_gid, stableID: id, size: Int64(st.st_size))), "create") {
            return r
        }
        let sent: (bytes: Int64, hash: [UInt8])
        switch sendBytes(fd, size: Int64(st.st_size), push) {
        case .success(let s): sent = s
        case .failure(let r): return r.result
        }
        if let r = push.outcome(channel.call(.commit(path: path, stableID: id, size: sent.bytes, xxh128: sent.hash,
                                                     mtimeNs: st.mtimeNs)), "commit") { return r }
        sendSamples.with { $0.append((.now, sent.bytes)) }
        return attributesChanged(fd, since: st, push) ?? .ok
    }

    /// The peer's own chmod or chown, applied here while the push ran, may have been answered
    /// before the peer took the commit: the peer then owed it no more and took the attributes
    /// the push read at its start (seed 43). The attributes as they are now follow the commit;
    /// nil when nothing changed. Not sent: the push failed, and its retry carries them.
    func attributesChanged(_ fd: Int32, since st: stat, _ push: Push) -> PushResult? {
        var now = stat()
        guard fstat(fd, &now) == 0 else { return .failed("stat: \(FSError.last)") }
        guard (now.st_mode, now.st_uid, now.st_gid) != (st.st_mode, st.st_uid, st.st_gid) else { return nil }
        let update = AttrUpdate(mode: UInt32(now.st_mode & 0o7777), uid: now.st_uid, gid: now.st_gid)
        return push.outcome(channel.call(.setattr(path: push.path, changes: update)), "setattr")
    }

    /// Opens file `id` under the name the journal gives it now. `.gone`, which settles what is
    /// owed, only when the journal names it nowhere: a name that does not open, or holds
    /// another file, may be changing under this push (a rename of the peer's, replayed here
    /// between the journal's answer and the open; seed 95: the owed file was taken for gone,
    /// and the peer's own version of it, changed apart too, then replaced this node's
    /// acknowledged one on both nodes). Such a name is looked up again; after a few tries the
    /// push fails, and the file stays owed.
    func openForPush(_ id: UInt64) -> Result<(fd: Int32, path: String), PushStopped> {
        func stop(_ r: PushResult) -> Result<(fd: Int32, path: String), PushStopped> { .failure(PushStopped(result: r)) }
        for attempt in 0..<5 {
            if attempt > 0 { usleep(20_000) }
            let named: String?
            do {
                try journal.submit([], wait: .written)
                named = try journal.path(of: id)
            } catch {
                return stop(.failed("journal: \(error)"))
            }
            guard let path = named, !path.isEmpty else { return stop(.gone) }
            let fd: Int32
            do { fd = try local.brick.openFile(path, flags: O_RDONLY) } catch {
                if error.errno == ENOENT || error.errno == ENOTDIR { continue }
                return stop(.failed("open: \(error)"))
            }
            do throws(FSError) {
                if try local.brick.storedID(fd: fd) == id { return .success((fd, path)) }
            } catch {
                close(fd)
                return stop(.failed("read its id: \(error)"))
            }
            close(fd)
        }
        return stop(.failed("its name changed while it was opened to be sent"))
    }

    /// Waits while another push of `id` runs, then claims it; false (nothing claimed) while a
    /// handle streams new bytes of the file: its own commit settles it, and a push now could
    /// land old bytes after them.
    func beginPush(_ id: UInt64) -> Bool {
        pushCond.lock()
        defer { pushCond.unlock() }
        while pushLocks.with({ $0.contains(id) }) { pushCond.wait() }
        if writers[id] != nil { return false }
        pushLocks.with { _ = $0.insert(id) }
        return true
    }

    func endPush(_ id: UInt64) {
        pushCond.lock()
        pushLocks.with { _ = $0.remove(id) }
        pushCond.broadcast()
        pushCond.unlock()
    }

    /// nil when the file's bytes pass `check`.
    func checkSource(_ fd: Int32, id: UInt64, path: String, size: Int64, _ check: SourceCheck) -> PushResult? {
        let expected: [UInt8]
        switch check {
        case .none:
            return nil
        case .journalHash:
            guard let rec = try? journal.inode(id), !rec.dirty, let h = rec.hash else {
                return .failed("no clean hash in the journal yet (being written?)")
            }
            expected = h
        case .hash(let h):
            expected = h
        }
        guard let (digest, n) = try? XXH128Hasher.hash(fd: fd) else { return .failed("read: \(FSError.last)") }
        guard digest.bytes == expected, n == size else {
            return .badSource("\(path) (id \(id)): its bytes hash to \(digest.hex), not to the recorded \(Self.hex(expected))")
        }
        return nil
    }

    /// One push's file, and what each peer answer means for it.
    struct Push {
        let id: UInt64
        let path: String
        let parent: String
        let name: String
        let volume: ReplicatedVolume

        init(id: UInt64, path: String, volume: ReplicatedVolume) {
            self.id = id
            self.path = path
            (parent, name) = ReplicatedVolume.split(path)
            self.volume = volume
        }

        /// nil: go on.
        func outcome(_ o: PeerOutcome, _ what: String) -> PushResult? {
            switch o {
            case .ok: return nil
            case .unreachable(let why): volume.markDegraded(why); return .unreachable
            case .refused(let e) where e == splitBrainErrno:
                volume.recordSplitBrain(.entry(id), path: path, reason: "changed on both nodes while they could not talk")
                return .splitBrain
            case .refused(let e) where e == EEXIST && what == "create":
                if volume.yieldName(parent: parent, name: name, id: id) { return .gone }
                volume.recordSplitBrainOnBoth(.entry(id), path: path, reason: "the peer has another entry under this name")
                return .splitBrain
            case .refused(let e) where PeerRefusal(errno: e) == .storageFault:
                // The peer's disk cannot take it: this node holds a version the peer cannot get
                // now, as when apart (owed "changed apart", so the peer's own rewrite of the file
                // meanwhile is a split brain instead of replacing it: seed 285).
                let why = PeerRefusal.describe(e, "take \(what) of \(path.debugDescription)")
                volume.markDegraded(why)
                return .failed(why)
            case .refused(let e): return .failed("peer refused \(what): errno \(e)")
            }
        }
    }

    struct PushStopped: Error { let result: PushResult }

    /// Every byte of the file, 1 MiB a message, at most 8 in flight; the count sent and their
    /// XXH3-128, or why the push stopped.
    func sendBytes(_ fd: Int32, size: Int64, _ push: Push) -> Result<(bytes: Int64, hash: [UInt8]), PushStopped> {
        let hasher = XXH128Hasher()
        let chunk = 1 << 20
        var off: Int64 = 0
        var inFlight: [PendingCall] = []
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        while off < size {
            let n = pread(fd, buf.baseAddress, chunk, off_t(off))
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(PushStopped(result: .failed("read: \(String(cString: strerror(errno)))")))
            }
            if n == 0 { break }
            let piece = UnsafeRawBufferPointer(rebasing: buf[0..<n])
            hasher.update(piece)
            inFlight.append(channel.start(.write(path: push.path, stableID: push.id, offset: off, data: ByteBuffer(bytes: piece))))
            off += Int64(n)
            if inFlight.count >= 8, let r = push.outcome(inFlight.removeFirst().wait(), "write") {
                return .failure(PushStopped(result: r))
            }
        }
        for p in inFlight {
            if let r = push.outcome(p.wait(), "write") { return .failure(PushStopped(result: r)) }
        }
        return .success((off, hasher.digest().bytes))
    }
}
