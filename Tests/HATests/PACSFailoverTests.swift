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


    /// TwinFS nodes a and b in the pair's namespaces (the peer link between them), started and
    /// HEALTHY; `startNode(i)` starts node i again (after a kill).
    func twinfsPair(_ p: Pair) throws -> ([FSNode], (Int) throws -> Void) {
        let topo = p.topo
        let secret = topo.workDir + "/secret"
        let nodes = [FSNode(name: "a", dir: topo.workDir + "/fs-a"), FSNode(name: "b", dir: topo.workDir + "/fs-b")]
        let children = Locked<[String: Child]>([:])
        addTeardownBlock {
            for c in children.with({ Array($0.values) }) where c.isRunning { _ = c.stop(signal: SIGKILL, timeout: 5) }
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
        let startNode = { (i: Int) throws in
            let n = nodes[i], ns = topo.namespace(i == 0 ? .a : .b)
            let c = try Child(["nsenter", "--net=/var/run/netns/\(ns)", Self.twinfs, "node", "--config", n.config],
                              stdout: n.log, stderr: n.log)
            children.with { $0[n.name] = c }
        }
        try startNode(0)
        try startNode(1)
        XCTAssertTrue(waitUntil(60) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "pair not HEALTHY: \(nodes.map { state($0) })\n" + ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? ""))
        return (nodes, startNode)
    }

    /// Kills everything in node a's namespace `delay` µs from now, in the background, and
    /// records when (after the kill: nothing node a sends can arrive from then on).
    func killOwner(_ topo: NetnsTopology, after delay: useconds_t, at killedAt: Locked<Date?>) {
        Thread {
            usleep(delay)
            for pid in topo.pids(.a) { kill(pid, SIGKILL) }
            killedAt.with { $0 = Date() }
        }.start()
    }

    func testOwnerKilledDuringIngestLosesNoAcknowledgedInstance() throws {
        for tool in ["/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/nsenter"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) is not installed (apt-get install dcmtk util-linux)")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        guard runCommand(["/usr/bin/python3", "-c", "import pydicom, numpy"]).ok else { throw XCTSkip("python3-pydicom is not installed") }
        let p = try startPair()
        let topo = p.topo
        let (nodes, startNode) = try twinfsPair(p)
        XCTAssertEqual(mkdir(nodes[0].mnt + "/incoming", 0o755), 0)
        // The PACS archive on both nodes: whichever holds the address receives.
        for (i, n) in nodes.enumerated() {
            _ = try topo.spawn(i == 0 ? .a : .b, ["storescp", "-aet", "ARCHIVE", "--output-directory", n.mnt + "/incoming", "11112"],
                               log: "storescp-\(n.name).log")
        }
        let src = topo.workDir + "/study"
        let gen = runCommand(["/usr/bin/python3", Self.script, "generate", src, "--ct", "120", "--cr", "1"], timeout: 300)
        XCTAssertEqual(gen.status, 0, gen.stderr)
        // The 10 MB CR image goes 41st, right when the owner is killed: it is being written on
        // node a at that moment, and the modality's retry stores it on node b.
        var files = try FileManager.default.contentsOfDirectory(atPath: src).filter { $0.hasPrefix("CT") }.sorted()
        files.insert("CR0001.dcm", at: 40)

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
                killOwner(topo, after: useconds_t.random(in: 60_000...120_000), at: killedAt)
            }
        }
        let killTime = try XCTUnwrap(killedAt.with { $0 })
        let firstAfter = try XCTUnwrap(acked.first { $0.1 > killTime }?.1)
        let ms = Int(firstAfter.timeIntervalSince(killTime) * 1000)
        print("PACS failover: first instance acknowledged by node b \(ms) ms after node a was killed; \(acked.count) of \(files.count) acknowledged")
        XCTAssertEqual(acked.count, files.count)
        XCTAssertTrue(waitUntil(10) { p.holders() == [.b] }, "holders \(p.holders())")

        // Node a comes back (its dead mount is detached at start) and catches up.
        try startNode(0)
        XCTAssertTrue(waitUntil(180) { nodes.allSatisfy { self.state($0) == "HEALTHY" } },
                      "not HEALTHY after a's return: \(nodes.map { state($0) })\n" + ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? "").suffix(3000))
        let interrupted = ((try? String(contentsOfFile: nodes[0].log, encoding: .utf8)) ?? "")
            .components(separatedBy: "was being written when this node stopped").count - 1
        print("PACS failover: \(interrupted) instance(s) were being written on node a when it was killed")
        // Every acknowledged instance, element for element, on both bricks; the bricks agree.
        for n in nodes {
            let v = runCommand(["/usr/bin/python3", Self.script, "verify-dir", n.brick + "/incoming", src], timeout: 300)
            XCTAssertEqual(v.status, 0, "\(n.name)'s brick: " + v.stdout + v.stderr)
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/incoming", nodes[1].brick + "/incoming"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000))
    }

    /// smbd on both nodes (each in its namespace, over its own mount, with the shipped share
    /// settings); a client stores files over SMB to the floating address; the owner is killed
    /// mid-stream; the client reconnects to the other node (the address moved, tickle ACKs reset
    /// the old connection) and continues. Every stored file ends on both bricks.
    func testSMBClientReconnectsToTheOtherNodeAndContinues() throws {
        for tool in ["/usr/sbin/smbd", "/usr/bin/smbclient", "/usr/bin/smbpasswd", "/usr/bin/nsenter"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) is not installed (apt-get install samba smbclient)")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        let p = try startPair()
        let topo = p.topo
        let (nodes, startNode) = try twinfsPair(p)
        XCTAssertEqual(mkdir(nodes[0].mnt + "/scans", 0o755), 0)
        let password = "twinfs-test"
        for (i, n) in nodes.enumerated() {
            let dir = n.dir + "/samba"
            let conf = dir + "/smb.conf"
            try SambaConfig.render(dir: dir, port: 445, shares: [("pacs", n.mnt)], repoRoot: Self.repoRoot, interfaces: "eth0")
                .write(toFile: conf, atomically: true, encoding: .utf8)
            XCTAssertEqual(runCommand(["sh", "-c", "printf '%s\\n%s\\n' \(password) \(password) | smbpasswd -c \(conf) -a -s root"]).status, 0)
            _ = try topo.spawn(i == 0 ? .a : .b, ["setsid", "smbd", "--foreground", "--no-process-group", "-s", conf], log: "smbd-\(n.name).log")
        }
        addTeardownBlock { _ = runCommand(["pkill", "-KILL", "-f", "smbd --foreground --no-process-group -s \(topo.workDir)/"]) }
        XCTAssertTrue(waitUntil(20) { topo.exec(.client, ["smbclient", "//\(p.vip)/pacs", "-U", "root%\(password)", "-c", "ls"], timeout: 10).ok },
                      "smbd on the address never answered: " + topo.readLog("smbd-a.log"))
        let local = topo.workDir + "/scans"
        try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
        var want: [String: [UInt8]] = [:]
        for i in 0..<60 {
            var bytes = [UInt8](repeating: 0, count: 300_000 + i * 1000)
            for j in bytes.indices { bytes[j] = UInt8(truncatingIfNeeded: (j &* 31) ^ (i &* 7)) }
            FileManager.default.createFile(atPath: local + "/scan\(i).dcm", contents: Data(bytes))
            want["scan\(i).dcm"] = bytes
        }
        var stored: [Date] = []
        let killedAt = Locked<Date?>(nil)
        let deadline = Date().addingTimeInterval(240)
        for i in 0..<60 {
            while true {
                let r = topo.exec(.client, ["smbclient", "//\(p.vip)/pacs", "-U", "root%\(password)", "-t", "5",
                                            "-c", "put \(local)/scan\(i).dcm scans/scan\(i).dcm"], timeout: 20)
                if r.ok && !r.stdout.contains("NT_STATUS") && !r.stderr.contains("NT_STATUS") { stored.append(Date()); break }
                if Date() > deadline { XCTFail("scan\(i) never stored"); return }
                usleep(100_000)
            }
            if i == 20 {
                killOwner(topo, after: useconds_t.random(in: 10_000...150_000), at: killedAt)
            }
        }
        let killTime = try XCTUnwrap(killedAt.with { $0 })
        let first = try XCTUnwrap(stored.first { $0 > killTime })
        print("SMB failover: first file stored through node b \(Int(first.timeIntervalSince(killTime) * 1000)) ms after node a was killed")
        XCTAssertTrue(waitUntil(10) { p.holders() == [.b] }, "holders \(p.holders())")
        _ = runCommand(["pkill", "-KILL", "-f", "smbd --foreground --no-process-group -s \(nodes[1].dir)"])
        try startNode(0)
        XCTAssertTrue(waitUntil(180) { nodes.allSatisfy { self.state($0) == "HEALTHY" } }, "not HEALTHY: \(nodes.map { state($0) })")
        for n in nodes {
            for (name, bytes) in want {
                XCTAssertEqual(FileManager.default.contents(atPath: n.brick + "/scans/" + name).map { [UInt8]($0) }, bytes, "\(name) on \(n.name)'s brick")
            }
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/scans", nodes[1].brick + "/scans"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000))
    }
}
