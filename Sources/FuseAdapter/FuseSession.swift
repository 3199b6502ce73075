import CFuse3
import Glibc
import Logging
import TwinCore

/// One mounted FUSE session: mount, run the multithreaded loop on the calling thread, unmount.
public final class FuseSession: @unchecked Sendable {
    let adapter: FuseAdapter
    let session: OpaquePointer
    public let mountpoint: String
    private var ops: fuse_lowlevel_ops
    private let maxThreads: Int
    private var mounted = false
    private var loopThread: pthread_t?

    /// Creates the session (parses options). Nothing is mounted yet.
    public init(adapter: FuseAdapter, mountpoint: String, fsname: String, maxThreads: Int) throws(AdminError) {
        self.adapter = adapter
        self.mountpoint = mountpoint
        self.maxThreads = maxThreads
        ops = FuseAdapter.operations()
        // default_permissions: the kernel checks modes (we run as root; without it any user
        // could write anywhere). allow_other: PACS services and smbd run as other users.
        let opts = "fsname=\(fsname),subtype=twinfs,default_permissions,allow_other"
        let argv: [UnsafeMutablePointer<CChar>?] = ["twinfs", "-o", opts].map { (s: String) in strdup(s) }
        var args = fuse_args(argc: Int32(argv.count), argv: nil, allocated: 0)
        let arr = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (i, a) in argv.enumerated() { arr[i] = a }
        arr[argv.count] = nil
        args.argv = arr
        let ud = Unmanaged.passUnretained(adapter).toOpaque()
        guard let se = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, ud) else {
            throw AdminError(problem: "libfuse refused the mount options", fix: "check that fuse3 is installed")
        }
        for a in argv { free(a) }
        arr.deallocate()
        session = se
    }

    deinit { fuse_session_destroy(session) }

    public func mount() throws(AdminError) {
        guard fuse_session_mount(session, mountpoint) == 0 else {
            throw AdminError(problem: "cannot mount TwinFS at \(mountpoint)",
                             fix: "check that /dev/fuse exists (modprobe fuse), that fuse3 is installed and that the mount point is not in use")
        }
        mounted = true
    }

    /// Runs until `requestExit` or an external unmount; finishes in-flight requests.
    public func run() -> Int32 {
        loopThread = pthread_self()
        let cfg = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(cfg) }
        fuse_loop_cfg_set_max_threads(cfg, UInt32(maxThreads))
        fuse_loop_cfg_set_clone_fd(cfg, 0)
        return cfuse_session_loop_mt(session, cfg)
    }

    /// Asks the loop to end: sets libfuse's exit flag and wakes the loop thread, which waits
    /// in sem_wait (interrupted by SIGUSR1, installed without SA_RESTART by the node).
    public func requestExit() {
        fuse_session_exit(session)
        if let t = loopThread { pthread_kill(t, SIGUSR1) }
    }

    /// Tells the kernel that `name` in directory `parent` changed behind its back (the peer
    /// applied a change): its cached lookup is dropped. Never call from a request handler.
    public func invalidateEntry(parent: UInt64, name: String) {
        guard mounted else { return }
        let bytes = Array(name.utf8)
        _ = bytes.withUnsafeBufferPointer { b in
            b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { p in
                fuse_lowlevel_notify_inval_entry(session, fuse_ino_t(parent), p, b.count)
            }
        }
    }

    /// Drops the kernel's cached attributes and pages of inode `id` (its bytes changed on the peer).
    public func invalidateInode(_ id: UInt64) {
        guard mounted else { return }
        _ = fuse_lowlevel_notify_inval_inode(session, fuse_ino_t(id), 0, 0)
    }

    public func unmount() {
        guard mounted else { return }
        fuse_session_unmount(session)
        mounted = false
    }
}
