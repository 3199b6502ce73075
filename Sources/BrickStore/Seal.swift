import CTwinShims
import Foundation
import Glibc
import TwinCore

/// What a content commit promised about a file: its size and XXH3-128, written as the xattr
/// `trusted.twinfs.seal` of the brick file *before* the file's fsync, so the one flush makes
/// the bytes and the seal durable together (ext4 and XFS log the xattr with the inode).
/// The journal row follows without its own flush; recovery re-derives a row that lags from
/// the seal (see `SealMarkers`).
public struct ContentSeal: Equatable, Sendable {
    public static let xattr = "trusted.twinfs.seal"
    static let format: UInt8 = 1
    static let encodedSize = 1 + 8 + 16

    public var size: Int64
    /// XXH3-128, canonical (big-endian) byte order, 16 bytes.
    public var hash: [UInt8]

    public init(size: Int64, hash: [UInt8]) {
        self.size = size
        self.hash = hash
    }

    /// Format byte, size (8 bytes, little-endian), hash.
    public var encoded: [UInt8] {
        var out: [UInt8] = [Self.format]
        withUnsafeBytes(of: UInt64(bitPattern: size).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: hash)
        return out
    }

    /// nil for anything but a well-formed seal of this format.
    public init?(encoded b: [UInt8]) {
        guard b.count == Self.encodedSize, b[0] == Self.format else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[1 + i]) << (8 * UInt64(i)) }
        self.size = Int64(bitPattern: v)
        self.hash = Array(b[9...])
    }
}

extension Brick {
    /// Writes the seal of an open file (not durable by itself: the caller's fsync follows).
    public func writeSeal(fd: Int32, _ seal: ContentSeal) throws(FSError) {
        let bytes = seal.encoded
        _ = try sys { twin_fsetxattr(fd, ContentSeal.xattr, bytes, bytes.count, 0) }
    }

    public func readSeal(fd: Int32) -> ContentSeal? {
        var buf = [UInt8](repeating: 0, count: ContentSeal.encodedSize + 1)
        let n = twin_fgetxattr(fd, ContentSeal.xattr, &buf, buf.count)
        return n == ContentSeal.encodedSize ? ContentSeal(encoded: Array(buf[0..<n])) : nil
    }

    /// The brick-relative path an open descriptor has now (the kernel's view, renames
    /// included); nil when it has no name in this brick (unlinked, or outside it).
    public func currentPath(fd: Int32) -> String? {
        guard let root = kernelRoot, let p = Self.procPath(fd) else { return nil }
        if p == root { return "" }
        guard p.hasPrefix(root == "/" ? "/" : root + "/"), !p.hasSuffix(" (deleted)") else { return nil }
        return String(p.dropFirst(root == "/" ? 1 : root.count + 1))
    }

    static func procPath(_ fd: Int32) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return buf.withUnsafeBufferPointer { p in
            String(decoding: UnsafeRawBufferPointer(start: p.baseAddress, count: n), as: UTF8.self)
        }
    }
}

/// The brick's list of files whose seal the journal may not hold durably yet: one symlink per
/// sealed commit in `.twinfs/sealed/`, named `<id>-<tag>`, pointing at the file's
/// brick-relative path. A symlink is pure metadata, so the file's own fsync makes it durable
/// (ext4 commits the running journal transaction, XFS forces its log up to the inode, both
/// include the earlier symlink). It is removed once a durable journal commit covers the row.
/// After a power loss, recovery reads these to find the rows that lag, without a crawl.
public struct SealMarkers: Sendable {
    public static let dir = Brick.privateDir + "/sealed"
    let brick: Brick

    public init(brick: Brick) { self.brick = brick }

    /// Creates marker `name` -> `target`. The directory is made on first use.
    public func add(name: String, target: String) throws(FSError) {
        let dirFD = try openDir(create: true)
        defer { close(dirFD) }
        _ = try sys { symlinkat(target, dirFD, name) }
    }

    /// Removes markers (those already gone are fine).
    public func remove(_ names: [String]) {
        guard !names.isEmpty, let dirFD = try? openDir(create: false) else { return }
        defer { close(dirFD) }
        for n in names { unlinkat(dirFD, n, 0) }
    }

    /// Every marker: its name, the file id it names, and its target path.
    public func list() -> [(name: String, id: UInt64, target: String)] {
        guard let dirFD = try? openDir(create: false) else { return [] }
        defer { close(dirFD) }
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: brick.absolute(Self.dir)) else { return [] }
        var out: [(name: String, id: UInt64, target: String)] = []
        for n in names.sorted() {
            guard let dash = n.firstIndex(of: "-"), let id = UInt64(n[..<dash]) else { continue }
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let k = readlinkat(dirFD, n, &buf, buf.count - 1)
            guard k > 0 else { continue }
            let target = buf.withUnsafeBufferPointer { p in
                String(decoding: UnsafeRawBufferPointer(start: p.baseAddress, count: k), as: UTF8.self)
            }
            out.append((n, id, target))
        }
        return out
    }

    private func openDir(create: Bool) throws(FSError) -> Int32 {
        let fd = openat(brick.rootFD, Self.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        if fd >= 0 { return fd }
        if errno != ENOENT || !create { throw FSError.last }
        _ = mkdirat(brick.rootFD, Self.dir, 0o700)
        return try sys { openat(brick.rootFD, Self.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW) }
    }
}
