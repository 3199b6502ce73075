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

    /// What happened: each node's attempts (a's first), when the link was cut and restored,
    /// and b's `twinfs status` while cut off.
    struct Run {
        var tries: [[Attempt]]
        var cutAt: Date
        var healAt: Date
        var statusB: String
    }

    private func partitionWhileBothWrite(witness: Bool, cutFor: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        let p = try startPair(witness: witness, failback: 60)
        let (nodes, _) = try twinfsPair(p, haConfig: true)
        let run = try writeThroughACut(p, nodes, cutFor: cutFor, file: file, line: line)
        XCTAssertTrue(waitUntil(120) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "not HEALTHY after the link returned (a split brain, or nothing healed): \(nodes.map { state($0) })\n"
                      + runCommand([Self.twinfs, "status", "--config", nodes[0].config], timeout: 10).stdout, file: file, line: line)
        assertAcknowledgedOnBothBricks(run.tries.flatMap { $0.filter { $0.errno == 0 } }, nodes, file: file, line: line)
        // Without a witness a partition of the public LAN puts the address on both nodes (the
        // documented two-node limit, README "The floating address"); with one, never.
        if witness { XCTAssertLessThanOrEqual(p.maxHolders.with { $0 }, 1, "two kernels held the address", file: file, line: line) }
        report(run, witness: witness, bothHeld: p.maxHolders.with { $0 } > 1)
        try assertWhoWroteWhileCutOff(run, witness: witness, file: file, line: line)
        // Writes resume on both once the link is back (and reach both bricks).
        for (i, n) in nodes.enumerated() {
            let name = "after-heal-\(n.name)"
            XCTAssertEqual(Self.store(n.mnt + "/w/" + name, Self.content(name)), 0, "\(n.name) refuses writes after the heal", file: file, line: line)
            XCTAssertEqual(FileManager.default.contents(atPath: nodes[1 - i].brick + "/w/" + name).map { [UInt8]($0) }, Self.content(name),
                           "a file stored after the heal is not on the other brick", file: file, line: line)
        }
    }

    /// Both clients write for 2 s, the link between the nodes is cut for `cutFor` s, then
    /// restored, and they write 4 s more.
    private func writeThroughACut(_ p: Pair, _ nodes: [FSNode], cutFor: Double, file: StaticString, line: UInt) throws -> Run {
        XCTAssertEqual(mkdir(nodes[0].mnt + "/w", 0o755), 0)
        XCTAssertTrue(waitUntil(10) { FileManager.default.fileExists(atPath: nodes[1].mnt + "/w") })
        let running = Locked(true), finished = Locked(0)
        let logs = [Locked<[Attempt]>([]), Locked<[Attempt]>([])]
        for (i, n) in nodes.enumerated() {
            Self.writer(dir: n.mnt + "/w", prefix: n.name, running: running, into: logs[i], finished: finished).start()
        }
        addTeardownBlock { running.with { $0 = false } }
        usleep(2_000_000)
        let cutAt = Date()
        try p.topo.partition()
        var statusB = ""
        while Date().timeIntervalSince(cutAt) < cutFor {
            usleep(500_000)
            // What the admin sees on b while cut off.
            if Date().timeIntervalSince(cutAt) > 8 && statusB.isEmpty {
                statusB = runCommand([Self.twinfs, "status", "--config", nodes[1].config], timeout: 10).stdout
            }
        }
        let healAt = Date()
        try p.topo.unpartition()
        usleep(4_000_000)
        running.with { $0 = false }
        XCTAssertTrue(waitUntil(120) { finished.with { $0 } == 2 }, "a writer hung", file: file, line: line)
        return Run(tries: logs.map { $0.with { $0 } }, cutAt: cutAt, healAt: healAt, statusB: statusB)
    }

    /// Every acknowledged file is on both bricks, byte for byte, and the bricks agree.
    private func assertAcknowledgedOnBothBricks(_ acked: [Attempt], _ nodes: [FSNode], file: StaticString, line: UInt) {
        for n in nodes {
            let missing = acked.filter { FileManager.default.contents(atPath: n.brick + "/w/" + $0.name).map { [UInt8]($0) } != Self.content($0.name) }
            XCTAssertEqual(missing.map(\.name), [], "acknowledged files missing or different on \(n.name)'s brick", file: file, line: line)
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/w", nodes[1].brick + "/w"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000), file: file, line: line)
    }

    /// While cut off (from 5 s after the cut, past the peer timeout, to the heal).
    private func during(_ t: [Attempt], _ run: Run) -> [Attempt] {
        t.filter { $0.started > run.cutAt.addingTimeInterval(5) && $0.ended < run.healAt }
    }

    private func summary(_ t: [Attempt]) -> String {
        "\(t.filter { $0.errno == 0 }.count) acknowledged, " + Dictionary(grouping: t.filter { $0.errno != 0 }, by: \.errno)
            .map { "\($0.value.count) \(String(cString: strerror($0.key)))" }.joined(separator: ", ")
    }

    private func report(_ run: Run, witness: Bool, bothHeld: Bool) {
        let (a, b) = (run.tries[0], run.tries[1])
        let firstEROFS = b.first { $0.errno == EROFS }.map { String(format: "%.1f s", $0.ended.timeIntervalSince(run.cutAt)) } ?? "never"
        print("partition (witness: \(witness)): while cut off a \(summary(during(a, run))); b \(summary(during(b, run))); "
              + "overall a \(summary(a)), b \(summary(b)); b's first EROFS \(firstEROFS) after the cut; address on both nodes at once: \(bothHeld); "
              + "after the heal a \(summary(a.filter { $0.started > run.healAt })), b \(summary(b.filter { $0.started > run.healAt }))")
    }

    /// a (the address and lease holder) writes throughout. With a witness b refuses within a
    /// bounded time (peer timeout 2 s, then the witness's answer) and acknowledges nothing from
    /// then on until the link returns; without one, b writes too (active-active).
    private func assertWhoWroteWhileCutOff(_ run: Run, witness: Bool, file: StaticString, line: UInt) throws {
        let (a, b) = (run.tries[0], run.tries[1])
        XCTAssertGreaterThan(during(a, run).filter { $0.errno == 0 }.count, 0, "a stored nothing while cut off", file: file, line: line)
        XCTAssertEqual(a.filter { $0.errno == EROFS }.count, 0, "a refused writes", file: file, line: line)
        guard witness else {
            XCTAssertGreaterThan(during(b, run).filter { $0.errno == 0 }.count, 0, "b stored nothing while cut off (no witness: active-active)", file: file, line: line)
            XCTAssertEqual(b.filter { $0.errno == EROFS }.count, 0, "b refused writes without a witness", file: file, line: line)
            return
        }
        let firstRefusal = try XCTUnwrap(b.first { $0.errno == EROFS && $0.started > run.cutAt },
                                         "b never refused a write while cut off: \(summary(b))", file: file, line: line)
        let after = firstRefusal.ended.timeIntervalSince(run.cutAt)
        XCTAssertLessThan(after, 10, "b refused only \(after) s after the cut", file: file, line: line)
        let ackedAfter = b.filter { $0.errno == 0 && $0.started >= firstRefusal.ended && $0.ended < run.healAt }
        XCTAssertEqual(ackedAfter.map(\.name), [], "b acknowledged writes without the lease", file: file, line: line)
        XCTAssertTrue(run.statusB.contains("WRITES REFUSED") && run.statusB.contains("gave the lease to a"), "b's status: \(run.statusB)", file: file, line: line)
    }
}
