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

/// The metadata and namespace operations of `VolumeOperations`, each one transaction.
extension ReplicatedVolume {
    public func lookup(parent: NodeRef, name: String) throws(FSError) -> stat {
        try checkCurrent()
        awaitPeerNamespace()
        let hooks = healHooks
        try hooks?.prepareDirectory(path: parent.path)
        var st = try local.lookup(parent: parent, name: name)
        if st.kind == .file && state.with({ $0.peerFiles > 0 }) {
            pullIfNeeded(UInt64(st.st_ino))
            st = try local.lookup(parent: parent, name: name)
        }
        return Self.awaited(st, hooks)
    }

    /// A placeholder still awaiting its content shows the size it will have.
    static func awaited(_ st: stat, _ hooks: (any HealHooks)?) -> stat {
        guard let h = hooks, st.kind == .file, let size = h.awaitedSize(id: UInt64(st.st_ino)) else { return st }
        var s = st
        s.st_size = Int(size)
        s.st_blocks = Int((size + 511) / 512)
        return s
    }

    public func getattr(_ node: NodeRef, handle: UInt64?) throws(FSError) -> stat {
        try checkCurrent()
        return Self.awaited(try local.getattr(node, handle: handle), handle == nil ? healHooks : nil)
    }

    /// Before a namespace change in `dirs`: while rebuilding, their entries come from the peer first.
    func prepare(_ dirs: String...) throws(FSError) {
        guard let h = healHooks else { return }
        for d in dirs { try h.prepareDirectory(path: d) }
    }

    public func setattr(_ node: NodeRef, handle: UInt64?, changes: AttrChanges) throws(FSError) -> stat {
        try checkCurrent()
        if let size = changes.size {
            if size == 0 { healHooks?.replacedLocally(id: node.id) }
            try healHooks?.prepareFile(id: node.id)
            drainWrites(of: node.id)
            // A truncate through an open handle changes the content like a write: the close
            // must commit it on the peer too (the peer applies it through its open copy,
            // which stays dirty until that commit). Seen with smbd's SET_INFO EndOfFile.
            for rh in handles.with({ $0.values.filter { $0.id == node.id } }) { markTouched(rh) }
        }
        func update(_ atimeNow: Int64, _ mtimeNow: Int64) -> PeerMessage {
            func ns(_ t: AttrChanges.Time?, _ now: Int64) -> Int64? {
                switch t {
                case .none: return nil
                case .now: return now
                case .at(let ts): return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
                }
            }
            // A truncate sets the mtime to this node's "now": the peer takes that one, not its own.
            let mtime = changes.mtime ?? (changes.size != nil ? .now : nil)
            return .setattr(path: node.path, changes: AttrUpdate(
                mode: changes.mode.map { UInt32($0) }, uid: changes.uid.map { UInt32($0) }, gid: changes.gid.map { UInt32($0) },
                size: changes.size, atimeNs: ns(changes.atime, atimeNow), mtimeNs: ns(mtime, mtimeNow)))
        }
        // The tentative row carries the change itself (times "now" as of before it), so that
        // a crash between the local change and the peer's answer replays it, not a no-op.
        let before = Int64(Date().timeIntervalSince1970 * 1e9)
        let st = try replicate(keys: [], pre: update(before, before)) { () throws(FSError) -> stat in
            try local.setattr(node, handle: handle, changes: changes)
        } message: { st in
            update(Int64(st.st_atim.tv_sec) * 1_000_000_000 + Int64(st.st_atim.tv_nsec), st.mtimeNs)
        }
        // A truncate the peer did not get live changed the content apart: the file is owed, so
        // the peer's own rewrite of it meanwhile is a split brain instead of replacing it here.
        if changes.size != nil && gate.mode != .live && st.kind == .file { try owe(node.id) }
        return st
    }

    public func readlink(_ node: NodeRef) throws(FSError) -> String {
        try checkCurrent()
        return try local.readlink(node)
    }

    public func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        return try replicate(keys: [Self.key(parent.id, name)],
                             pre: .mkdir(parentPath: parent.path, name: name, mode: UInt32(mode), uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> stat in
            try local.mkdir(parent: parent, name: name, mode: mode, ctx: ctx, id: id)
        } message: { st in
            .mkdir(parentPath: parent.path, name: name, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid, stableID: id)
        }
    }

    public func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        return try replicate(keys: [Self.key(parent.id, name)],
                             pre: .symlink(parentPath: parent.path, name: name, target: target, uid: ctx.uid, gid: ctx.gid, stableID: id)) { () throws(FSError) -> stat in
            try local.symlink(parent: parent, name: name, target: target, ctx: ctx, id: id)
        } message: { st in
            .symlink(parentPath: parent.path, name: name, target: target, uid: st.st_uid, gid: st.st_gid, stableID: id)
        }
    }

    public func mknod(parent: NodeRef, name: String, mode: mode_t, rdev: UInt64, ctx: RequestContext) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(parent.path)
        let id = try local.allocateID()
        let pre = PeerMessage.mknod(parentPath: parent.path, name: name, mode: UInt32(mode), rdev: rdev, uid: ctx.uid, gid: ctx.gid, stableID: id)
        return try replicate(keys: [Self.key(parent.id, name)], pre: pre) { () throws(FSError) -> stat in
            try local.mknod(parent: parent, name: name, mode: mode, rdev: rdev, ctx: ctx, id: id)
        } message: { st in
            .mknod(parentPath: parent.path, name: name, mode: UInt32(st.st_mode), rdev: rdev, uid: st.st_uid, gid: st.st_gid, stableID: id)
        }
    }

    public func link(_ node: NodeRef, newParent: NodeRef, newName: String) throws(FSError) -> stat {
        try checkCurrent()
        try prepare(newParent.path)
        let m = PeerMessage.link(path: node.path, newParent: newParent.path, newName: newName)
        return try replicate(keys: [Self.key(newParent.id, newName)], pre: m) { () throws(FSError) -> stat in
            try local.link(node, newParent: newParent, newName: newName)
        } message: { _ in m }
    }

    public func unlink(parent: NodeRef, name: String) throws(FSError) {
        try beginNameChange(.unlink(parent: parent, name: name))()
    }

    public func rmdir(parent: NodeRef, name: String) throws(FSError) {
        try beginNameChange(.rmdir(parent: parent, name: name))()
    }

    public func rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError) {
        try beginNameChange(.rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags))()
    }

    /// Removals and renames: the local step now (the FUSE adapter holds its namespace lock
    /// exclusively), the peer's on the returned finish (after it released that lock).
    public func beginNameChange(_ change: NameChange) throws(FSError) -> NameChangeFinish {
        try checkCurrent()
        switch change {
        case let .unlink(parent, name), let .rmdir(parent, name):
            try prepare(parent.path)
            let dir: Bool
            if case .rmdir = change { dir = true } else { dir = false }
            let m: PeerMessage = dir ? .rmdir(parentPath: parent.path, name: name) : .unlink(parentPath: parent.path, name: name)
            return try changeInTwoSteps(keys: [Self.key(parent.id, name)], m) { () throws(FSError) in
                if dir { try local.rmdir(parent: parent, name: name) } else { try local.unlink(parent: parent, name: name) }
            }
        case let .rename(parent, name, newParent, newName, flags):
            return try beginRename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags)
        }
    }

    func beginRename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError) -> NameChangeFinish {
        try prepare(parent.path, newParent.path)
        let from = Brick.join(parent.path, name), to = Brick.join(newParent.path, newName)
        let exchange = RenameFlags(rawValue: flags).contains(.exchange)
        let moved = handles.with { $0.values.filter { rh in
            rh.with { Self.renamed($0.path, from: from, to: to, exchange: exchange) != nil }
        } }
        let m = PeerMessage.rename(fromParent: parent.path, fromName: name, toParent: newParent.path, toName: newName, flags: flags)
        let keys = [Self.key(parent.id, name), Self.key(newParent.id, newName)].sorted()
        return try changeInTwoSteps(keys: keys, m, beforePeer: { [self] in
            // Writes carry the path their file had: those under the old name are answered
            // before the peer renames (messages are not ordered with each other).
            for rh in moved { drain(rh) }
        }, afterPeer: {
            // Open files keep being written under their new names (a later write or commit sent
            // under the old one would find nothing there on the peer).
            for rh in moved {
                rh.with { h in if let p = Self.renamed(h.path, from: from, to: to, exchange: exchange) { h.path = p } }
            }
        }) { () throws(FSError) in
            try local.rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags)
        }
    }

    /// Where `path` is after renaming `from` to `to` (or exchanging them), nil if unaffected.
    /// Names are compared as bytes, as the brick does (Swift's `==` would take two Unicode
    /// spellings of one name for the same).
    static func renamed(_ path: String, from: String, to: String, exchange: Bool) -> String? {
        func under(_ p: String, _ dir: String) -> String? {
            let pb = Array(p.utf8), db = Array(dir.utf8)
            if pb == db { return "" }
            guard pb.count > db.count, pb[db.count] == UInt8(ascii: "/"), pb.starts(with: db) else { return nil }
            return String(decoding: pb[db.count...], as: UTF8.self)
        }
        if let rest = under(path, from) { return to + rest }
        if exchange, let rest = under(path, to) { return from + rest }
        return nil
    }
}
