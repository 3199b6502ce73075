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
    static let script = repoRoot + "/Tests/IntegrationTests/pacs/pacs_e2e.py"

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

    /// The SMB path as deployed: on both nodes twinfs-ha runs the shipped `60.samba`, which
    /// starts smbd (the shipped share settings, over the node's mount), monitors it and stops
    /// it. One client keeps one SMB session to the floating address and stores scans. The
    /// owner hangs and then loses power (its link goes down, then everything in it is killed:
    /// no FIN or RST reaches the client); the new owner takes the address and tickles the old
    /// owner's clients, so the session is reset at once rather than left waiting (until its
    /// 20 s timeout) for an answer that never comes; the client reconnects to the same address (the other node) and continues.
    /// Every scan ends on both bricks. Then the monitor: the returned node fails back, its smbd
    /// is killed, the monitor moves the address away; a clean daemon stop stops its smbd.
    func testSMBSessionReconnectsToTheOtherNodeAndContinuesThroughTheEventScript() throws {
        for tool in ["/usr/sbin/smbd", "/usr/bin/smbclient", "/usr/bin/smbpasswd", "/usr/bin/nsenter"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) is not installed (apt-get install samba smbclient)")
        }
        guard runCommand(["/usr/bin/python3", "-c", "import samba.samba3.libsmb_samba_internal"]).ok else {
            throw XCTSkip("python3-samba is not installed")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.twinfs) else { throw XCTSkip("twinfs not built at \(Self.twinfs)") }
        let password = "twinfs-test"
        var nodes: [FSNode] = []
        var startNode: (Int) throws -> Void = { _ in }
        let samba = try String(contentsOfFile: Self.repoRoot + "/ctdb-like/events/60.samba", encoding: .utf8)
        // smbd's startup takes a moment on this VM: the script waits up to 3 s for it.
        let p = try startPair(extraScripts: ["60.samba": samba], eventTimeout: 6) { p in
            (nodes, startNode) = try self.twinfsPair(p)
            XCTAssertEqual(mkdir(nodes[0].mnt + "/scans", 0o755), 0)
            var env: [NetnsTopology.Node: [String: String]] = [:]
            for (i, n) in nodes.enumerated() {
                let conf = n.dir + "/samba/smb.conf"
                try SambaConfig.render(dir: n.dir + "/samba", port: 445, shares: [("pacs", n.mnt)], repoRoot: Self.repoRoot, interfaces: "eth0 lo")
                    .write(toFile: conf, atomically: true, encoding: .utf8)
                XCTAssertEqual(runCommand(["sh", "-c", "printf '%s\\n%s\\n' \(password) \(password) | smbpasswd -c \(conf) -a -s root"]).status, 0)
                let me: NetnsTopology.Node = i == 0 ? .a : .b
                env[me] = ["SMBD_CONF": conf, "SMBD_HOST": p.topo.address(me)]
            }
            return env
        }
        let topo = p.topo
        addTeardownBlock { _ = runCommand(["pkill", "-KILL", "-f", "smbd -D -s \(topo.workDir)/"]) }
        // The event script started smbd on both nodes (its pid file is in the daemon's state dir).
        func smbdPid(_ n: NetnsTopology.Node) -> pid_t? {
            let dir = p.dir(n) + "/state/smbd"
            for f in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where f.hasPrefix("smbd") && f.hasSuffix(".pid") {
                if let s = try? String(contentsOfFile: dir + "/" + f, encoding: .utf8), let pid = pid_t(s.trimmingCharacters(in: .whitespacesAndNewlines)),
                   NetnsTopology.isAlive(pid) { return pid }
            }
            return nil
        }
        XCTAssertTrue(waitUntil(20) { smbdPid(.a) != nil && smbdPid(.b) != nil },
                      "60.samba did not start smbd on both nodes\n" + topo.readLog("a/state/events.log") + topo.readLog("b/state/events.log"))
        func share(_ cmd: String) -> CommandResult {
            topo.exec(.client, ["smbclient", "//\(p.vip)/pacs", "-U", "root%\(password)", "-t", "5", "-c", cmd], timeout: 20)
        }
        XCTAssertTrue(waitUntil(20) { share("ls").ok }, "smbd on the address never answered\n" + topo.readLog("a/state/events.log"))

        let src = topo.workDir + "/scans"
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
        var want: [String: [UInt8]] = [:]
        for i in 0..<80 {
            var bytes = [UInt8](repeating: 0, count: 300_000 + i * 1000)
            for j in bytes.indices { bytes[j] = UInt8(truncatingIfNeeded: (j &* 31) ^ (i &* 7)) }
            let name = String(format: "scan%03d.dcm", i)
            _ = FileManager.default.createFile(atPath: src + "/" + name, contents: Data(bytes))
            want[name] = bytes
        }
        let out = topo.workDir + "/session.json", progress = topo.workDir + "/session.progress"
        let client = try topo.spawn(.client, ["/usr/bin/python3", Self.repoRoot + "/Tests/HATests/smb_session.py", "--server", p.vip,
                                              "--share", "pacs", "--user", "root", "--password", password, "--src", src,
                                              "--dest", "scans", "--out", out, "--progress", progress, "--timeout-ms", "20000"],
                                    log: "session.log")
        func storedCount() -> Int { ((try? String(contentsOfFile: progress, encoding: .utf8)) ?? "").split(separator: "\n").count }
        XCTAssertTrue(waitUntil(60) { storedCount() >= 25 }, "the session stored \(storedCount()) files\n" + topo.readLog("session.log"))
        // The owner hangs, then loses power. Hung first: its kernel still acknowledges the
        // client's next request, which then waits for an answer with nothing left to resend
        // (only a reset can end that wait early). Then off the network, so nothing a's kernel
        // sends reaches the client, and everything in it is killed.
        for pid in topo.pids(.a) { kill(pid, SIGSTOP) }
        usleep(400_000)
        let cutAt = Date()
        try topo.cutLink(node: .a, mode: .carrier)
        for pid in topo.pids(.a) { kill(pid, SIGKILL) }
        XCTAssertNotNil(client.wait(timeout: 240), "the SMB session did not finish")
        let report = try XCTUnwrap(try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String: Any],
                                   "no session report\n" + topo.readLog("session.log"))
        XCTAssertTrue(report["error"] is NSNull, "session: \(report["error"] ?? "")")
        let stored = report["stored"] as? [[Any]] ?? []
        let losses = report["losses"] as? [[String: Any]] ?? []
        let reconnects = report["reconnects"] as? [Double] ?? []
        XCTAssertEqual(stored.count, want.count)
        XCTAssertEqual(report["mismatches"] as? [String], [], "files read back wrong after the reconnect")
        XCTAssertGreaterThanOrEqual(reconnects.count, 1, "the session never lost its connection: \(losses)")
        // Reset by the new owner (tickle ACK), not given up after the client's 20 s timeout.
        for l in losses {
            XCTAssertFalse("\(l["error"] ?? "")".lowercased().contains("timeout") || "\(l["error"] ?? "")".contains("0xc00000b5"),
                           "the old connection timed out instead of being reset: \(l)")
        }
        let takeip = topo.readLog("ha-b.log") + ((try? String(contentsOfFile: p.dir(.b) + "/state/events.log", encoding: .utf8)) ?? "")
        let statusB = p.status(.b)
        let transitions = (statusB["transitions"] as? [[String: Any]] ?? []).map { "\($0["event"] ?? "") \($0["reason"] ?? "")" }
        XCTAssertTrue(transitions.contains { $0.hasPrefix("takeip") && $0.contains("client connections tickled") },
                      "b tickled no client connections: \(transitions)\n" + takeip.suffix(2000))
        if let lost = losses.first?["time"] as? Double, let back = reconnects.first {
            print("SMB session failover: connection lost \(Int((lost - cutAt.timeIntervalSince1970) * 1000)) ms after the power cut "
                  + "(\(losses.first?["error"] ?? "")), new session \(Int((back - cutAt.timeIntervalSince1970) * 1000)) ms after it; "
                  + "\(stored.filter { ($0[1] as? Double ?? 0) > cutAt.timeIntervalSince1970 }.count) files stored after the cut")
        }
        XCTAssertTrue(waitUntil(10) { p.holders() == [.b] }, "holders \(p.holders())")

        // Node a returns: its link, its TwinFS node (the dead mount is detached), catch-up.
        try topo.heal(node: .a)
        try startNode(0)
        XCTAssertTrue(waitUntil(180) { nodes.allSatisfy { self.state($0) == "HEALTHY" } }, "not HEALTHY: \(nodes.map { state($0) })")
        for n in nodes {
            for (name, bytes) in want.sorted(by: { $0.key < $1.key }) {
                let got = FileManager.default.contents(atPath: n.brick + "/scans/" + name)
                XCTAssertTrue(got.map { [UInt8]($0) == bytes } ?? false,
                              "\(name) on \(n.name)'s brick: \(got.map { "\($0.count) bytes, not the \(bytes.count) sent" } ?? "missing")")
            }
        }
        let diff = runCommand(["diff", "-r", nodes[0].brick + "/scans", nodes[1].brick + "/scans"], timeout: 120)
        XCTAssertEqual(diff.status, 0, "the bricks differ: " + diff.stdout.prefix(2000))

        // a's daemon returns: 60.samba starts a's smbd, a (preferred) takes the address back
        // after the failback delay and serves the share.
        try p.startDaemon(.a)
        XCTAssertTrue(waitUntil(20) { smbdPid(.a) != nil }, "60.samba did not start smbd on a again")
        XCTAssertTrue(waitUntil(20) { p.holders() == [.a] }, "no failback to a; holders \(p.holders())")
        XCTAssertTrue(waitUntil(20) { share("ls scans/scan079.dcm").ok }, "the share on a does not answer")
        // The monitor: a's smbd dies, 60.samba's monitor fails, the address goes to b.
        kill(try XCTUnwrap(smbdPid(.a)), SIGKILL)
        XCTAssertTrue(waitUntil(20) { p.holders() == [.b] }, "the address stayed on a without smbd; holders \(p.holders())")
        XCTAssertTrue("\(p.status(.a)["last_monitor_error"] ?? "")".contains("60.samba"), "a: \(p.status(.a))")
        XCTAssertTrue(waitUntil(20) { share("get scans/scan000.dcm /dev/null").ok }, "the share on b does not answer")
        // A clean stop of b's daemon stops the smbd its script started.
        let bSmbd = try XCTUnwrap(smbdPid(.b))
        p.daemons[.b]?.signal(SIGTERM)
        XCTAssertNotNil(p.daemons[.b]?.wait(timeout: 30), "b's daemon did not stop")
        XCTAssertTrue(waitUntil(10) { !NetnsTopology.isAlive(bSmbd) }, "shutdown left b's smbd running")
    }
}
