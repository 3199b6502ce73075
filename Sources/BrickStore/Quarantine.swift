import CTwinShims
import Fixity
import Foundation
import Glibc
import TwinCore

extension Brick {
    /// Where copies set aside by the healer live: inside the brick (same disk, readable with
    /// `ls`/`cp`), hidden from the mount with the rest of `.twinfs/`.
    public static let quarantineDir = ".twinfs/quarantine"
    /// On a placeholder made while healing: the size and XXH3-128 of the content it still awaits.
    /// A placeholder is an empty file, so `journal rebuild` and an admin can tell it apart from
    /// a real (empty) file.
    public static let pendingXattr = "trusted.twinfs.pending"

    public func markPending(rel: String, size: Int64, hash: [UInt8]) throws(FSError) {
        try withInode(rel) { (proc, _) throws(FSError) in
            var v = withUnsafeBytes(of: UInt64(size).littleEndian) { Array($0) } + hash
            _ = try sys { twin_setxattr(proc, Brick.pendingXattr, &v, v.count, 0) }
        }
    }

    public func clearPending(rel: String) {
        _ = try? withInode(rel) { (proc, _) throws(FSError) in
            _ = twin_removexattr(proc, Brick.pendingXattr)
        }
    }

    public func isPending(rel: String) -> Bool {
        (try? withInode(rel) { (proc, _) throws(FSError) -> Bool in
            twin_getxattr(proc, Brick.pendingXattr, nil, 0) >= 0
        }) ?? false
    }

    /// Free space a quarantine copy must leave on the brick: 5 % of its size. Quarantine shares
    /// the archive's disk; a burst of copies (a scrub finding many bad files, many split brains)
    /// must never be what fills it and stops PACS ingest.
    public static let quarantineReserveFraction: Int64 = 20

    /// Why a copy cannot go to quarantine now (nil: it fits and leaves the reserve free).
    public func quarantineRoomProblem(bytes: Int64) -> String? {
        guard let fs = try? statfs() else { return nil }
        let total = Int64(fs.f_blocks) * Int64(fs.f_frsize), free = Int64(fs.f_bavail) * Int64(fs.f_frsize)
        let reserve = total / Brick.quarantineReserveFraction
        guard free - bytes < reserve else { return nil }
        return "a quarantine copy of \(bytes) bytes would leave \(max(0, free - bytes)) bytes free on the brick, less than the \(reserve) bytes (5 %) kept free for the archive"
    }

    /// Copies file `rel` into the quarantine area (durably) and returns where it went, its size
    /// and XXH3-128. The original is left as it is. ENOSPC, nothing copied, when the copy would
    /// eat into the brick's reserve (`quarantineRoomProblem`): the caller then keeps the file
    /// where it is rather than replace it without a copy.
    public func quarantineCopy(rel: String, id: UInt64, tag: String) throws(FSError) -> (stored: String, size: Int64, hash: [UInt8]) {
        if let st = try? lstat(rel), quarantineRoomProblem(bytes: Int64(st.st_size)) != nil { throw FSError(ENOSPC) }
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let base = rel.split(separator: "/").last.map(String.init) ?? "file"
        let dirRel = "\(Brick.quarantineDir)/\(stamp)-\(tag)-\(String(id, radix: 16))"
        mkdir(absolute(Brick.privateDir), 0o700)
        mkdir(absolute(Brick.quarantineDir), 0o700)
        var n = 0
        var dir = dirRel
        while mkdir(absolute(dir), 0o700) != 0 {
            guard errno == EEXIST, n < 100 else { throw FSError.last }
            n += 1
            dir = dirRel + "-\(n)"
        }
        let stored = dir + "/" + base
        let src = try openFile(rel, flags: O_RDONLY)
        defer { close(src) }
        let dst = open(absolute(stored), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard dst >= 0 else { throw FSError.last }
        defer { close(dst) }
        let hasher = XXH128Hasher()
        let chunk = 1 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        var total: Int64 = 0
        while true {
            let r = read(src, buf.baseAddress, chunk)
            if r < 0 { if errno == EINTR { continue }; throw FSError.last }
            if r == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buf[0..<r]))
            var off = 0
            while off < r {
                let w = write(dst, buf.baseAddress! + off, r - off)
                if w < 0 { if errno == EINTR { continue }; throw FSError.last }
                off += w
            }
            total += Int64(r)
        }
        _ = try sys { fsync(dst) }
        let dfd = open(absolute(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
        return (stored, total, hasher.digest().bytes)
    }
}
