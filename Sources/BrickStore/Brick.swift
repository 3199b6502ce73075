import CTwinShims
import Foundation
import Glibc
import TwinCore

/// A brick: a plain directory tree holding the volume's files at their own relative paths,
/// readable with `ls` and `cp` without TwinFS. TwinFS's own state lives in `.twinfs/` at the
/// top, which the mount never shows. Each entry carries its stable id in the xattr
/// `trusted.twinfs.id`, so the journal can always be rebuilt from the brick.
public final class Brick: Sendable {
    public static let privateDir = ".twinfs"
    public static let markerFile = ".twinfs/brick.json"
    public static let idXattr = "trusted.twinfs.id"
    /// Prefix of every xattr TwinFS keeps for itself; hidden from and refused to clients.
    public static let privateXattrPrefix = "trusted.twinfs."

    public let path: String
    /// An O_PATH descriptor of the brick root: every operation resolves relative to it.
    public let rootFD: Int32
    /// The root's path as the kernel names it (/proc/self/fd), to turn a descriptor's path
    /// into a brick-relative one (`currentPath(fd:)`).
    let kernelRoot: String?

    public init(path: String) throws(AdminError) {
        let fd = open(path, twin_O_PATH() | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AdminError(problem: "cannot open brick \(path): \(String(cString: strerror(errno)))",
                             fix: "create the brick directory (on the node's data disk) or correct 'brick' in the config")
        }
        self.path = path
        self.rootFD = fd
        self.kernelRoot = Self.procPath(fd)
    }

    deinit { close(rootFD) }

    /// The argument for *at() calls: "." for the brick root, else the relative path.
    @inline(__always)
    public static func at(_ rel: String) -> String { rel.isEmpty ? "." : rel }

    @inline(__always)
    public static func join(_ parent: String, _ name: String) -> String { parent.isEmpty ? name : parent + "/" + name }

    public func absolute(_ rel: String) -> String { rel.isEmpty ? path : path + "/" + rel }

    /// True for the one name the mount must never show or let a client touch.
    @inline(__always)
    public static func isPrivate(parentPath: String, name: String) -> Bool {
        parentPath.isEmpty && name == privateDir
    }

    // MARK: - Marker

    public enum State: Equatable, Sendable {
        case missing
        case notDirectory
        case notWritable
        case empty
        /// Holds files but no TwinFS marker: not ours (or a replaced disk with foreign data).
        case unmarked
        case marked(VolumeIdentity)
        case badMarker(String)
    }

    /// Looks at a brick directory without changing anything.
    public static func inspect(path: String) -> State {
        var st = stat()
        guard stat(path, &st) == 0 else { return .missing }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return .notDirectory }
        guard access(path, W_OK | X_OK) == 0 else { return .notWritable }
        let markerPath = path + "/" + markerFile
        if let data = FileManager.default.contents(atPath: markerPath) {
            guard let id = try? JSONDecoder().decode(Marker.self, from: data), id.format == "twinfs-brick" else {
                return .badMarker(markerPath)
            }
            return .marked(VolumeIdentity(volume: id.volume, node: id.node))
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let visible = entries.filter { $0 != privateDir && $0 != "lost+found" }
        return visible.isEmpty ? .empty : .unmarked
    }

    struct Marker: Codable {
        var format: String
        var volume: String
        var node: String
        var created: String
    }

    /// Writes the marker (and the private area) durably. Only called on an empty brick or by
    /// an explicit `journal rebuild` import.
    public func writeMarker(_ identity: VolumeIdentity) throws(AdminError) {
        let priv = absolute(Brick.privateDir)
        mkdir(priv, 0o700)
        mkdir(priv + "/tmp", 0o700)
        let m = Marker(format: "twinfs-brick", volume: identity.volume, node: identity.node,
                       created: ISO8601DateFormatter().string(from: Date()))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? enc.encode(m) else {
            throw AdminError(problem: "cannot encode the brick marker", fix: "report this as a bug")
        }
        let tmp = priv + "/brick.json.tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw AdminError(problem: "cannot write the brick marker in \(priv): \(String(cString: strerror(errno)))",
                             fix: "check that the brick is writable and not full")
        }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == data.count, synced == 0, rename(tmp, absolute(Brick.markerFile)) == 0 else {
            throw AdminError(problem: "cannot write the brick marker in \(priv): \(String(cString: strerror(errno)))",
                             fix: "check that the brick is writable and not full")
        }
        for dir in [priv, path] {
            let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 { fsync(dfd); close(dfd) }
        }
        // Give the root its stable id so `journal rebuild` finds it.
        do { try writeID(rel: "", id: StableID.root) } catch {
            throw AdminError(problem: "cannot set TwinFS's id xattr (trusted.twinfs.id) on the brick \(path): \(error)",
                             fix: "run TwinFS as root on a brick filesystem with xattr support (ext4, XFS)")
        }
    }

    // MARK: - Id high-water mark

    static let highWaterFile = ".twinfs/id-highwater"

    /// The end of the last id block this brick's node reserved (ids below it may exist or
    /// have existed); nil for a brick that never reserved one.
    public func readHighWater() -> UInt64? {
        guard let data = FileManager.default.contents(atPath: absolute(Brick.highWaterFile)),
              let text = String(data: data, encoding: .utf8) else { return nil }
        return UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Durably records a new high-water mark (once per block of ids).
    public func writeHighWater(_ counter: UInt64) throws(FSError) {
        let tmp = absolute(Brick.highWaterFile) + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FSError.last }
        let text = Array("\(counter)\n".utf8)
        let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard n == text.count, synced == 0 else { throw FSError.io }
        _ = try sys { rename(tmp, absolute(Brick.highWaterFile)) }
    }

    // MARK: - Resolving paths strictly inside the brick

    /// Runs `body` with a directory descriptor and the final name of `rel`. The directory is
    /// resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): no symlink, "..", or
    /// race with a rename can make a path leave the brick. The final name is never followed
    /// (callers use *at calls with AT_SYMLINK_NOFOLLOW / O_NOFOLLOW semantics).
    @inline(__always)
    public func at<R>(_ rel: String, _ body: (Int32, String) throws(FSError) -> R) throws(FSError) -> R {
        guard let slash = rel.utf8.lastIndex(of: UInt8(ascii: "/")) else {
            return try body(rootFD, rel.isEmpty ? "." : rel)
        }
        let parent = String(rel[..<slash])
        let name = String(rel[rel.index(after: slash)...])
        let fd = twin_open_beneath(rootFD, parent, twin_O_PATH() | O_DIRECTORY, 0)
        guard fd >= 0 else { throw FSError.last }
        defer { close(fd) }
        return try body(fd, name)
    }

    /// Runs `body` with a /proc/self/fd path of an O_PATH descriptor of `rel` itself (not
    /// followed if it is a symlink): xattr calls and chmod act on exactly that inode.
    public func withInode<R>(_ rel: String, _ body: (String, Int32) throws(FSError) -> R) throws(FSError) -> R {
        let fd = try at(rel) { (dfd, name) throws(FSError) -> Int32 in
            try sys { openat(dfd, name, twin_O_PATH() | O_NOFOLLOW | O_CLOEXEC) }
        }
        defer { close(fd) }
        return try body("/proc/self/fd/\(fd)", fd)
    }

    // MARK: - Stable ids in xattrs

    public func readID(rel: String) -> UInt64? {
        try? withInode(rel) { (proc, _) throws(FSError) -> UInt64? in
            var v: UInt64 = 0
            let n = twin_getxattr(proc, Brick.idXattr, &v, 8)
            return n == 8 ? UInt64(littleEndian: v) : nil
        } ?? nil
    }

    /// An entry of an open directory (`dirFD`, from readdir: `name` is one component): its
    /// stat and id in two syscalls, without walking the directory's path again. nil if it
    /// vanished meanwhile.
    public func entryStatAndID(dirFD: Int32, name: String) -> (stat, UInt64?)? {
        var st = stat()
        guard fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        var v: UInt64 = 0
        let n = twin_getxattr_at(dirFD, name, Brick.idXattr, &v, 8)
        return (st, n == 8 ? UInt64(littleEndian: v) : nil)
    }

    public func readID(fd: Int32) -> UInt64? { (try? storedID(fd: fd)) ?? nil }

    /// As `readID(fd:)`, but a disk that cannot say throws (nil only when there is no id):
    /// where "no id" would drop something owed, an EIO must not read as an answer.
    public func storedID(fd: Int32) throws(FSError) -> UInt64? {
        var v: UInt64 = 0
        return try Self.id(twin_fgetxattr(fd, Brick.idXattr, &v, 8), v)
    }

    /// The id an 8-byte read of the id xattr got (`n` its result, errno set when negative).
    /// No id (ENODATA, or a malformed one) is an answer; a disk that cannot say (EIO on a dying
    /// disk) is not: taken as "no id", it made an entry look like another (a false split brain).
    static func id(_ n: Int, _ v: UInt64) throws(FSError) -> UInt64? {
        if n < 0 && errno != ENODATA && errno != ERANGE { throw FSError.last }
        return n == 8 ? UInt64(littleEndian: v) : nil
    }

    public func writeID(rel: String, id: UInt64) throws(FSError) {
        try withInode(rel) { (proc, _) throws(FSError) in
            var v = id.littleEndian
            _ = try sys { twin_setxattr(proc, Brick.idXattr, &v, 8, 0) }
        }
    }

    public func writeID(fd: Int32, id: UInt64) throws(FSError) {
        var v = id.littleEndian
        _ = try sys { twin_fsetxattr(fd, Brick.idXattr, &v, 8, 0) }
    }

    /// Attributes and stable id of one entry with a single resolution (the lookup hot path).
    public func statAndID(_ rel: String) throws(FSError) -> (stat, UInt64?) {
        try withInode(rel) { (proc, fd) throws(FSError) -> (stat, UInt64?) in
            var st = stat()
            _ = try sys { fstat(fd, &st) }
            var v: UInt64 = 0
            return (st, try Self.id(twin_getxattr(proc, Brick.idXattr, &v, 8), v))
        }
    }

    // MARK: - Plain syscalls inside the brick

    public func lstat(_ rel: String) throws(FSError) -> stat {
        try at(rel) { (dfd, name) throws(FSError) -> stat in
            var st = stat()
            _ = try sys { fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) }
            return st
        }
    }

    public func openFile(_ rel: String, flags: Int32, mode: mode_t = 0) throws(FSError) -> Int32 {
        try at(rel) { (dfd, name) throws(FSError) -> Int32 in
            try sys { openat(dfd, name, flags | O_CLOEXEC | O_NOFOLLOW, mode) }
        }
    }

    public func statfs() throws(FSError) -> statvfs {
        var sv = statvfs()
        let fd = try sys { openat(rootFD, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { close(fd) }
        _ = try sys { fstatvfs(fd, &sv) }
        return sv
    }

    /// fsyncs a directory so that a namespace change in it is on disk.
    public func syncDirectory(_ rel: String) throws(FSError) {
        let fd = try openFile(rel, flags: O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        _ = try sys { fsync(fd) }
    }
}

