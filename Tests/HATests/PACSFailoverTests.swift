import Foundation
import Glibc
import TestSupport
import TwinCore
import XCTest

/// The hospital's path whole, in network namespaces: two TwinFS nodes (peer link between the
/// namespaces), twinfs-ha holding the floating address, dcmtk's storescp on both nodes storing
/// into the TwinFS mount, and a modality (storescu in the client namespace) sending a CT series
/// to the floating address. The owner is killed (everything in its namespace) during the
/// ingest; the modality retries until each instance is acknowledged. When the dead node is back
/// and healed, every acknowledged instance is on both bricks, element for element.
final class PACSFailoverTests: HATestCase {
    static var twinfs: String { ProcessInfo.processInfo.environment["TWINFS_BIN"] ?? repoRoot + "/.build/debug/twinfs" }
    static let script = repoRoot + "/Tests/IntegrationTests/pacs/pacs_e2e.py"

    struct FSNode {
        let name: String
        let dir: String
        var brick: String { dir + "/brick" }
        var mnt: String { dir + "/mnt" }
        var config: String { dir + "/node.toml" }
        var log: String { dir + "/node.log" }
    }

    func mounted(_ path: String) -> Bool {
        ((try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "")
            .split(separator: "\n").contains { $0.split(separator: " ").count > 4 && $0.split(separator: " ")[4] == path }
    }

    func state(_ n: FSNode) -> String {
        let r = runCommand([Self.twinfs, "status", "--config", n.config, "--json"], timeout: 10)
        return ((try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any])?["state"] as? String ?? "?"
    }

    func testOwnerKilledDuringIngestLosesNoAcknowledgedInstance() throws {
        for tool in ["/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/nsenter"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) is not installed (apt-get install dcmtk util-linux)")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        guard runCommand(["/usr/bin/python3", "-c", "import pydicom, numpy"]).ok else { throw XCTSkip("python3-pydicom is not installed") }
        let p = try startPair()
        let topo = p.topo
        let secret = topo.workDir + "/secret"
        let nodes = [FSNode(name: "a", dir: topo.workDir + "/fs-a"), FSNode(name: "b", dir: topo.workDir + "/fs-b")]
        var children: [String: Child] = [:]
        addTeardownBlock {
            for c in children.values where c.isRunning { _ = c.stop(signal: SIGKILL, timeout: 5) }
            for n in nodes where self.mounted(n.mnt) { _ = runCommand(["umount", "-l", n.mnt]) }
        }
        for (i, n) in nodes.enumerated() {
            let me: NetnsTopology.Node = i == 0 ? .a : .b, other: NetnsTopology.Node = i == 0 ? .b : .a
            for d in [n.brick, n.mnt, n.dir + "/state"] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
            try """
            volume = "pacs"
            node = "\(n.name)"
            brick = "\(n.brick)"
            journal = "\(n.dir)/state/journal.db"
            mountpoint = "\(n.mnt)"
            control_socket = "\(n.dir)/state/control.sock"
            listen = "\(topo.address(me)):7780"
            [peer]
            node = "\(i == 0 ? "b" : "a")"
            address = "\(topo.address(other)):7780"
            secret_file = "\(secret)"
            timeout = 2.0
            """.write(toFile: n.config, atomically: true, encoding: .utf8)
        }
        // The node enters only the namespace's network: its FUSE mount stays visible to all.
        func startNode(_ i: Int) throws {
            let n = nodes[i], ns = topo.namespace(i == 0 ? .a : .b)
            children[n.name] = try Child(["nsenter", "--net=/var/run/netns/\(ns)", Self.twinfs, "node", "--config", n.config],
                                        stdout: n.log, stderr: n.log)
        }
        try startNode(0)
        try startNode(1)
        XCTAssertTrue(waitUntil(60) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "pair not HEALTHY: \(nodes.map { state($0) })\n" + ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? ""))
        XCTAssertEqual(mkdir(nodes[0].mnt + "/incoming", 0o755), 0)
        // The PACS archive on both nodes: whichever holds the address receives.
        for (i, n) in nodes.enumerated() {
            _ = try topo.spawn(i == 0 ? .a : .b, ["storescp", "-aet", "ARCHIVE", "--output-directory", n.mnt + "/incoming", "11112"],
                               log: "storescp-\(n.name).log")
        }
        let src = topo.workDir + "/study"
        let gen = runCommand(["/usr/bin/python3", Self.script, "generate", src, "--ct", "120"], timeout: 300)
        XCTAssertEqual(gen.status, 0, gen.stderr)
        let files = try FileManager.default.contentsOfDirectory(atPath: src).sorted()

        // The modality: one instance at a time, retried until the archive acknowledges it.
        var acked: [(String, Date)] = []
        let killedAt = Locked<Date?>(nil)
        let deadline = Date().addingTimeInterval(300)
        for f in files {
            while true {
                let r = topo.exec(.client, ["storescu", "-to", "3", "-ta", "3", "-td", "5", "-aet", "MODALITY", "-aec", "ARCHIVE",
                                            p.vip, "11112", src + "/" + f], timeout: 20)
                if r.ok { acked.append((f, Date())); break }
                XCTAssertLessThan(Date(), deadline, "instance \(f) never acknowledged")
                if Date() > deadline { return }
                usleep(100_000)
            }
            if acked.count == 40 {
                // The owner dies while the next instances are on their way (a random moment,
                // usually in the middle of one): daemon, node, archive, all of its namespace.
                let delay = useconds_t.random(in: 10_000...150_000)
                Thread {
                    usleep(delay)
                    killedAt.with { $0 = Date() }
                    for pid in topo.pids(.a) { kill(pid, SIGKILL) }
                }.start()
            }
        }
        let killTime = try XCTUnwrap(killedAt.with { $0 })
        let firstAfter = try XCTUnwrap(acked.first { $0.1 > killTime }?.1)
        let ms = Int(firstAfter.timeIntervalSince(killTime) * 1000)
        print("PACS failover: first instance acknowledged by node b \(ms) ms after node a was killed; \(acked.count) of \(files.count) acknowledged")
        XCTAssertEqual(acked.count, files.count)
        XCTAssertEqual(p.holders(), [.b])

        // Node a comes back (its dead mount is detached at start) and catches up.
        try startNode(0)
        XCTAssertTrue(waitUntil(180) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "not HEALTHY after a's return: \(nodes.map { state($0) })\n" + ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? "").suffix(3000))
        // Every acknowledged instance, element for element, on both bricks; the bricks agree.
        for n in nodes {
            let v = runCommand(["/usr/bin/python3", Self.script, "verify-dir", n.brick + "/incoming", src], timeout: 300)
            XCTAssertEqual(v.status, 0, "\(n.name)'s brick: " + v.stdout + v.stderr)
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/incoming", nodes[1].brick + "/incoming"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000))
    }
}
