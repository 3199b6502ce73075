import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// Issue 14, cases 3-5: the address is never configured on two kernels at once (the watcher
/// samples both nodes every 20 ms for the whole test), and whoever holds it after a
/// disagreement announces it, so the client is not left with the other node's MAC.
final class SingleOwnerTests: HATestCase {
    // MARK: - kill -9 of the holder's daemon (case 4)

    func testKill9OfTheHoldersDaemonNeverLeavesTwoOwners() throws { try kill9(witness: false) }

    func testKill9OfTheHoldersDaemonWithAWitnessNeverLeavesTwoOwners() throws { try kill9(witness: true) }

    /// The daemon dies, its service keeps running: the old holder's kernel must stop answering
    /// for the address before the peer configures it (its lifetime alone keeps it for seconds).
    private func kill9(witness: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let p = try startPair(witness: witness)
        let (r, _) = try probe(p, duration: 4) { p.daemons[.a]?.signal(SIGKILL) }
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two kernels held the address", file: file, line: line)
        XCTAssertEqual(p.holders(), [.b], file: file, line: line)
        XCTAssertEqual(r.probes.last?.node, "node-b", file: file, line: line)
    }

    // MARK: - kill -STOP / -CONT of the holder's daemon (cases 3 and 4)

    func testAFrozenHolderThatResumesWithAWitnessStrandsNoClient() throws { try freeze(witness: true, seconds: 2) }

    func testAFrozenHolderThatResumesWithoutAWitnessStrandsNoClient() throws { try freeze(witness: false, seconds: 5) }

    /// The holder's twinfs-ha is stopped (its service and kernel keep running), the peer takes
    /// over, then the holder resumes. No failback within the test: whoever holds after the
    /// resume keeps the address, and the client must reach it.
    private func freeze(witness: Bool, seconds: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        let p = try startPair(witness: witness, failback: 60)
        let resumed = Locked(Date.distantFuture)
        let (r, _) = try probe(p, duration: seconds + 4) {
            p.daemons[.a]?.signal(SIGSTOP)
            usleep(UInt32(seconds * 1_000_000))
            p.daemons[.a]?.signal(SIGCONT)
            resumed.with { $0 = Date() }
        }
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two kernels held the address", file: file, line: line)
        let holders = p.holders()
        // The resumed node's failback delay starts over: b keeps what it took.
        XCTAssertEqual(holders, [.b], "holders after the resume", file: file, line: line)
        // The address answers again after the resume: every probe sent 2-3 s after it answered.
        let after = resumed.with { $0 }.timeIntervalSince1970 + 2
        let late = r.probes.filter { $0.t >= after }
        XCTAssertFalse(late.isEmpty, file: file, line: line)
        XCTAssertEqual(late.filter { $0.node == nil }.count, 0,
                       "the client was stranded after the resume: \(late.filter { $0.node == nil }.count) of \(late.count) probes failed; holders \(holders)\n\(p.topo.readLog("ha-a.log"))",
                       file: file, line: line)
        XCTAssertEqual(p.topo.clientNeighborNode(address: p.vip), holders.first, "the client's ARP entry points at the other node",
                       file: file, line: line)
    }

    // MARK: - a step of the wall clock (case 5)

    /// Every timed wait of the daemon must run on a monotonic clock. A system clock step
    /// cannot be made here without disturbing the other tests on the machine, so a's daemon
    /// runs with an LD_PRELOAD shim: once the trigger file exists, its wall clock reads 20 s
    /// ahead of the kernel's. A wait until a wall-clock deadline then lasts 20 s longer, which
    /// is what a step back of the system clock does to a wait in progress.
    func testAWallClockStepStallsNoTimedWaitOfTheDaemon() throws {
        let shim = try clockShim()
        let trigger = shim + ".step"
        let p = try startPair(daemonEnv: [.a: ["LD_PRELOAD": shim, "TWINFS_TEST_CLOCK_TRIGGER": trigger,
                                               "TWINFS_TEST_CLOCK_STEP": "20"]])
        _ = FileManager.default.createFile(atPath: trigger, contents: nil)
        // Long enough for every loop to start a wait under the stepped clock, and for the
        // address's kernel lifetime to run out if its renewal stalled.
        usleep(5_000_000)
        XCTAssertEqual(p.holders(), [.a], "a's address vanished while its daemon waited on the wall clock")
        // The monitor must still notice a failing service, and the executor still run releaseip.
        _ = FileManager.default.createFile(atPath: p.dir(.a) + "/sick", contents: nil)
        XCTAssertTrue(waitUntil(6) { p.holders() == [.b] }, "a sick holder kept the address; holders \(p.holders())")
        XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1)
    }

    /// Builds the clock shim (a shared object for LD_PRELOAD) in a temporary directory.
    private func clockShim() throws -> String {
        let dir = NSTemporaryDirectory() + "twinfs-clockshim-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let src = """
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <stdlib.h>
        #include <sys/stat.h>
        #include <sys/time.h>
        #include <time.h>
        /* Seconds added to CLOCK_REALTIME readings once $TWINFS_TEST_CLOCK_TRIGGER exists. */
        static long step(void) {
            const char *f = getenv("TWINFS_TEST_CLOCK_TRIGGER"), *s = getenv("TWINFS_TEST_CLOCK_STEP");
            struct stat st;
            return f && s && stat(f, &st) == 0 ? atol(s) : 0;
        }
        int clock_gettime(clockid_t c, struct timespec *ts) {
            static int (*real)(clockid_t, struct timespec *);
            if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
            int rc = real(c, ts);
            if (rc == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += step();
            return rc;
        }
        int gettimeofday(struct timeval *tv, void *tz) {
            static int (*real)(struct timeval *, void *);
            if (!real) real = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
            int rc = real(tv, tz);
            if (rc == 0 && tv) tv->tv_sec += step();
            return rc;
        }
        time_t time(time_t *t) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            if (t) *t = ts.tv_sec;
            return ts.tv_sec;
        }
        """
        try src.write(toFile: dir + "/clockshim.c", atomically: true, encoding: .utf8)
        let cc = HATools.find("cc")
        let r = runCommand([cc, "-shared", "-fPIC", "-O1", "-o", dir + "/clockshim.so", dir + "/clockshim.c", "-ldl"], timeout: 60)
        guard r.status == 0 else { throw XCTSkip("cannot build the clock shim with \(cc): \(r.stderr)") }
        return dir + "/clockshim.so"
    }
}
