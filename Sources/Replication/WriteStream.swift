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

/// Files opened for writing: create and open, writes streamed to the peer (gathered, in
/// flight under a byte budget), and preallocation.
extension ReplicatedVolume {
    public func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext) throws(FSError) -> (stat, UInt64) {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        let path = Brick.join(parent.path, name)
        let (st, h) = try replicate(keys: [Self.key(parent.id, name)],
                                    pre: .create(parentPath: parent.path, name: name, mode: UInt32(mode), uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> (stat, UInt64) in
            try local.create(parent: parent, name: name, mode: mode, flags: flags, ctx: ctx, id: id)
        } message: { r in
            .create(parentPath: parent.path, name: name, mode: UInt32(r.0.st_mode), uid: r.0.st_uid, gid: r.0.st_gid, stableID: id)
        }
        let rh = RepHandle(id: id, path: path)
        // The peer created the file (live) or owes it as a whole (not live).
        rh.with { $0.live = gate.mode == .live }
        handles.with { $0[h] = rh }
        // New content even if nothing is written: the close commits it on the peer, whose
        // copy is open (and dirty) until then.
        markTouched(rh)
        return (st, h)
    }

    public func open(_ node: NodeRef, flags: Int32) throws(FSError) -> UInt64 {
        try checkCurrent()
        try checkNotSplit(node.id)
        // A truncating open replaces whatever the file held: an incomplete copy the peer had
        // sent (a client retrying here after the sender died) is not waited for.
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY { healHooks?.replacedLocally(id: node.id) }
        try healHooks?.prepareFile(id: node.id)
        pullIfNeeded(node.id)
        try checkNotSplit(node.id)
        let writable = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if writable { keepName(node.id) }
        if writable && flags & O_TRUNC != 0 { try permitApart() }
        let h = try local.open(node, flags: flags)
        if writable {
            let rh = RepHandle(id: node.id, path: node.path)
            let live = gate.mode == .live
            rh.with { $0.live = live }
            handles.with { $0[h] = rh }
            if flags & O_TRUNC != 0 {
                markTouched(rh)
                // Writes gathered on other handles must not reach the peer after its truncate.
                drainWrites(of: node.id)
                if live {
                    switch channel.call(.setattr(path: node.path, changes: AttrUpdate(size: 0))) {
                    case .ok: break
                    case .refused: rh.with { $0.broken = true }
                    case .unreachable(let why): markDegraded(why); rh.with { $0.live = false }
                    }
                } else {
                    rh.with { $0.broken = true; $0.apart = true }
                }
            }
        }
        return h
    }

    public func read(handle: UInt64, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        try local.read(handle: handle, offset: offset, into: buffer)
    }

    /// The first write since the last commit: waits while a whole-file push of this file runs
    /// (its old bytes must not land after new ones), then counts this handle as writing, so
    /// that no push starts until its commit.
    func markTouched(_ rh: RepHandle) {
        let first = rh.with { h -> Bool in
            defer { h.touched = true }
            return !h.touched
        }
        guard first else { return }
        pushCond.lock()
        while pushLocks.with({ $0.contains(rh.id) }) { pushCond.wait() }
        writers[rh.id, default: 0] += 1
        pushCond.unlock()
        // Before the first byte: a crash from here on leaves the file owed to the peer.
        try? journal.submit([.peerFile(id: rh.id, owed: false)], wait: .queued)
    }

    func doneWriting(_ id: UInt64) {
        pushCond.lock()
        if let n = writers[id] { writers[id] = n > 1 ? n - 1 : nil }
        pushCond.broadcast()
        pushCond.unlock()
    }

    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        guard let rh = handles.with({ $0[handle] }) else { return try local.write(handle: handle, offset: offset, data: data) }
        try permitApart()
        healHooks?.noteIngest(id: 0)
        markTouched(rh)
        let n = try local.write(handle: handle, offset: offset, data: data)
        guard n > 0 else { return n }
        let liveNow = gate.mode == .live
        let bytes = UnsafeRawBufferPointer(rebasing: data[0..<n])
        // Small writes (Orthanc writes 4 KiB at a time) are gathered into one message per
        // `coalesceLimit` bytes: one peer request instead of 32. Big ones go as they are.
        enum Plan { case none, direct, chunks([(Int64, [UInt8])]) }
        let plan = rh.with { h -> Plan in
            h.writes &+= 1
            guard h.canStream(liveNow: liveNow) else { return .none }
            var out: [(Int64, [UInt8])] = []
            if !h.pending.isEmpty && (h.pendingOffset + Int64(h.pending.count) != offset || h.pending.count + n > Self.coalesceLimit) {
                out.append((h.pendingOffset, h.pending))
                h.pending = []
            }
            if h.pending.isEmpty && n >= Self.coalesceLimit {
                h.inFlight += out.count + 1
                return out.isEmpty ? .direct : .chunks(out + [(offset, Array(bytes))])
            }
            if h.pending.isEmpty {
                h.pendingOffset = offset
                h.pending.reserveCapacity(Self.coalesceLimit)
            }
            h.pending.append(contentsOf: bytes)
            if h.pending.count >= Self.coalesceLimit {
                out.append((h.pendingOffset, h.pending))
                h.pending = []
            }
            h.inFlight += out.count
            return .chunks(out)
        }
        switch plan {
        case .none: break
        case .direct: send(rh, offset: offset, ByteBuffer(bytes: bytes))
        case .chunks(let cs): for (o, b) in cs { send(rh, offset: o, ByteBuffer(bytes: b)) }
        }
        return n
    }

    /// Gathered small writes go out at most this big.
    static let coalesceLimit = 128 << 10

    /// Streams one write to the peer (counted in `inFlight` by the caller).
    func send(_ rh: RepHandle, offset: Int64, _ buf: ByteBuffer) {
        let n = buf.readableBytes
        budget.acquire(n)
        channel.start(.write(path: rh.with { $0.path }, stableID: rh.id, offset: offset, data: buf)) { [weak self] outcome in
            self?.budget.release(n)
            rh.with { h in
                h.inFlight -= 1
                if !outcome.isOK { h.broken = true }
            }
            rh.cond.broadcast()
            if case .unreachable(let why) = outcome { self?.markDegraded(why) }
        }
    }

    /// Sends the handle's gathered writes, then waits until the peer answered every write.
    func drain(_ rh: RepHandle) {
        let liveNow = gate.mode == .live
        let chunk = rh.with { h -> (Int64, [UInt8])? in
            guard !h.pending.isEmpty, h.canStream(liveNow: liveNow) else { return nil }
            defer { h.pending = [] }
            h.inFlight += 1
            return (h.pendingOffset, h.pending)
        }
        if let (o, b) = chunk { send(rh, offset: o, ByteBuffer(bytes: b)) }
        rh.drain()
    }

    func drainWrites(of id: UInt64) {
        for rh in handles.with({ $0.values.filter { $0.id == id } }) { drain(rh) }
    }

    /// Drops the file's streaming or owed row up to `generation` (queued unless it was owed:
    /// then the in-memory sets follow the journal).
    func settle(_ id: UInt64, generation: Int64) {
        if isOwed(id) {
            settledChecked(id, generation: generation)
        } else {
            try? journal.submit([.dropPeerFile(id: id, generation: generation)], wait: .queued)
        }
    }

    /// FALLOC_FL_KEEP_SIZE (linux/falloc.h).
    static let fallocKeepSize: Int32 = 0x01

    /// Preallocation changes no byte a reader sees: with KEEP_SIZE nothing reaches the peer,
    /// and a plain fallocate past the end reads as zeros up to its new size, which the peer
    /// gets as a size change (smbd and PACS writers preallocate before they write). Other
    /// modes (punch hole, zero or collapse range) change bytes: the whole file goes at close.
    public func fallocate(handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(FSError) {
        guard let rh = handles.with({ $0[handle] }) else {
            return try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        }
        try permitApart()
        markTouched(rh)
        guard mode == 0 || mode == Self.fallocKeepSize else {
            rh.with { $0.broken = true }
            return try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        }
        let node = NodeRef(id: rh.id, path: rh.with { $0.path })
        let before = try local.getattr(node, handle: handle).st_size
        try local.fallocate(handle: handle, mode: mode, offset: offset, length: length)
        let after = try local.getattr(node, handle: handle).st_size
        guard after > before else { return }
        // Writes gathered or in flight below the new end land first (messages are not ordered).
        drainWrites(of: rh.id)
        guard rh.with({ $0.canStream(liveNow: gate.mode == .live) }) else { return }
        switch channel.call(.setattr(path: node.path, changes: AttrUpdate(size: Int64(after)))) {
        case .ok: break
        case .refused: rh.with { $0.broken = true }
        case .unreachable(let why): markDegraded(why); rh.with { $0.broken = true; $0.apart = true }
        }
    }
}
