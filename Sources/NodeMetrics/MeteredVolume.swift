import Glibc
import Prometheus
import TwinCore
import Volume

/// GlusterFS's io-stats translator, for Prometheus: counts and times every operation on its way
/// from the FUSE adapter down to the volume, and counts the bytes read and written.
public final class MeteredVolume: VolumeOperations, @unchecked Sendable {
    /// Numbered in declaration order: an operation's meter is `meters[op.rawValue]`, no lookup
    /// on the request path.
    public enum Op: Int, CaseIterable, Sendable {
        case lookup, getattr, setattr, readlink, mkdir, symlink, link, unlink, rmdir, rename, create, open, read, write
        case flush, fsync, release, fallocate, opendir, readdir, releasedir, statfs, fsyncdir, getxattr, setxattr
        case listxattr, removexattr, mknod

        var label: String { String(describing: self) }
    }

    struct Meter {
        let count: Counter
        let errors: Counter
        let time: DurationHistogram
    }

    let inner: any VolumeOperations
    private let meters: [Meter]
    private let bytesRead: Counter
    private let bytesWritten: Counter

    /// Latency buckets for a PACS store: from a cached lookup to a replicated fsync on a busy disk.
    static let buckets: [Duration] = [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
                                      .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                      .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(10)]

    public init(_ inner: any VolumeOperations, registry: PrometheusCollectorRegistry) {
        self.inner = inner
        func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "twinfs", metricName: name, unitName: unit, helpText: help)
        }
        meters = Op.allCases.map { op in
            Meter(count: registry.makeCounter(descriptor: d("operations", "total", "File system operations served"), labels: [("op", op.label)]),
                  errors: registry.makeCounter(descriptor: d("operation_errors", "total", "Operations answered with an error"), labels: [("op", op.label)]),
                  time: registry.makeDurationHistogram(descriptor: d("operation_duration", "seconds", "Time to serve an operation, replication included"),
                                                       labels: [("op", op.label)], buckets: Self.buckets))
        }
        bytesRead = registry.makeCounter(descriptor: d("read_bytes", "total", "Bytes read through the mount"), labels: [])
        bytesWritten = registry.makeCounter(descriptor: d("written_bytes", "total", "Bytes written through the mount (ingest)"), labels: [])
    }

    @inline(__always)
    private func timed<R>(_ op: Op, _ body: () throws(FSError) -> R) throws(FSError) -> R {
        let start = ContinuousClock.now
        do throws(FSError) {
            let r = try body()
            record(op, since: start, failed: false)
            return r
        } catch {
            // "No such file" answers to lookups are the normal case, not errors.
            if op == .lookup && error.errno == ENOENT { meters[op.rawValue].count.increment() } else { record(op, since: start, failed: true) }
            throw error
        }
    }

    private func record(_ op: Op, since start: ContinuousClock.Instant, failed: Bool) {
        let m = meters[op.rawValue]
        m.count.increment()
        if failed { m.errors.increment() } else { m.time.record(ContinuousClock.now - start) }
    }

    public func lookup(parent: NodeRef, name: String) throws(FSError) -> stat { try timed(.lookup) { () throws(FSError) in try inner.lookup(parent: parent, name: name) } }
    public func getattr(_ node: NodeRef, handle: UInt64?) throws(FSError) -> stat { try timed(.getattr) { () throws(FSError) in try inner.getattr(node, handle: handle) } }
    public func setattr(_ node: NodeRef, handle: UInt64?, changes: AttrChanges) throws(FSError) -> stat {
        try timed(.setattr) { () throws(FSError) in try inner.setattr(node, handle: handle, changes: changes) }
    }
    public func readlink(_ node: NodeRef) throws(FSError) -> String { try timed(.readlink) { () throws(FSError) in try inner.readlink(node) } }
    public func mkdir(parent: NodeRef, name: String, mode: mode_t, ctx: RequestContext) throws(FSError) -> stat {
        try timed(.mkdir) { () throws(FSError) in try inner.mkdir(parent: parent, name: name, mode: mode, ctx: ctx) }
    }
    public func symlink(parent: NodeRef, name: String, target: String, ctx: RequestContext) throws(FSError) -> stat {
        try timed(.symlink) { () throws(FSError) in try inner.symlink(parent: parent, name: name, target: target, ctx: ctx) }
    }
    public func link(_ node: NodeRef, newParent: NodeRef, newName: String) throws(FSError) -> stat {
        try timed(.link) { () throws(FSError) in try inner.link(node, newParent: newParent, newName: newName) }
    }
    public func unlink(parent: NodeRef, name: String) throws(FSError) { try timed(.unlink) { () throws(FSError) in try inner.unlink(parent: parent, name: name) } }
    public func rmdir(parent: NodeRef, name: String) throws(FSError) { try timed(.rmdir) { () throws(FSError) in try inner.rmdir(parent: parent, name: name) } }
    public func rename(parent: NodeRef, name: String, newParent: NodeRef, newName: String, flags: UInt32) throws(FSError) {
        try timed(.rename) { () throws(FSError) in try inner.rename(parent: parent, name: name, newParent: newParent, newName: newName, flags: flags) }
    }
    public func mknod(parent: NodeRef, name: String, mode: mode_t, rdev: UInt64, ctx: RequestContext) throws(FSError) -> stat {
        try timed(.mknod) { () throws(FSError) in try inner.mknod(parent: parent, name: name, mode: mode, rdev: rdev, ctx: ctx) }
    }

    /// Both steps are timed together, under the change's own operation.
    public func beginNameChange(_ change: NameChange) throws(FSError) -> NameChangeFinish {
        let op: Op
        switch change {
        case .unlink: op = .unlink
        case .rmdir: op = .rmdir
        case .rename: op = .rename
        }
        let start = ContinuousClock.now
        let finish: NameChangeFinish
        do throws(FSError) { finish = try inner.beginNameChange(change) } catch {
            record(op, since: start, failed: true)
            throw error
        }
        return NameChangeFinish { [self] () throws(FSError) in
            do throws(FSError) { try finish() } catch {
                record(op, since: start, failed: true)
                throw error
            }
            record(op, since: start, failed: false)
        }
    }

    public func create(parent: NodeRef, name: String, mode: mode_t, flags: Int32, ctx: RequestContext) throws(FSError) -> (stat, UInt64) {
        try timed(.create) { () throws(FSError) in try inner.create(parent: parent, name: name, mode: mode, flags: flags, ctx: ctx) }
    }
    public func open(_ node: NodeRef, flags: Int32) throws(FSError) -> UInt64 { try timed(.open) { () throws(FSError) in try inner.open(node, flags: flags) } }
    public func read(handle: UInt64, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let n = try timed(.read) { () throws(FSError) in try inner.read(handle: handle, offset: offset, into: buffer) }
        bytesRead.increment(by: Int64(n))
        return n
    }
    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        let n = try timed(.write) { () throws(FSError) in try inner.write(handle: handle, offset: offset, data: data) }
        bytesWritten.increment(by: Int64(n))
        return n
    }
    public func flush(handle: UInt64) throws(FSError) { try timed(.flush) { () throws(FSError) in try inner.flush(handle: handle) } }
    public func fsync(handle: UInt64, dataOnly: Bool) throws(FSError) { try timed(.fsync) { () throws(FSError) in try inner.fsync(handle: handle, dataOnly: dataOnly) } }
    public func release(handle: UInt64) throws(FSError) { try timed(.release) { () throws(FSError) in try inner.release(handle: handle) } }
    public func fallocate(handle: UInt64, mode: Int32, offset: Int64, length: Int64) throws(FSError) {
        try timed(.fallocate) { () throws(FSError) in try inner.fallocate(handle: handle, mode: mode, offset: offset, length: length) }
    }
    public func opendir(_ node: NodeRef) throws(FSError) -> UInt64 { try timed(.opendir) { () throws(FSError) in try inner.opendir(node) } }
    public func readdir(handle: UInt64, offset: Int64, plus: Bool, emit: (DirEntry) -> Bool) throws(FSError) {
        try timed(.readdir) { () throws(FSError) in try inner.readdir(handle: handle, offset: offset, plus: plus, emit: emit) }
    }
    public func releasedir(handle: UInt64) { inner.releasedir(handle: handle) }
    public func statfs() throws(FSError) -> statvfs { try timed(.statfs) { () throws(FSError) in try inner.statfs() } }
    public func fsyncdir(_ node: NodeRef) throws(FSError) { try timed(.fsyncdir) { () throws(FSError) in try inner.fsyncdir(node) } }
    public func getxattr(_ node: NodeRef, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try inner.getxattr(node, name: name, into: buffer)   // not timed: ENODATA/ERANGE are its normal answers
    }
    public func setxattr(_ node: NodeRef, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try timed(.setxattr) { () throws(FSError) in try inner.setxattr(node, name: name, value: value, flags: flags) }
    }
    public func listxattr(_ node: NodeRef) throws(FSError) -> [String] { try timed(.listxattr) { () throws(FSError) in try inner.listxattr(node) } }
    public func removexattr(_ node: NodeRef, name: String) throws(FSError) {
        try timed(.removexattr) { () throws(FSError) in try inner.removexattr(node, name: name) }
    }
    public func openHandle(for id: UInt64) -> UInt64? { inner.openHandle(for: id) }
    public func getxattr(handle: UInt64, name: String, into buffer: UnsafeMutableRawBufferPointer?) throws(FSError) -> Int {
        try inner.getxattr(handle: handle, name: name, into: buffer)
    }
    public func setxattr(handle: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FSError) {
        try timed(.setxattr) { () throws(FSError) in try inner.setxattr(handle: handle, name: name, value: value, flags: flags) }
    }
    public func listxattr(handle: UInt64) throws(FSError) -> [String] { try timed(.listxattr) { () throws(FSError) in try inner.listxattr(handle: handle) } }
    public func removexattr(handle: UInt64, name: String) throws(FSError) {
        try timed(.removexattr) { () throws(FSError) in try inner.removexattr(handle: handle, name: name) }
    }
}
