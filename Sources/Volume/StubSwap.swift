import BrickStore
import CTwinShims
import Foundation
import Glibc
import Journal
import TwinCore

extension LocalVolume {
    /// Replaces file `id` in the brick by its stub, once the store holds its bytes (the caller
    /// proved that) and only if the file is what was uploaded: the journal's size, hash and
    /// mtime as when the upload started, clean, single-named, not open for writing here.
    ///
    /// The stub is made unnamed in the staging area with the file's id, owner, mode, times and
    /// xattrs plus the tier xattr, fsynced, then exchanged with the file in one rename. The
    /// journal's tier row is durable before the exchange: a crash between the two leaves a
    /// row over a hot file, which a recall recognises (no tier xattr) and marks recalled;
    /// never a stub the journal does not know. Lock order: the tier's per-file recall
    /// exclusion, then the content tracker, then the journal.
    public func replaceWithStub(id: UInt64, expect: TierExpectation, row: TierRow, stubContent: [UInt8],
                                stubXattr: [UInt8]) throws(FSError) -> StubSwapOutcome {
        guard let rel = (try? journal.path(of: id)) ?? nil else { return .changed("it has no name in the journal") }
        if let why = try journalDiffers(id, expect) { return .changed(why) }
        let old: Int32
        do { old = try brick.openFile(rel, flags: O_RDONLY | O_NONBLOCK) } catch { return .changed("\(rel): \(error)") }
        defer { close(old) }
        if let why = try brickDiffers(old, id: id, expect) { return .changed("\(rel) \(why)") }
        let tmpDir = try stagingDirFD()
        defer { close(tmpDir) }
        let tmpName = try makeStub(in: tmpDir, id: id, like: old, content: stubContent, xattr: stubXattr)
        defer { unlinkat(tmpDir, tmpName, 0) }   // the file's old inode after the exchange
        // No recall of this file meanwhile: one would find the row over a file that is not a
        // stub yet, take it for a crash's leftover and mark it recalled under the coming stub.
        let done = try tier.exclusive(id) { () throws(FSError) -> Bool? in
            try submit([.tierRow(row)], wait: .durable)
            let swapped = try content.whileNoWriter(id) { () throws(FSError) -> Bool in
                // Checked again with writers held off: a write may have committed since.
                if try journalDiffers(id, expect) != nil { return false }
                return try exchange(tmpDir, tmpName, with: rel, expecting: old)
            }
            if swapped != true { try submit([.untier(id: id)], wait: .durable) }
            return swapped
        }
        guard let swapped = done else { return .writerOpen }
        return swapped ? .swapped : .changed("\(rel) changed during the swap")
    }

    /// Why the journal's row no longer describes the uploaded file, or nil.
    func journalDiffers(_ id: UInt64, _ e: TierExpectation) throws(FSError) -> String? {
        let rec: InodeRecord?
        do { rec = try journal.inode(id) } catch { throw FSError.io }
        guard let rec else { return "it was deleted" }
        if rec.dirty { return "it is being written" }
        guard rec.kind == .file, rec.size == e.size, rec.hash == e.hash, rec.mtimeNs == e.mtimeNs else {
            return "it changed since its upload started"
        }
        guard rec.nlink == 1 else { return "it has \(rec.nlink) hard links" }
        return nil
    }

    /// Why the brick's file is not the uploaded one, or nil.
    func brickDiffers(_ fd: Int32, id: UInt64, _ e: TierExpectation) throws(FSError) -> String? {
        var st = stat()
        _ = try sys { fstat(fd, &st) }
        guard st.kind == .file, brick.readID(fd: fd) == id else { return "is another entry now" }
        guard st.st_nlink == 1 else { return "has \(st.st_nlink) hard links" }
        guard Int64(st.st_size) == e.size, st.mtimeNs == e.mtimeNs else { return "changed since its upload started" }
        guard !hasTierXattr(fd) else { return "is a stub already" }
        return nil
    }

    /// The stub, durable and named `stub-<id>-<random>` in the staging area; answers the name.
    func makeStub(in tmpDir: Int32, id: UInt64, like old: Int32, content: [UInt8], xattr: [UInt8]) throws(FSError) -> String {
        let fd = try sys { openat(tmpDir, ".", twin_O_TMPFILE() | O_RDWR | O_CLOEXEC, 0o600) }
        defer { close(fd) }
        var done = 0
        while done < content.count {
            let n = content.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw FSError.last }
            done += n
        }
        _ = try sys { twin_fsetxattr(fd, Self.tierXattr, xattr, xattr.count, 0) }
        try dress(fd, like: old, id: id)
        let name = Self.stubPrefix + "\(String(id, radix: 16))-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"
        _ = try sys { linkat(fd, "", tmpDir, name, twin_AT_EMPTY_PATH()) }
        return name
    }
}
