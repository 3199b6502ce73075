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

/// Directories (listing, fsync) and extended attributes.
extension ReplicatedVolume {
    public func opendir(_ node: NodeRef) throws(FSError) -> UInt64 {
        try checkCurrent()
        awaitPeerNamespace()
        try healHooks?.prepareDirectory(path: node.path)
        return try local.opendir(node)
    }

    public func readdir(handle: UInt64, offset: Int64, plus: Bool, emit: (DirEntry) -> Bool) throws(FSError) {
        guard plus, let hooks = healHooks else { return try local.readdir(handle: handle, offset: offset, plus: plus, emit: emit) }
        try local.readdir(handle: handle, offset: offset, plus: plus) { e in
            var e = e
            if let st = e.attributes { e.attributes = Self.awaited(st, hooks) }
            return emit(e)
        }
    }

    public func releasedir(handle: UInt64) { local.releasedir(handle: handle) }
    public func statfs() throws(FSError) -> statvfs { try local.statfs() }
    /// fsync of a directory is a promise about its entries on both disks: the peer syncs its
    /// copy of the directory and its journal before this returns. Peer unreachable: what it
    /// missed is owed durably already (the local fsyncdir's durable commit covers it).
    public func fsyncdir(_ node: NodeRef) throws(FSError) {
        try local.fsyncdir(node)
        guard gate.mode == .live else { return }
        switch channel.call(.syncDir(path: node.path)) {
        case .ok, .unreachable: break
        case .refused(let e):
            // This disk has it; the peer's problem is its own to report (and the client's
            // data is not at risk of being lost from this node).
            log.error("\(PeerRefusal.describe(e, "sync directory \(node.path.debugDescription) to its disk"))")
        }
    }

    public func getxattr(_ node: NodeRef, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try checkCurrent()
        if name.hasPrefix(RealName.xattrPrefix) {
            // A name lookup in the directory, like opendir: after the peer's catch-up of the
            // namespace, and from the peer's listing while this brick is rebuilt.
            awaitPeerNamespace()
            try healHooks?.prepareDirectory(path: node.path)
        }
        return try local.getxattr(node, name: name, into: buffer)
    }

    public func setxattr(_ node: NodeRef, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try checkCurrent()
        let m = PeerMessage.setxattr(path: node.path, name: name, value: Array(value), flags: UInt32(bitPattern: flags) & 3)
        try replicate(keys: [], pre: m) { () throws(FSError) in
            try local.setxattr(node, name: name, value: value, flags: flags)
        } message: { _ in m }
    }

    public func listxattr(_ node: NodeRef) throws(FSError) -> [String] {
        try checkCurrent()
        return try local.listxattr(node)
    }

    public func removexattr(_ node: NodeRef, name: String) throws(FSError) {
        try checkCurrent()
        let m = PeerMessage.removexattr(path: node.path, name: name)
        try replicate(keys: [], pre: m) { () throws(FSError) in
            try local.removexattr(node, name: name)
        } message: { _ in m }
    }

    public func openHandle(for id: UInt64) -> UInt64? { local.openHandle(for: id) }

    // A file unlinked while open: local only (the unlink already reached the peer).
    public func getxattr(handle: UInt64, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try local.getxattr(handle: handle, name: name, into: buffer)
    }
    public func setxattr(handle: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try local.setxattr(handle: handle, name: name, value: value, flags: flags)
    }
    public func listxattr(handle: UInt64) throws(FSError) -> [String] { try local.listxattr(handle: handle) }
    public func removexattr(handle: UInt64, name: String) throws(FSError) { try local.removexattr(handle: handle, name: name) }
}
