import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// Issue 13: no peer round trip while the FUSE adapter holds its namespace lock exclusively.
/// A rename waiting for a silent peer (up to `peer.timeout`) must not hold up the node's other
/// requests. Before, the rename held the lock across its peer call: every open on the node
/// waited for it.
final class NamespaceLockTests: XCTestCase {
    func testAnOpenIsNotHeldUpByARenameWaitingForThePeer() throws {
        let c = try cluster(timeout: 3.0)
        waitHealthy(c)
        try put(c.a.mnt + "/x.dcm", pseudoRandomBytes(4096, seed: 1))
        try put(c.a.mnt + "/other.dcm", pseudoRandomBytes(4096, seed: 2))
        waitUntil("both files on b", timeout: 30) { FileManager.default.fileExists(atPath: c.b.brick + "/other.dcm") }
        // A pulled cable: nothing flows, nothing is closed; the rename's peer call waits.
        c.cut(.blackhole)
        let renameDone = Locked(false)
        let renamed = Locked<Int32>(-1)
        let t = Thread {
            let r = rename(c.a.mnt + "/x.dcm", c.a.mnt + "/y.dcm")
            renamed.with { $0 = r }
            renameDone.with { $0 = true }
        }
        t.start()
        // Let the rename reach its peer step (its local step takes microseconds).
        usleep(300_000)
        let read = try readFile(c.a.mnt + "/other.dcm")
        let renameStillWaiting = !renameDone.with { $0 }
        XCTAssertEqual(read, pseudoRandomBytes(4096, seed: 2))
        XCTAssertTrue(renameStillWaiting, "the open and read of another file returned while the rename still waited for the peer")
        waitUntil("the rename returns", timeout: 30) { renameDone.with { $0 } }
        XCTAssertEqual(renamed.with { $0 }, 0, "the rename completes locally and is owed to the peer")
        c.restore()
        waitHealthy(c)
        XCTAssertTrue(FileManager.default.fileExists(atPath: c.b.brick + "/y.dcm"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.b.brick + "/x.dcm"))
        try assertReplicasIdentical(c)
    }
}
