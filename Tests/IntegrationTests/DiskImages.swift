import Foundation
import Glibc
import TestSupport
import XCTest

/// A node whose directory is a loop-mounted disk image (its own filesystem), for power cuts:
/// shared by the power-loss tests of one node and of the pair.
extension TestNode {
    /// Mounts the image over the node's directory and lays out what the node expects there.
    func mountImage(_ img: String) throws {
        let cfg = try String(contentsOfFile: configPath, encoding: .utf8)
        let r = runCommand(["/bin/mount", "-o", "loop", img, dir], timeout: 60)
        guard r.status == 0 else { throw XCTSkip("cannot mount a loop image here: \(r.stderr)") }
        for d in [brick, mnt, state] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        if !FileManager.default.fileExists(atPath: configPath) { try cfg.write(toFile: configPath, atomically: true, encoding: .utf8) }
    }

    /// The power cut: the filesystem stops taking anything (XFS/ext4 shutdown), then the node
    /// dies; power back: the same disk, its log replayed by the mount.
    func cutPower(image: String) throws {
        shutDownDisk()
        kill9()
        try remount(image: image)
    }

    /// The disk dies under a running node: from now on every call into that filesystem
    /// answers EIO, and nothing not yet on the disk reaches it.
    func shutDownDisk() {
        let r = runCommand(["/usr/sbin/xfs_io", "-x", "-c", "shutdown", dir], timeout: 30)
        XCTAssertEqual(r.status, 0, "shutdown: \(r.stderr)")
    }

    /// The disk back after its node is gone: unmounted, and mounted again (its log replayed).
    func remount(image: String) throws {
        var unmounted = false
        for _ in 0..<50 where !unmounted {
            unmounted = runCommand(["/bin/umount", dir], timeout: 30).status == 0
            if !unmounted { usleep(100_000) }
        }
        XCTAssertTrue(unmounted, "the disk image of \(dir) unmounts after the power cut")
        try mountImage(image)
    }
}
