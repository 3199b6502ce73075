import CTwinShims
import Fixity
import Foundation
import Glibc
import TwinCore
import TestSupport
import XCTest

/// What PACS servers and Samba do to a filesystem, each checked through a real mount and then
/// against the brick (same relative path, same bytes, mode, owner, times) and the journal (hash).
final class FileSemanticsTests: XCTestCase {
    func testWriteAtOffsetsReadBackAndBrickHoldsTheSameBytes() throws {
        let n = try startedNode()
        let p = n.mnt + "/Study1/Series1/IM00001.dcm"
        try FileManager.default.createDirectory(atPath: n.mnt + "/Study1/Series1", withIntermediateDirectories: true)
        let data = pseudoRandomBytes(3 << 20, seed: 1)
        try writeFile(p, data, fsync: true)
        // Overwrite in the middle, then write past the end (a hole).
        let fd = open(p, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let patch = pseudoRandomBytes(4096, seed: 2)
        XCTAssertEqual(patch.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, 1_000_000) }, 4096)
        XCTAssertEqual(patch.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, Int(4 << 20)) }, 4096)
        close(fd)
        var expected = data
        expected.replaceSubrange(1_000_000..<1_004_096, with: patch)
        expected += [UInt8](repeating: 0, count: (4 << 20) - (3 << 20)) + patch
        XCTAssertEqual(try readFile(p), expected)
        XCTAssertEqual(try readFile(n.brick + "/Study1/Series1/IM00001.dcm"), expected, "the brick holds the file at the same path")
        // The journal's hash is the hash of the bytes, after non-sequential writes too.
        let rec = try XCTUnwrap(n.journalRecord("Study1/Series1/IM00001.dcm"))
        XCTAssertEqual(rec.hash, XXH128Hasher.hash(expected).bytes)
        XCTAssertEqual(rec.size, Int64(expected.count))
        XCTAssertFalse(rec.dirty)
    }

    func testOpenFlagsExclTruncAppend() throws {
        let n = try startedNode()
        let p = n.mnt + "/f.dcm"
        var fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0o640)
        XCTAssertGreaterThanOrEqual(fd, 0)
        _ = write(fd, "abc", 3)
        close(fd)
        fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0o640)
        XCTAssertEqual(fd, -1)
        XCTAssertEqual(errno, EEXIST, "O_EXCL on an existing file fails with EEXIST")
        fd = open(p, O_WRONLY | O_APPEND)
        _ = write(fd, "def", 3)
        close(fd)
        XCTAssertEqual(String(decoding: try readFile(p), as: UTF8.self), "abcdef")
        fd = open(p, O_WRONLY | O_TRUNC)
        _ = write(fd, "xy", 2)
        close(fd)
        XCTAssertEqual(String(decoding: try readFile(p), as: UTF8.self), "xy")
        fd = open(p, O_RDWR | O_CREAT, 0o600)   // O_CREAT on an existing file opens it
        XCTAssertGreaterThanOrEqual(fd, 0)
        close(fd)
        var st = stat()
        XCTAssertEqual(stat(n.brick + "/f.dcm", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o640)
        let rec = try XCTUnwrap(n.journalRecord("f.dcm"))
        XCTAssertEqual(rec.hash, XXH128Hasher.hash(Array("xy".utf8)).bytes)
        XCTAssertEqual(rec.size, 2)
    }

    func testTruncateFallocateFsyncFdatasync() throws {
        let n = try startedNode()
        let p = n.mnt + "/t.bin"
        try writeFile(p, pseudoRandomBytes(100_000, seed: 3))
        XCTAssertEqual(truncate(p, 1000), 0)
        XCTAssertEqual(try readFile(p).count, 1000)
        XCTAssertEqual(try n.journalRecord("t.bin")?.hash, XXH128Hasher.hash(Array(pseudoRandomBytes(100_000, seed: 3)[0..<1000])).bytes,
                       "truncate(2) by path records the new hash at once")
        let fd = open(p, O_RDWR)
        XCTAssertEqual(twin_fallocate(fd, 0, 0, 8192), 0, String(cString: strerror(errno)))
        XCTAssertEqual(ftruncate(fd, 5000), 0)
        XCTAssertEqual(fdatasync(fd), 0)
        XCTAssertEqual(fsync(fd), 0)
        // After fsync the journal already holds the file's state, before close.
        var expected = Array(pseudoRandomBytes(100_000, seed: 3)[0..<1000])
        expected += [UInt8](repeating: 0, count: 4000)
        XCTAssertEqual(try n.journalRecord("t.bin")?.hash, XXH128Hasher.hash(expected).bytes)
        close(fd)
        XCTAssertEqual(try readFile(p), expected)
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0)
    }

    func testMkdirRmdirReaddirAndPrivateAreaIsHidden() throws {
        let n = try startedNode()
        let fm = FileManager.default
        for i in 0..<50 {
            try fm.createDirectory(atPath: n.mnt + "/S/\(i)", withIntermediateDirectories: true)
            try writeFile(n.mnt + "/S/\(i)/x", [UInt8(i)])
        }
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: n.mnt + "/S").count, 50)
        XCTAssertEqual(rmdir(n.mnt + "/S/3"), -1)
        XCTAssertEqual(errno, ENOTEMPTY)
        XCTAssertEqual(unlink(n.mnt + "/S/3/x"), 0)
        XCTAssertEqual(rmdir(n.mnt + "/S/3"), 0)
        XCTAssertFalse(fm.fileExists(atPath: n.brick + "/S/3"))
        // TwinFS's own state never appears in the mount and cannot be created there.
        XCTAssertFalse(try fm.contentsOfDirectory(atPath: n.mnt).contains(".twinfs"))
        XCTAssertTrue(fm.fileExists(atPath: n.brick + "/.twinfs/brick.json"))
        var st = stat()
        XCTAssertEqual(lstat(n.mnt + "/.twinfs", &st), -1)
        XCTAssertEqual(mkdir(n.mnt + "/.twinfs", 0o755), -1)
        XCTAssertEqual(open(n.mnt + "/.twinfs/brick.json", O_RDONLY), -1)
        let listing = try XCTUnwrap(Set(fm.contentsOfDirectory(atPath: n.mnt + "/S")))
        XCTAssertEqual(listing, Set((0..<50).filter { $0 != 3 }.map(String.init)))
    }

    func testRenameOverTargetNoreplaceAndExchange() throws {
        let n = try startedNode()
        let m = n.mnt
        try writeFile(m + "/a", Array("A".utf8))
        try writeFile(m + "/b", Array("B".utf8))
        try FileManager.default.createDirectory(atPath: m + "/d1/sub", withIntermediateDirectories: true)
        try writeFile(m + "/d1/sub/f", Array("F".utf8))
        // Over an existing target.
        XCTAssertEqual(rename(m + "/a", m + "/b"), 0)
        XCTAssertEqual(String(decoding: try readFile(m + "/b"), as: UTF8.self), "A")
        XCTAssertFalse(FileManager.default.fileExists(atPath: m + "/a"))
        // A directory with contents.
        XCTAssertEqual(rename(m + "/d1", m + "/d2"), 0)
        XCTAssertEqual(String(decoding: try readFile(m + "/d2/sub/f"), as: UTF8.self), "F")
        XCTAssertEqual(String(decoding: try readFile(n.brick + "/d2/sub/f"), as: UTF8.self), "F")
        // RENAME_NOREPLACE refuses an existing target.
        try writeFile(m + "/c", Array("C".utf8))
        XCTAssertEqual(twin_renameat2(AT_FDCWD, m + "/c", AT_FDCWD, m + "/b", twin_RENAME_NOREPLACE()), -1)
        XCTAssertEqual(errno, EEXIST)
        // RENAME_EXCHANGE swaps.
        XCTAssertEqual(twin_renameat2(AT_FDCWD, m + "/c", AT_FDCWD, m + "/b", twin_RENAME_EXCHANGE()), 0, String(cString: strerror(errno)))
        XCTAssertEqual(String(decoding: try readFile(m + "/b"), as: UTF8.self), "C")
        XCTAssertEqual(String(decoding: try readFile(m + "/c"), as: UTF8.self), "A")
        XCTAssertEqual(String(decoding: try readFile(n.brick + "/c"), as: UTF8.self), "A")
        // The journal followed every rename.
        XCTAssertEqual(try n.journalRecord("c")?.hash, XXH128Hasher.hash(Array("A".utf8)).bytes)
        XCTAssertEqual(try n.journalRecord("b")?.hash, XXH128Hasher.hash(Array("C".utf8)).bytes)
        XCTAssertNotNil(try n.journalRecord("d2/sub/f"))
        XCTAssertNil(try n.journalRecord("d1"))
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0)
    }

    func testUnlinkWhileOpenKeepsReading() throws {
        let n = try startedNode()
        let p = n.mnt + "/open.bin"
        let data = pseudoRandomBytes(200_000, seed: 4)
        try writeFile(p, data)
        let fd = open(p, O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(unlink(p), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: p))
        var st = stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        XCTAssertEqual(st.st_size, 200_000)
        var buf = [UInt8](repeating: 0, count: 200_000)
        XCTAssertEqual(buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 200_000, 0) }, 200_000)
        XCTAssertEqual(buf, data)
        close(fd)
        XCTAssertNil(try n.journalRecord("open.bin"))
    }

    /// Issue 15, case 1: mkfifo, mknod (FIFO, character and block devices, and `mknod name f`
    /// for a regular file) and a bound unix socket, on the mount and replicated, made while the
    /// peer is down too, then verified and compared on both bricks. Before, each was EPERM.
    func testSpecialFilesAreMadeReplicatedAndHealed() throws {
        let c = try cluster()
        waitHealthy(c)
        let m = c.a.mnt
        XCTAssertEqual(mkdir(m + "/sp", 0o755), 0)
        XCTAssertEqual(mkfifo(m + "/sp/fifo", 0o640), 0, String(cString: strerror(errno)))
        XCTAssertEqual(mknod(m + "/sp/null", S_IFCHR | 0o666, devNumber(1, 3)), 0, String(cString: strerror(errno)))
        XCTAssertEqual(mknod(m + "/sp/blk", S_IFBLK | 0o600, devNumber(7, 42)), 0, String(cString: strerror(errno)))
        XCTAssertEqual(mknod(m + "/sp/regular", S_IFREG | 0o644, 0), 0, String(cString: strerror(errno)))
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array((m + "/sp/sock").utf8CString)
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in for (i, ch) in path.enumerated() where i < buf.count { buf[i] = UInt8(bitPattern: ch) } }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(bound, 0, String(cString: strerror(errno)))
        close(fd)
        var st = stat()
        XCTAssertEqual(lstat(m + "/sp/fifo", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO)
        XCTAssertEqual(lstat(m + "/sp/null", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR)
        XCTAssertEqual(st.st_rdev, devNumber(1, 3))
        XCTAssertEqual(lstat(m + "/sp/regular", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(lstat(c.b.brick + "/sp/blk", &st), 0, "on b's brick, a plain special file")
        XCTAssertEqual(st.st_rdev, devNumber(7, 42))
        // Made while the peer is down: owed, and replayed when it is back.
        c.cut(.reset)
        waitUntil("a DEGRADED", timeout: 30) { state(c.a) == "DEGRADED" }
        XCTAssertEqual(mkfifo(m + "/sp/apart", 0o600), 0)
        c.restore()
        waitHealthy(c)
        XCTAssertEqual(lstat(c.b.brick + "/sp/apart", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO)
        for n in [c.a, c.b] {
            let v = n.twinfs(["verify", "--config", n.configPath])
            XCTAssertEqual(v.status, 0, "verify on \(n.name): \(v.stdout) \(v.stderr)")
        }
        try assertReplicasIdentical(c)
    }

    func testSymlinkReadlinkAndHardLinks() throws {
        let n = try startedNode()
        let m = n.mnt
        try writeFile(m + "/orig", Array("data".utf8))
        XCTAssertEqual(symlink("orig", m + "/ln"), 0)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: m + "/ln"), "orig")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: n.brick + "/ln"), "orig")
        XCTAssertEqual(String(decoding: try readFile(m + "/ln"), as: UTF8.self), "data")
        XCTAssertEqual(link(m + "/orig", m + "/hard"), 0)
        var a = stat(), b = stat()
        XCTAssertEqual(stat(m + "/orig", &a), 0)
        XCTAssertEqual(stat(m + "/hard", &b), 0)
        XCTAssertEqual(a.st_ino, b.st_ino, "hard links share one stable inode number")
        XCTAssertEqual(b.st_nlink, 2)
        XCTAssertEqual(unlink(m + "/orig"), 0)
        XCTAssertEqual(String(decoding: try readFile(m + "/hard"), as: UTF8.self), "data")
        XCTAssertNotNil(try n.journalRecord("hard"), "the inode survives while a name is left")
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0, n.twinfs(["verify", "--config", n.configPath]).stdout)
    }

    func testChmodChownUtimensAndBrickMetadataMatch() throws {
        let n = try startedNode()
        let p = n.mnt + "/meta.dcm"
        try writeFile(p, Array("x".utf8))
        XCTAssertEqual(chmod(p, 0o600), 0)
        XCTAssertEqual(chown(p, 1234, 5678), 0)
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 5), timespec(tv_sec: 1_200_000_000, tv_nsec: 7)]
        XCTAssertEqual(utimensat(AT_FDCWD, p, &times, 0), 0)
        var m = stat(), b = stat()
        XCTAssertEqual(stat(p, &m), 0)
        XCTAssertEqual(stat(n.brick + "/meta.dcm", &b), 0)
        for s in [m, b] {
            XCTAssertEqual(s.st_mode & 0o7777, 0o600)
            XCTAssertEqual(s.st_uid, 1234)
            XCTAssertEqual(s.st_gid, 5678)
            XCTAssertEqual(s.st_mtim.tv_sec, 1_200_000_000)
            XCTAssertEqual(s.st_mtim.tv_nsec, 7)
            XCTAssertEqual(s.st_atim.tv_sec, 1_000_000_000)
        }
        // A file created by another user belongs to that user (in the mount and in the brick).
        let r = sh("setpriv --reuid=4321 --regid=4321 --clear-groups touch \(n.mnt)/tmpdir/byuser 2>&1 || true; mkdir -m 1777 \(n.mnt)/tmpdir && setpriv --reuid=4321 --regid=4321 --clear-groups touch \(n.mnt)/tmpdir/byuser", timeout: 30)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(stat(n.brick + "/tmpdir/byuser", &b), 0)
        XCTAssertEqual(b.st_uid, 4321)
        // default_permissions: that user may not write into a root-owned 0755 directory.
        try FileManager.default.createDirectory(atPath: n.mnt + "/rootonly", withIntermediateDirectories: false)
        let denied = sh("setpriv --reuid=4321 --regid=4321 --clear-groups touch \(n.mnt)/rootonly/x", timeout: 30)
        XCTAssertNotEqual(denied.status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: n.brick + "/rootonly/x"))
    }

    func testStatfsReportsTheBricksSpace() throws {
        let n = try startedNode()
        var a = statvfs(), b = statvfs()
        XCTAssertEqual(statvfs(n.mnt, &a), 0)
        XCTAssertEqual(statvfs(n.brick, &b), 0)
        XCTAssertEqual(a.f_blocks * a.f_frsize, b.f_blocks * b.f_frsize)
        XCTAssertGreaterThan(a.f_bavail, 0)
    }

    func testExtendedAttributesAndPrivateXattrsHidden() throws {
        let n = try startedNode()
        let p = n.mnt + "/x.dcm"
        try writeFile(p, Array("x".utf8))
        let value: [UInt8] = [0, 0, 3, 0, 4, 0, 0, 0, 0x20, 0]
        XCTAssertEqual(value.withUnsafeBytes { twin_lsetxattr(p, "user.DOSATTRIB", $0.baseAddress, value.count, 0) }, 0)
        var buf = [UInt8](repeating: 0, count: 64)
        let got = buf.withUnsafeMutableBytes { twin_lgetxattr(p, "user.DOSATTRIB", $0.baseAddress, 64) }
        XCTAssertEqual(Array(buf[0..<max(got, 0)]), value)
        let inBrick = buf.withUnsafeMutableBytes { twin_lgetxattr(n.brick + "/x.dcm", "user.DOSATTRIB", $0.baseAddress, 64) }
        XCTAssertEqual(inBrick, value.count, "the xattr is stored in the brick")
        var list = [CChar](repeating: 0, count: 512)
        let ln = twin_llistxattr(p, &list, 512)
        let names = String(decoding: list[0..<max(ln, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "\0").map(String.init)
        XCTAssertEqual(names, ["user.DOSATTRIB"], "TwinFS's trusted.twinfs.* xattrs stay hidden")
        XCTAssertEqual(twin_lgetxattr(p, "trusted.twinfs.id", &buf, 64), -1)
        XCTAssertEqual(twin_lsetxattr(p, "trusted.twinfs.id", buf, 8, 0), -1)
        XCTAssertEqual(twin_lremovexattr(p, "user.DOSATTRIB"), 0)
        XCTAssertEqual(twin_lgetxattr(p, "user.DOSATTRIB", &buf, 64), -1)
        XCTAssertEqual(errno, ENODATA)
    }

    /// smbd's case-insensitive lookup (Samba's glusterfs_fuse module) answered by the node:
    /// the stored spelling, ENODATA when no name matches, never TwinFS's private directory.
    func testRealNameOfADirectoryEntryIgnoringCase() throws {
        let n = try startedNode()
        XCTAssertEqual(mkdir(n.mnt + "/Study", 0o755), 0)
        try writeFile(n.mnt + "/Study/IMG0001.dcm", Array("x".utf8))
        try writeFile(n.mnt + "/Study/Ärztin Übersicht.pdf", Array("y".utf8))
        try writeFile(n.mnt + "/Study/straße.txt", Array("z".utf8))
        func real(_ dir: String, _ name: String) -> (Int, String, Int32) {
            var buf = [UInt8](repeating: 0xff, count: 300)
            let got = buf.withUnsafeMutableBytes { twin_lgetxattr(n.mnt + dir, "glusterfs.get_real_filename:" + name, $0.baseAddress, 300) }
            let e = errno
            guard got > 0 else { return (got, "", e) }
            XCTAssertEqual(buf[got - 1], 0, "NUL-terminated, as Samba reads it")
            return (got, String(decoding: buf[0..<(got - 1)], as: UTF8.self), 0)
        }
        XCTAssertEqual(real("/Study", "img0001.DCM").1, "IMG0001.dcm")
        XCTAssertEqual(real("/Study", "IMG0001.dcm").1, "IMG0001.dcm")
        XCTAssertEqual(real("/Study", "ärztin übersicht.PDF").1, "Ärztin Übersicht.pdf")
        XCTAssertEqual(real("/Study", "STRASSE.TXT").2, ENODATA, "simple case mapping, as Samba's: ß is not SS")
        XCTAssertEqual(real("/Study", "STRAßE.TXT").1, "straße.txt")
        XCTAssertEqual(real("/Study", "img0002.dcm").2, ENODATA)
        XCTAssertEqual(real("", "study").1, "Study")
        XCTAssertEqual(real("", ".TWINFS").2, ENODATA, "the brick's private directory is not a name of the volume")
        XCTAssertEqual(real("", ".twinfs").2, ENODATA)
        // A volume file whose name differs from the private directory's only by case is found
        // for that name too: the private directory is skipped, not the question.
        try writeFile(n.mnt + "/.TwinFS", Array("w".utf8))
        XCTAssertEqual(real("", ".twinfs").1, ".TwinFS")
        // The size probe, and a buffer too small.
        XCTAssertEqual(twin_lgetxattr(n.mnt + "/Study", "glusterfs.get_real_filename:img0001.dcm", nil, 0), 12)
        var small = [UInt8](repeating: 0, count: 4)
        XCTAssertEqual(twin_lgetxattr(n.mnt + "/Study", "glusterfs.get_real_filename:img0001.dcm", &small, 4), -1)
        XCTAssertEqual(errno, ERANGE)
        // Virtual: not listed, not settable, nothing stored in the brick.
        XCTAssertEqual(twin_lsetxattr(n.mnt + "/Study", "glusterfs.get_real_filename:a", "b", 1, 0), -1)
        XCTAssertEqual(errno, EPERM)
        XCTAssertEqual(twin_llistxattr(n.mnt + "/Study", nil, 0), 0)
    }

    func testPosixRecordLocksAndFlockBetweenProcesses() throws {
        let n = try startedNode()
        let p = n.mnt + "/lock.dat"
        try writeFile(p, [UInt8](repeating: 1, count: 100))
        // Holder takes a write lock on bytes 0-9 and flock, then sleeps; a second process probes.
        let script = """
        import fcntl, os, subprocess, sys, time
        p = sys.argv[1]
        fd = os.open(p, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
        fd2 = os.open(p, os.O_RDWR)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        probe = '''
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        out = []
        for start in (0, 50):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, start); out.append('free')
            except OSError: out.append('locked')
        fd2 = os.open(sys.argv[1], os.O_RDWR)
        try:
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB); out.append('free')
        except OSError: out.append('locked')
        print(' '.join(out))
        '''
        r = subprocess.run([sys.executable, '-c', probe, p], capture_output=True, text=True, timeout=30)
        print(r.stdout.strip())
        """
        let r = runCommand(["python3", "-c", script, p], timeout: 60)
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "locked free locked", r.stderr)
    }

    func testEveryFileHashMatchesIndependentXxhsum() throws {
        let n = try startedNode()
        for (i, size) in [0, 1, 4095, 4096, 131_073, 1 << 20, (5 << 20) + 17].enumerated() {
            try writeFile(n.mnt + "/f\(i)", pseudoRandomBytes(size, seed: UInt64(i) + 10))
        }
        let r = sh("cd \(n.brick) && xxhsum -H2 f*", timeout: 60)
        guard r.status == 0 else { throw XCTSkip("xxhsum (Debian package xxhash) not installed: \(r.stderr)") }
        for line in r.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            let rec = try XCTUnwrap(n.journalRecord(String(parts[1])))
            XCTAssertEqual(XXH128Digest(bytes: try XCTUnwrap(rec.hash)).hex, String(parts[0]), "journal hash of \(parts[1])")
        }
    }

    /// ext4 keeps NFC "é" and NFD "e\u{301}" as two files (Mac and Windows clients differ):
    /// TwinFS must never mix them up.
    func testUnicodeNormalisationVariantsStayDistinctFiles() throws {
        let n = try startedNode()
        let nfc = n.mnt + "/M\u{00FC}ller.dcm"
        let nfd = n.mnt + "/Mu\u{0308}ller.dcm"
        try writeFile(nfc, Array("NFC".utf8))
        try writeFile(nfd, Array("NFD".utf8))
        XCTAssertEqual(try readFile(nfc), Array("NFC".utf8))
        XCTAssertEqual(try readFile(nfd), Array("NFD".utf8))
        XCTAssertEqual(rename(nfd, n.mnt + "/moved.dcm"), 0)
        XCTAssertEqual(try readFile(nfc), Array("NFC".utf8), "renaming the NFD file leaves the NFC file alone")
        XCTAssertEqual(try readFile(n.mnt + "/moved.dcm"), Array("NFD".utf8))
        XCTAssertEqual(n.twinfs(["verify", "--config", n.configPath]).status, 0)
    }

    /// The caller's umask is applied once (by the kernel), and setgid directories pass
    /// their group on, as on a local disk.
    func testModesHonourTheCallersUmaskAndSetgidDirectories() throws {
        let n = try startedNode()
        let r = sh("cd \(n.mnt) && umask 002 && mkdir d && touch f && mkdir -m 2775 shared && chgrp 777 shared && touch shared/x && mkdir shared/sub", timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        var st = stat()
        XCTAssertEqual(stat(n.brick + "/d", &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o775)
        XCTAssertEqual(stat(n.brick + "/f", &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o664)
        XCTAssertEqual(stat(n.brick + "/shared/x", &st), 0)
        XCTAssertEqual(st.st_gid, 777, "a file in a setgid directory gets the directory's group")
        XCTAssertEqual(stat(n.brick + "/shared/sub", &st), 0)
        XCTAssertEqual(st.st_gid, 777)
    }
}

/// glibc's makedev (a macro Swift does not import).
func devNumber(_ major: UInt64, _ minor: UInt64) -> dev_t {
    dev_t(((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff))
}
