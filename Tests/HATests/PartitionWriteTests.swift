import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// Issue 14, witness-gated writes: clients on both nodes write distinct files while the link
/// between the nodes (replication and heartbeats) is cut, both nodes still reaching the
/// witness and the clients. With a witness only the lease holder (a, which holds the address)
/// acknowledges writes; b refuses them with EROFS within a bounded time. Without one, both
/// write (active-active). Either way, after the link returns no acknowledged file is lost,
/// each is identical on both bricks, and nothing is a split brain.
final class PartitionWriteTests: HATestCase {
    /// The done-when: both clients write for 30 s (2 s joined, 24 s cut off, 4 s joined).
    func testWithAWitnessOnlyTheLeaseHolderAcceptsWritesWhileCutOff() throws { try partitionWhileBothWrite(witness: true, cutFor: 24) }

    func testWithoutAWitnessBothSidesAcceptWritesWhileCutOffAndLoseNothing() throws { try partitionWhileBothWrite(witness: false, cutFor: 12) }

    /// One file a client tried to store.
    struct Attempt: Sendable {
        var name: String
        var started: Date
        var ended: Date
        /// 0: acknowledged (create, write and close all returned success).
        var errno: Int32
    }

    /// The bytes of file `name` (distinct per file, so a mix-up shows).
    static func content(_ name: String) -> [UInt8] {
        var x = name.utf8.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 } | 1
        return (0..<65_536).map { _ in x ^= x << 13; x ^= x >> 7; x ^= x << 17; return UInt8(truncatingIfNeeded: x) }
    }

    /// Stores `<prefix>-NNNNN` files into `dir` one after the other until `running` goes false.
    static func writer(dir: String, prefix: String, running: Locked<Bool>, into log: Locked<[Attempt]>, finished: Locked<Int>) -> Thread {
        Thread {
            defer { finished.with { $0 += 1 } }
            var i = 0
            while running.with({ $0 }) {
                i += 1
                let name = String(format: "%@-%05d", prefix, i)
                let start = Date()
                let e = store(dir + "/" + name, content(name))
                log.with { $0.append(Attempt(name: name, started: start, ended: Date(), errno: e)) }
                usleep(e == 0 ? 20_000 : 100_000)
            }
        }
    }

    /// create + write + close; 0 or the first errno.
    static func store(_ path: String, _ bytes: [UInt8]) -> Int32 {
        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0o644)
        guard fd >= 0 else { return errno }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { let e = errno; close(fd); return e }
            off += n
        }
        return close(fd) == 0 ? 0 : errno
    }

    private func partitionWhileBothWrite(witness: Bool, cutFor: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        let p = try startPair(witness: witness, failback: 60)
        let topo = p.topo
        let (nodes, _) = try twinfsPair(p, haConfig: true)
        XCTAssertEqual(mkdir(nodes[0].mnt + "/w", 0o755), 0)
        XCTAssertTrue(waitUntil(10) { FileManager.default.fileExists(atPath: nodes[1].mnt + "/w") })
        let running = Locked(true)
        let logs = [Locked<[Attempt]>([]), Locked<[Attempt]>([])]
        let finished = Locked(0)
        let threads = nodes.enumerated().map { i, n in
            Self.writer(dir: n.mnt + "/w", prefix: n.name, running: running, into: logs[i], finished: finished)
        }
        threads.forEach { $0.start() }
        addTeardownBlock { running.with { $0 = false } }
        usleep(2_000_000)
        let cutAt = Date()
        try topo.partition()
        var statusB = ""
        while Date().timeIntervalSince(cutAt) < cutFor {
            usleep(500_000)
            // What the admin sees on the lease loser while cut off.
            if witness && Date().timeIntervalSince(cutAt) > 8 && statusB.isEmpty {
                statusB = runCommand([Self.twinfs, "status", "--config", nodes[1].config], timeout: 10).stdout
            }
        }
        let healAt = Date()
        try topo.unpartition()
        usleep(4_000_000)
        running.with { $0 = false }
        XCTAssertTrue(waitUntil(120) { finished.with { $0 } == 2 }, "a writer hung", file: file, line: line)
        let tries = logs.map { $0.with { $0 } }
        XCTAssertTrue(waitUntil(120) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "not HEALTHY after the link returned (a split brain, or nothing healed): \(nodes.map { state($0) })\n"
                      + runCommand([Self.twinfs, "status", "--config", nodes[0].config], timeout: 10).stdout, file: file, line: line)

        // Every acknowledged file is on both bricks, byte for byte; the bricks agree.
        let acked = tries.flatMap { $0.filter { $0.errno == 0 } }
        for n in nodes {
            let missing = acked.filter { FileManager.default.contents(atPath: n.brick + "/w/" + $0.name).map { [UInt8]($0) } != Self.content($0.name) }
            XCTAssertEqual(missing.map(\.name), [], "acknowledged files missing or different on \(n.name)'s brick", file: file, line: line)
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/w", nodes[1].brick + "/w"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000), file: file, line: line)
        // Without a witness a partition of the public LAN puts the address on both nodes (the
        // documented two-node limit, README "The floating address"); with one, never.
        if witness { XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two kernels held the address", file: file, line: line) }

        // While cut off (from 5 s after the cut, past the peer timeout, to the heal).
        func during(_ t: [Attempt]) -> [Attempt] { t.filter { $0.started > cutAt.addingTimeInterval(5) && $0.ended < healAt } }
        let (aCut, bCut) = (during(tries[0]), during(tries[1]))
        func summary(_ t: [Attempt]) -> String {
            "\(t.filter { $0.errno == 0 }.count) acknowledged, " + Dictionary(grouping: t.filter { $0.errno != 0 }, by: \.errno)
                .map { "\($0.value.count) \(String(cString: strerror($0.key)))" }.joined(separator: ", ")
        }
        let firstEROFS = tries[1].first { $0.errno == EROFS }.map { String(format: "%.1f s", $0.ended.timeIntervalSince(cutAt)) } ?? "never"
        print("partition (witness: \(witness)): a \(summary(aCut)); b \(summary(bCut)); overall a \(summary(tries[0])), b \(summary(tries[1])); b's first EROFS \(firstEROFS) after the cut; address on both nodes at once: \(p.maxHolders.with { $0 } > 1); after the heal a \(summary(tries[0].filter { $0.started > healAt })), b \(summary(tries[1].filter { $0.started > healAt }))")
        XCTAssertGreaterThan(aCut.filter { $0.errno == 0 }.count, 0, "a (the address and lease holder) stored nothing while cut off", file: file, line: line)
        XCTAssertEqual(tries[0].filter { $0.errno == EROFS }.count, 0, "a refused writes", file: file, line: line)
        if witness {
            // b refuses within a bounded time (peer timeout 2 s, then the witness's answer),
            // and acknowledges nothing from then on until the link returns.
            let firstRefusal = try XCTUnwrap(tries[1].first { $0.errno == EROFS && $0.started > cutAt },
                                             "b never refused a write while cut off: \(summary(tries[1]))", file: file, line: line)
            XCTAssertLessThan(firstRefusal.ended.timeIntervalSince(cutAt), 10, "b refused only \(firstRefusal.ended.timeIntervalSince(cutAt)) s after the cut", file: file, line: line)
            let ackedAfter = tries[1].filter { $0.errno == 0 && $0.started >= firstRefusal.ended && $0.ended < healAt }
            XCTAssertEqual(ackedAfter.map(\.name), [], "b acknowledged writes without the lease", file: file, line: line)
            XCTAssertTrue(statusB.contains("WRITES REFUSED") && statusB.contains("gave the lease to a"), "b's status: \(statusB)", file: file, line: line)
        } else {
            XCTAssertGreaterThan(bCut.filter { $0.errno == 0 }.count, 0, "b stored nothing while cut off (no witness: active-active)", file: file, line: line)
            XCTAssertEqual(tries[1].filter { $0.errno == EROFS }.count, 0, "b refused writes without a witness", file: file, line: line)
        }
        // Writes resume on both once the link is back (and reach both bricks).
        for (i, n) in nodes.enumerated() {
            let name = "after-heal-\(n.name)"
            XCTAssertEqual(Self.store(n.mnt + "/w/" + name, Self.content(name)), 0, "\(n.name) refuses writes after the heal", file: file, line: line)
            XCTAssertEqual(FileManager.default.contents(atPath: nodes[1 - i].brick + "/w/" + name).map { [UInt8]($0) }, Self.content(name),
                           "a file stored after the heal is not on the other brick", file: file, line: line)
        }
    }
}
