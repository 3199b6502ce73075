import BrickStore
import CTwinShims
import Fixity
import Foundation
import Glibc
import Journal
import TwinCore

/// Whole-file replacement from the peer (catch-up, pull, heal) without torn reads: the new
/// version is written to an unnamed file on the brick's filesystem and swapped with the live
/// file in one rename once its XXH3-128 is verified. A reader sees the old version whole, then
/// the new one whole (a handle opened before the swap keeps reading the old one, as after any
/// rename over a file); a send that breaks off leaves no trace (an unnamed file vanishes with
/// its descriptor, even in a crash).
extension LocalVolume {
    static let stagingDir = Brick.privateDir + "/tmp"
    static let stagingPrefix = "stage-"

    /// Opens a staged copy of file `node`: unnamed, with `node`'s id, this mode and owner, and
    /// `size` bytes (sparse until written). Writes through the handle touch neither the live
    /// file nor its journal row.
    public func openStaged(_ node: NodeRef, mode: mode_t, uid: uid_t, gid: gid_t, size: Int64) throws(FSError) -> UInt64 {
        let dir = try stagingDirFD()
        defer { close(dir) }
        let fd = try sys { openat(dir, ".", twin_O_TMPFILE() | O_RDWR | O_CLOEXEC, mode & 0o7777) }
        do throws(FSError) {
            _ = try sys { fchown(fd, uid, gid) }
            // fchown clears set-id bits: the mode goes last.
            _ = try sys { fchmod(fd, mode & 0o7777) }
            try brick.writeID(fd: fd, id: node.id)
            _ = try sys { ftruncate(fd, off_t(size)) }
        } catch {
            close(fd)
            throw error
        }
        let s = ContentState(id: node.id)
        s.restartEmpty()
        let h = newHandle()
        files.with { $0[h] = OpenFile(fd: fd, id: node.id, content: s, staged: true) }
        return h
    }

    /// Makes the staged bytes durable and answers their size and XXH3-128, for the caller to
    /// compare with the sender's before `swapStaged`.
    public func stagedContent(handle: UInt64) throws(FSError) -> (size: Int64, hash: [UInt8]) {
        let f = try file(handle)
        guard f.staged, let s = f.content else { throw FSError(EINVAL) }
        s.lock()
        defer { s.unlock() }
        guard Glibc.fsync(f.fd) == 0 else {
            log.error("fsync of the staged copy of file id \(f.id) failed: \(String(cString: strerror(errno)))")
            throw FSError.io
        }
        var st = stat()
        _ = try sys { fstat(f.fd, &st) }
        if s.sequential && s.nextOffset == Int64(st.st_size) { return (Int64(st.st_size), s.hasher.digest().bytes) }
        let (digest, n) = try XXH128Hasher.hash(fd: f.fd)
        return (n, digest.bytes)
    }

    public enum SwapRefusal: Error, Equatable {
        /// The live file is open for writing on this node: its writer's bytes must not land in
        /// a replaced inode. The sender tries again later.
        case writerOpen
        /// The live name no longer holds this file, or the file has other hard links (a rename
        /// would split them): the sender sends again (in place when linked).
        case liveFileChanged(String)
    }

    /// Replaces the live file of the staged handle's id with the staged copy (verified by the
    /// caller: `size` bytes hashing to `hash`), keeping the live file's extended attributes,
    /// and records the new content durably. The caller keeps other changes of the peer to
    /// this file's name out meanwhile. After it, the handle is the live file.
    /// `keepOwnerAndMode`: asked only where the two differ; true keeps the live file's owner
    /// and mode too (this node owes the sender a change of them, which the sender's
    /// attributes, read when its send began, predate).
    public func swapStaged(handle: UInt64, size: Int64, hash: [UInt8],
                           keepOwnerAndMode: () -> Bool = { false }) throws(FSError) -> SwapRefusal? {
        let f = try file(handle)
        guard f.staged, let s = f.content else { throw FSError(EINVAL) }
        guard let rel = (try? journal.path(of: f.id)) ?? nil else { return .liveFileChanged("it has no name in the journal") }
        let old: Int32
        do { old = try brick.openFile(rel, flags: O_RDONLY | O_NONBLOCK) } catch { return .liveFileChanged("\(rel): \(error)") }
        defer { close(old) }
        var ost = stat()
        _ = try sys { fstat(old, &ost) }
        guard ost.kind == .file, brick.readID(fd: old) == f.id else { return .liveFileChanged("\(rel) is another entry now") }
        guard ost.st_nlink == 1 else { return .liveFileChanged("\(rel) has \(ost.st_nlink) hard links") }
        try copyXattrs(from: old, to: f.fd)
        if try ownerOrModeDiffer(ost, f.fd), keepOwnerAndMode() { try copyOwnerAndMode(from: ost, to: f.fd) }
        let tmpName = Self.stagingPrefix + String(f.id, radix: 16) + "-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let tmpDir = try stagingDirFD()
        defer { close(tmpDir) }
        _ = try sys { linkat(f.fd, "", tmpDir, tmpName, twin_AT_EMPTY_PATH()) }
        defer { unlinkat(tmpDir, tmpName, 0) }   // the old inode after the exchange
        let swapped = try content.whileNoWriter(f.id) { () throws(FSError) -> Bool in
            // Dirty first: a crash after the exchange re-hashes the new bytes at recovery.
            try submit([.markDirty(id: f.id)], wait: .written)
            return try exchange(tmpDir, tmpName, with: rel, expecting: old)
        }
        guard let done = swapped else { return .writerOpen }
        guard done else {
            // The row was marked dirty for nothing: record the live inode's bytes again.
            try commitContent(fd: old, id: f.id, streamed: nil)
            return .liveFileChanged("\(rel) changed during the swap")
        }
        var st = stat()
        _ = try sys { fstat(f.fd, &st) }
        try submit([.setContent(id: f.id, size: size, hash: hash, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs)], wait: .durable)
        s.lock()
        s.unsynced = false
        s.journalDirty = false
        s.unlock()
        return nil
    }

    func ownerOrModeDiffer(_ live: stat, _ fd: Int32) throws(FSError) -> Bool {
        var st = stat()
        _ = try sys { fstat(fd, &st) }
        return st.st_uid != live.st_uid || st.st_gid != live.st_gid || st.st_mode & 0o7777 != live.st_mode & 0o7777
    }

    /// The live file's owner and mode on the staged copy.
    func copyOwnerAndMode(from live: stat, to dst: Int32) throws(FSError) {
        _ = try sys { fchown(dst, live.st_uid, live.st_gid) }
        // fchown clears set-id bits: the mode goes last.
        _ = try sys { fchmod(dst, live.st_mode & 0o7777) }
    }

    /// The live file's extended attributes (Samba's DOS attributes and ACLs among them) on the
    /// staged copy, which replaces it. TwinFS's own (`trusted.twinfs.*`) stay behind: the id is
    /// already there, and a placeholder's pending mark does not describe the new bytes.
    func copyXattrs(from src: Int32, to dst: Int32) throws(FSError) {
        var names = [CChar](repeating: 0, count: 65536)
        let n = Int(twin_listxattr("/proc/self/fd/\(src)", &names, names.count))
        guard n > 0 else { return }
        var value = [UInt8](repeating: 0, count: 65536)
        var start = 0
        for i in 0..<n where names[i] == 0 {
            let name = names.withUnsafeBufferPointer { String(cString: $0.baseAddress! + start) }
            start = i + 1
            if name.hasPrefix(Brick.privateXattrPrefix) { continue }
            let len = twin_fgetxattr(src, name, &value, value.count)
            guard len >= 0 else { continue }
            _ = try sys { twin_fsetxattr(dst, name, value, Int(len), 0) }
        }
    }

    /// What a crash left named in the staging area: staged copies from the peer (between their
    /// link and their exchange, or after it: a copy the peer still holds or the version it
    /// replaced), and the tier's stubs and recalls (before their exchange the live name still
    /// holds the file or its stub; after it, the staged name holds the replaced stub, or bytes
    /// the store is proven to hold). The live files are whole either way.
    public func removeStaleStaging() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: brick.absolute(Self.stagingDir)) else { return }
        for n in names where [Self.stagingPrefix, Self.stubPrefix, Self.recallPrefix].contains(where: n.hasPrefix) {
            _ = brick.absolute(Self.stagingDir + "/" + n).withCString { Glibc.unlink($0) }
        }
    }

    /// The staging directory (made on first use), opened for the *at calls.
    func stagingDirFD() throws(FSError) -> Int32 {
        _ = brick.absolute(Self.stagingDir).withCString { Glibc.mkdir($0, 0o700) }
        return try brick.openFile(Self.stagingDir, flags: O_RDONLY | O_DIRECTORY)
    }

    /// Exchanges `tmpName` in the staging directory with the brick entry `rel`, which must still
    /// be the inode of `expecting`; puts it back and answers false otherwise. Durable on true.
    func exchange(_ tmpDir: Int32, _ tmpName: String, with rel: String, expecting: Int32) throws(FSError) -> Bool {
        var want = stat()
        _ = try sys { fstat(expecting, &want) }
        _ = try brick.at(rel) { (d, n) throws(FSError) in _ = try sys { twin_renameat2(tmpDir, tmpName, d, n, twin_RENAME_EXCHANGE()) } }
        var now = stat()
        guard fstatat(tmpDir, tmpName, &now, AT_SYMLINK_NOFOLLOW) == 0, now.st_ino == want.st_ino, now.st_dev == want.st_dev else {
            _ = try? brick.at(rel) { (d, n) throws(FSError) in _ = try sys { twin_renameat2(tmpDir, tmpName, d, n, twin_RENAME_EXCHANGE()) } }
            return false
        }
        try brick.syncDirectory(Self.parentPath(rel))
        return true
    }

    static func parentPath(_ rel: String) -> String {
        Brick.at(rel.split(separator: "/").dropLast().joined(separator: "/"))
    }
}

