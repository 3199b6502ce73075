import CFuse3
import CTwinShims
import Glibc
import Logging
import TwinCore
import Volume

/// Translates libfuse low-level requests into `VolumeOperations` calls and sends exactly one
/// reply per request. The low-level (inode) API is used for stable ids, explicit lookup counts
/// and no global path layer; see docs/ARCHITECTURE.md. Work runs synchronously on libfuse's
/// worker threads, which are not Swift's cooperative pool, so blocking on disk is fine.
public final class FuseAdapter: Sendable {
    let volume: any VolumeOperations
    let inodes = InodeTable()
    /// Paths from the inode table are only valid until the next rename/unlink: operations
    /// that resolve a path hold this shared, renames and removals hold it exclusive, so a
    /// racing rename can never make an operation land on another file.
    let namespace = NamespaceLock()
    let timeout: Double
    let log: Logger

    public init(volume: any VolumeOperations, attrTimeout: Double, keepCache: Bool = true, logger: Logger) {
        self.volume = volume
        self.keepCache = keepCache
        self.timeout = attrTimeout
        self.log = logger
    }

    public var knownInodes: Int { inodes.count }

    /// False with a peer: it changes the brick too, so an open must not keep cached pages.
    public let keepCache: Bool

    /// The peer removed or renamed away `name` in `parent`: this node's path table must stop
    /// resolving the inode through it (the kernel is told separately).
    public func peerRemovedName(parent: UInt64, name: String) {
        inodes.removeName(parent: parent, name: name)
    }

    /// The peer renamed an entry: follow it in the path table.
    public func peerRenamed(parent: UInt64, name: String, newParent: UInt64, newName: String, exchange: Bool) {
        inodes.rename(parent: parent, name: name, newParent: newParent, newName: newName, exchange: exchange)
    }

    // MARK: - Request helpers

    @inline(__always)
    static func adapter(_ req: fuse_req_t?) -> FuseAdapter {
        Unmanaged<FuseAdapter>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    func node(_ ino: fuse_ino_t) throws(FSError) -> NodeRef {
        guard let p = inodes.path(of: ino) else { throw FSError(ESTALE) }
        return NodeRef(id: ino, path: p)
    }

    /// Where an xattr request on `ino` goes: its path, or, for a file unlinked while open, an
    /// open handle of it (a plain file system serves a deleted open file's xattrs too).
    enum XattrTarget { case node(NodeRef), handle(UInt64) }

    func xattrTarget(_ ino: fuse_ino_t) throws(FSError) -> XattrTarget {
        if let p = inodes.path(of: ino) { return .node(NodeRef(id: ino, path: p)) }
        if let h = volume.openHandle(for: ino) { return .handle(h) }
        throw FSError(ESTALE)
    }

    static func name(_ p: UnsafePointer<CChar>?) throws(FSError) -> String {
        guard let p, let s = String(validatingCString: p) else { throw FSError(EILSEQ) }
        return s
    }

    static func context(_ req: fuse_req_t?) -> RequestContext {
        let c = fuse_req_ctx(req)!.pointee
        return RequestContext(uid: c.uid, gid: c.gid, pid: c.pid)
    }

    func entry(_ st: stat) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = fuse_ino_t(st.st_ino)
        e.generation = 1
        e.attr = st
        e.attr_timeout = timeout
        e.entry_timeout = timeout
        return e
    }

    /// Replies with an entry and records the kernel's new reference.
    func replyEntry(_ req: fuse_req_t?, parent: UInt64, name: String, _ st: stat) {
        var e = entry(st)
        inodes.remember(UInt64(st.st_ino), parent: parent, name: name)
        if fuse_reply_entry(req, &e) != 0 {
            // The request was interrupted: the kernel took no reference.
            inodes.forget(UInt64(st.st_ino), count: 1)
        }
    }

    /// A removal or rename: `local` (the volume's local step and the inode table's update)
    /// under the namespace lock held exclusively, then the rest of the change (the peer's
    /// step) after it is released, then the reply.
    func changeNames(_ req: fuse_req_t?, _ local: () throws(FSError) -> NameChangeFinish) {
        let step = namespace.exclusive { () -> Result<NameChangeFinish, FSError> in
            do throws(FSError) { return .success(try local()) } catch { return .failure(error) }
        }
        do throws(FSError) {
            try step.get()()
            fuse_reply_err(req, 0)
        } catch {
            FuseAdapter.fail(req, error)
        }
    }

    static func fail(_ req: fuse_req_t?, _ e: Error) {
        let code = (e as? FSError)?.errno ?? EIO
        fuse_reply_err(req, code)
    }

    // MARK: - The operation table

    public static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let conn else { return }
            let want = UInt32(FUSE_CAP_ATOMIC_O_TRUNC)
            if conn.pointee.capable & want != 0 { conn.pointee.want |= want }
            // Always readdirplus: one round trip gives names and attributes (cold metadata walks).
            conn.pointee.want &= ~UInt32(FUSE_CAP_READDIRPLUS_AUTO)
            // No writeback cache: every write reaches TwinFS in order, so it can hash and (with a
            // peer) replicate it, and errors surface at write time, not later.
            conn.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
            conn.pointee.max_write = 1 << 20
        }
        ops.lookup = { req, parent, name in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let st = try a.volume.lookup(parent: try a.node(parent), name: n)
                    a.replyEntry(req, parent: parent, name: n, st)
                } catch let e as FSError where e.errno == ENOENT {
                    // Cache the miss for as long as positive entries.
                    var e = fuse_entry_param()
                    e.entry_timeout = a.timeout
                    fuse_reply_entry(req, &e)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.forget = { req, ino, n in
            FuseAdapter.adapter(req).inodes.forget(ino, count: n)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, list in
            let a = FuseAdapter.adapter(req)
            if let list {
                for i in 0..<count { a.inodes.forget(list[i].ino, count: list[i].nlookup) }
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let st: stat
                    if let p = a.inodes.path(of: ino) {
                        st = try a.volume.getattr(NodeRef(id: ino, path: p), handle: fi?.pointee.fh)
                    } else if let h = fi?.pointee.fh ?? a.volume.openHandle(for: ino) {
                        // Unlinked while open: answer from the open descriptor.
                        st = try a.volume.getattr(NodeRef(id: ino, path: ""), handle: h)
                    } else {
                        throw FSError(ESTALE)
                    }
                    var s = st
                    fuse_reply_attr(req, &s, a.timeout)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.setattr = { req, ino, attr, toSet, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    guard let attr else { throw FSError.invalid }
                    let set = UInt32(bitPattern: toSet)
                    var ch = AttrChanges()
                    if set & UInt32(FUSE_SET_ATTR_MODE) != 0 { ch.mode = attr.pointee.st_mode }
                    if set & UInt32(FUSE_SET_ATTR_UID) != 0 { ch.uid = attr.pointee.st_uid }
                    if set & UInt32(FUSE_SET_ATTR_GID) != 0 { ch.gid = attr.pointee.st_gid }
                    if set & UInt32(FUSE_SET_ATTR_SIZE) != 0 { ch.size = Int64(attr.pointee.st_size) }
                    if set & UInt32(FUSE_SET_ATTR_ATIME_NOW) != 0 { ch.atime = .now }
                    else if set & UInt32(FUSE_SET_ATTR_ATIME) != 0 { ch.atime = .at(attr.pointee.st_atim) }
                    if set & UInt32(FUSE_SET_ATTR_MTIME_NOW) != 0 { ch.mtime = .now }
                    else if set & UInt32(FUSE_SET_ATTR_MTIME) != 0 { ch.mtime = .at(attr.pointee.st_mtim) }
                    let path = a.inodes.path(of: ino)
                    let handle = fi?.pointee.fh ?? (path == nil ? a.volume.openHandle(for: ino) : nil)
                    // A file with no name left is changed only through its open descriptor: an
                    // empty path would be the brick root.
                    guard path != nil || handle != nil else { throw FSError(ESTALE) }
                    let node = NodeRef(id: ino, path: path ?? "")
                    var st = try a.volume.setattr(node, handle: handle, changes: ch)
                    fuse_reply_attr(req, &st, a.timeout)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.readlink = { req, ino in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let t = try a.volume.readlink(try a.node(ino))
                    fuse_reply_readlink(req, t)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.mknod = { req, parent, name, mode, rdev in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let p = try a.node(parent)
                    let st: stat
                    if mode & S_IFMT == S_IFREG || mode & S_IFMT == 0 {
                        // `mknod name f`: an empty regular file, made and committed as a create.
                        let (s, h) = try a.volume.create(parent: p, name: n, mode: mode & 0o7777, flags: O_WRONLY | O_EXCL,
                                                         ctx: FuseAdapter.context(req))
                        try a.volume.release(handle: h)
                        st = s
                    } else {
                        st = try a.volume.mknod(parent: p, name: n, mode: mode, rdev: UInt64(rdev), ctx: FuseAdapter.context(req))
                    }
                    a.replyEntry(req, parent: parent, name: n, st)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.mkdir = { req, parent, name, mode in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let st = try a.volume.mkdir(parent: try a.node(parent), name: n, mode: mode, ctx: FuseAdapter.context(req))
                    a.replyEntry(req, parent: parent, name: n, st)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.symlink = { req, link, parent, name in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let target = try FuseAdapter.name(link)
                    let st = try a.volume.symlink(parent: try a.node(parent), name: n, target: target, ctx: FuseAdapter.context(req))
                    a.replyEntry(req, parent: parent, name: n, st)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.link = { req, ino, newParent, newName in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(newName)
                    let st = try a.volume.link(try a.node(ino), newParent: try a.node(newParent), newName: n)
                    a.replyEntry(req, parent: newParent, name: n, st)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        // Removals and renames hold the namespace lock exclusively for their local step only;
        // a replicated volume's peer step runs after it is released (`beginNameChange`).
        ops.unlink = { req, parent, name in
            let a = FuseAdapter.adapter(req)
            a.changeNames(req) { () throws(FSError) -> NameChangeFinish in
                let n = try FuseAdapter.name(name)
                let finish = try a.volume.beginNameChange(.unlink(parent: try a.node(parent), name: n))
                a.inodes.removeName(parent: parent, name: n)
                return finish
            }
        }
        ops.rmdir = { req, parent, name in
            let a = FuseAdapter.adapter(req)
            a.changeNames(req) { () throws(FSError) -> NameChangeFinish in
                let n = try FuseAdapter.name(name)
                let finish = try a.volume.beginNameChange(.rmdir(parent: try a.node(parent), name: n))
                a.inodes.removeName(parent: parent, name: n)
                return finish
            }
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            let a = FuseAdapter.adapter(req)
            a.changeNames(req) { () throws(FSError) -> NameChangeFinish in
                let n = try FuseAdapter.name(name)
                let nn = try FuseAdapter.name(newName)
                let finish = try a.volume.beginNameChange(.rename(parent: try a.node(parent), name: n, newParent: try a.node(newParent),
                                                                  newName: nn, flags: flags))
                a.inodes.rename(parent: parent, name: n, newParent: newParent, newName: nn,
                                exchange: flags & twin_RENAME_EXCHANGE() != 0)
                return finish
            }
        }
        ops.create = { req, parent, name, mode, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    guard let fi else { throw FSError.invalid }
                    let n = try FuseAdapter.name(name)
                    let (st, h) = try a.volume.create(parent: try a.node(parent), name: n, mode: mode,
                                                      flags: fi.pointee.flags, ctx: FuseAdapter.context(req))
                    fi.pointee.fh = h
                    var e = a.entry(st)
                    a.inodes.remember(UInt64(st.st_ino), parent: parent, name: n)
                    if fuse_reply_create(req, &e, fi) != 0 {
                        a.inodes.forget(UInt64(st.st_ino), count: 1)
                        try? a.volume.release(handle: h)
                    }
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.open = { req, ino, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    guard let fi else { throw FSError.invalid }
                    fi.pointee.fh = try a.volume.open(try a.node(ino), flags: fi.pointee.flags)
                    // A lone node is the only writer of its brick, so cached pages stay valid
                    // across opens; with a peer, an open re-reads what the peer may have changed.
                    fi.pointee.keep_cache = a.keepCache ? 1 : 0
                    if fuse_reply_open(req, fi) != 0 { try? a.volume.release(handle: fi.pointee.fh) }
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.read = { req, ino, size, off, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 4096)
                defer { buf.deallocate() }
                let n = try a.volume.read(handle: fi.pointee.fh, offset: Int64(off),
                                          into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<size]))
                fuse_reply_buf(req, buf.baseAddress?.assumingMemoryBound(to: CChar.self), n)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.write = { req, ino, data, size, off, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                let n = try a.volume.write(handle: fi.pointee.fh, offset: Int64(off),
                                           data: UnsafeRawBufferPointer(start: data, count: size))
                fuse_reply_write(req, n)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.flush = { req, ino, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                try a.volume.flush(handle: fi.pointee.fh)
                fuse_reply_err(req, 0)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.fsync = { req, ino, datasync, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                try a.volume.fsync(handle: fi.pointee.fh, dataOnly: datasync != 0)
                fuse_reply_err(req, 0)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.release = { req, ino, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                try a.volume.release(handle: fi.pointee.fh)
                fuse_reply_err(req, 0)
            } catch {
                a.log.error("release of inode \(ino) failed: \(error)")
                FuseAdapter.fail(req, error)
            }
        }
        ops.fallocate = { req, ino, mode, off, len, fi in
            let a = FuseAdapter.adapter(req)
            do {
                guard let fi else { throw FSError.badHandle }
                try a.volume.fallocate(handle: fi.pointee.fh, mode: mode, offset: Int64(off), length: Int64(len))
                fuse_reply_err(req, 0)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.opendir = { req, ino, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    guard let fi else { throw FSError.invalid }
                    fi.pointee.fh = try a.volume.opendir(try a.node(ino))
                    fi.pointee.cache_readdir = 0
                    if fuse_reply_open(req, fi) != 0 { a.volume.releasedir(handle: fi.pointee.fh) }
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.readdir = { req, ino, size, off, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared { a.readdir(req, ino, size, off, fi, plus: false) }
        }
        ops.readdirplus = { req, ino, size, off, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared { a.readdir(req, ino, size, off, fi, plus: true) }
        }
        ops.releasedir = { req, ino, fi in
            if let fi { FuseAdapter.adapter(req).volume.releasedir(handle: fi.pointee.fh) }
            fuse_reply_err(req, 0)
        }
        ops.fsyncdir = { req, ino, datasync, fi in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    try a.volume.fsyncdir(try a.node(ino))
                    fuse_reply_err(req, 0)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.statfs = { req, ino in
            let a = FuseAdapter.adapter(req)
            do {
                var sv = try a.volume.statfs()
                fuse_reply_statfs(req, &sv)
            } catch { FuseAdapter.fail(req, error) }
        }
        ops.setxattr = { req, ino, name, value, size, flags in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let v = UnsafeRawBufferPointer(start: value, count: size)
                    switch try a.xattrTarget(ino) {
                    case .node(let node): try a.volume.setxattr(node, name: n, value: v, flags: flags)
                    case .handle(let h): try a.volume.setxattr(handle: h, name: n, value: v, flags: flags)
                    }
                    fuse_reply_err(req, 0)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.getxattr = { req, ino, name, size in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    let target = try a.xattrTarget(ino)
                    func get(_ buf: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
                        switch target {
                        case .node(let node): return try a.volume.getxattr(node, name: n, into: buf)
                        case .handle(let h): return try a.volume.getxattr(handle: h, name: n, into: buf)
                        }
                    }
                    if size == 0 {
                        fuse_reply_xattr(req, try get(nil))
                    } else {
                        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
                        defer { buf.deallocate() }
                        let got = try get(buf)
                        fuse_reply_buf(req, buf.baseAddress?.assumingMemoryBound(to: CChar.self), got)
                    }
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.listxattr = { req, ino, size in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let names: [String]
                    switch try a.xattrTarget(ino) {
                    case .node(let node): names = try a.volume.listxattr(node)
                    case .handle(let h): names = try a.volume.listxattr(handle: h)
                    }
                    var bytes: [CChar] = []
                    for n in names { bytes.append(contentsOf: n.utf8CString) }
                    if size == 0 {
                        fuse_reply_xattr(req, bytes.count)
                    } else if size < bytes.count {
                        throw FSError(ERANGE)
                    } else {
                        fuse_reply_buf(req, bytes, bytes.count)
                    }
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        ops.removexattr = { req, ino, name in
            let a = FuseAdapter.adapter(req)
            a.namespace.shared {
                do {
                    let n = try FuseAdapter.name(name)
                    switch try a.xattrTarget(ino) {
                    case .node(let node): try a.volume.removexattr(node, name: n)
                    case .handle(let h): try a.volume.removexattr(handle: h, name: n)
                    }
                    fuse_reply_err(req, 0)
                } catch { FuseAdapter.fail(req, error) }
            }
        }
        // getlk/setlk/flock are left unset on purpose: the kernel then keeps POSIX record locks
        // and flock locks itself, which is exact for one node (the address owner serves Samba).
        return ops
    }

    func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t,
                 _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        guard let fi else { fuse_reply_err(req, EBADF); return }
        let buf = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
        defer { buf.deallocate() }
        var used = 0
        var taken: [(UInt64, String)] = []
        do {
            try volume.readdir(handle: fi.pointee.fh, offset: Int64(off), plus: plus) { ent in
                let rest = size - used
                let need: Int
                if plus {
                    var e: fuse_entry_param
                    if let st = ent.attributes {
                        e = entry(st)
                    } else {
                        e = fuse_entry_param()
                        e.attr.st_ino = UInt(ent.id)
                        e.attr.st_mode = mode_t(ent.type) << 12
                    }
                    need = fuse_add_direntry_plus(req, buf + used, rest, ent.name, &e, off_t(ent.nextOffset))
                    if need <= rest, ent.attributes != nil { taken.append((ent.id, ent.name)) }
                } else {
                    var st = stat()
                    st.st_ino = UInt(ent.id)
                    st.st_mode = mode_t(ent.type) << 12
                    need = fuse_add_direntry(req, buf + used, rest, ent.name, &st, off_t(ent.nextOffset))
                }
                if need > rest { return false }
                used += need
                return true
            }
            // The kernel takes a reference per entry only if the reply reaches it.
            for (id, name) in taken { inodes.remember(id, parent: ino, name: name) }
            if fuse_reply_buf(req, buf, used) != 0 {
                for (id, _) in taken { inodes.forget(id, count: 1) }
            }
        } catch {
            FuseAdapter.fail(req, error)
        }
    }
}
