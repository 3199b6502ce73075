import Foundation
import Glibc
import TwinCore
import TestSupport
import XCTest

/// Real PACS parts on the pair: dcmtk's storescu sends a generated study set (a CT series of
/// 300 512x512 16-bit slices, an MR series, two ~10 MB CR images) to Orthanc, whose storage
/// area is on the TwinFS mount, and to dcmtk's storescp writing into the other node's mount.
/// Every instance is read back and compared; both bricks end identical.
final class PACSTests: XCTestCase {
    static let script = TestEnv.repoRoot + "/Tests/IntegrationTests/pacs/pacs_e2e.py"
    static let python = "/usr/bin/python3"

    func requireTools() throws {
        for t in ["/usr/sbin/Orthanc", "/usr/bin/storescu", "/usr/bin/storescp"] where !FileManager.default.isExecutableFile(atPath: t) {
            throw XCTSkip("\(t) is not installed (apt-get install orthanc dcmtk)")
        }
        guard runCommand([Self.python, "-c", "import pydicom, numpy"]).ok else {
            throw XCTSkip("python3-pydicom / python3-numpy are not installed")
        }
    }

    /// Orthanc with its storage area at `storage` (on the mount) and its index on local disk.
    final class Orthanc: @unchecked Sendable {
        let dir: String
        let http = freeLoopbackPort()
        let dicom = freeLoopbackPort()
        var process: Child?
        var url: String { "http://127.0.0.1:\(http)" }

        init(dir: String, storage: String) throws {
            self.dir = dir
            try FileManager.default.createDirectory(atPath: dir + "/index", withIntermediateDirectories: true)
            let cfg: [String: Any] = [
                "Name": "TwinFS-test", "StorageDirectory": storage, "IndexDirectory": dir + "/index",
                "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": false,
                "AuthenticationEnabled": false, "DicomCheckCalledAet": false, "StorageCompression": false,
                // Orthanc fsyncs each stored file before it acknowledges the C-STORE: on TwinFS
                // that fsync returns once both nodes' disks hold the instance.
                "SyncStorageArea": true, "Plugins": [],
            ]
            try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: dir + "/orthanc.json"))
        }

        func start() throws {
            process = try Child(["setsid", "/usr/sbin/Orthanc", dir + "/orthanc.json"], stdout: dir + "/orthanc.log", stderr: dir + "/orthanc.log")
            let deadline = Date().addingTimeInterval(30)
            while runCommand(["curl", "-sf", url + "/system"], timeout: 5).status != 0 {
                guard Date() < deadline, process?.isRunning == true else {
                    throw SpawnError(description: "Orthanc did not answer: " + ((try? String(contentsOfFile: dir + "/orthanc.log", encoding: .utf8)) ?? ""))
                }
                usleep(200_000)
            }
        }

        func stop() {
            if let p = process, p.isRunning { _ = p.stop(signal: SIGTERM, timeout: 20) }
            process = nil
        }
    }

    func testStudiesStoredThroughOrthancAndStorescpAreReadBackIdenticalAndOnBothBricks() throws {
        try requireTools()
        let c = try cluster()
        waitHealthy(c)
        let work = TestEnv.prefix + "/pacs-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: work) }
        let src = work + "/study"
        let gen = runCommand([Self.python, Self.script, "generate", src, "--ct", "300", "--mr", "60", "--cr", "2"], timeout: 300)
        XCTAssertEqual(gen.status, 0, gen.stderr)

        // Orthanc storing onto node a's mount.
        XCTAssertEqual(mkdir(c.a.mnt + "/orthanc-storage", 0o755), 0)
        let orthanc = try Orthanc(dir: work + "/orthanc", storage: c.a.mnt + "/orthanc-storage")
        addTeardownBlock { orthanc.stop() }
        try orthanc.start()
        let send = runCommand(["storescu", "-aec", "ORTHANC", "-aet", "MODALITY", "+sd", "+r", "127.0.0.1", "\(orthanc.dicom)", src], timeout: 900)
        XCTAssertEqual(send.status, 0, "storescu to Orthanc: " + send.stdout + send.stderr)
        var check = runCommand([Self.python, Self.script, "verify-orthanc", orthanc.url, src], timeout: 900)
        XCTAssertEqual(check.status, 0, "read back through Orthanc: " + check.stdout + check.stderr)
        // Restarted, Orthanc finds every instance again (its storage area is the mount).
        orthanc.stop()
        try orthanc.start()
        check = runCommand([Self.python, Self.script, "verify-orthanc", orthanc.url, src], timeout: 900)
        XCTAssertEqual(check.status, 0, "after an Orthanc restart: " + check.stdout + check.stderr)
        orthanc.stop()

        // dcmtk's storescp writing into node b's mount.
        let out = c.b.mnt + "/storescp"
        XCTAssertEqual(mkdir(out, 0o755), 0)
        let port = freeLoopbackPort()
        let scp = try Child(["setsid", "storescp", "-aet", "ARCHIVE", "--output-directory", out, "--sort-on-study-uid", "st", "\(port)"],
                            stdout: work + "/storescp.log", stderr: work + "/storescp.log")
        addTeardownBlock { if scp.isRunning { _ = scp.stop(signal: SIGTERM, timeout: 10) } }
        usleep(500_000)
        let send2 = runCommand(["storescu", "-aec", "ARCHIVE", "+sd", "+r", "127.0.0.1", "\(port)", src], timeout: 900)
        XCTAssertEqual(send2.status, 0, "storescu to storescp: " + send2.stdout + send2.stderr)
        _ = scp.stop(signal: SIGTERM, timeout: 10)
        check = runCommand([Self.python, Self.script, "verify-dir", out, src], timeout: 900)
        XCTAssertEqual(check.status, 0, "storescp's files on b's mount: " + check.stdout + check.stderr)
        // Node a holds storescp's files too (written on b), and b holds Orthanc's (written on a).
        check = runCommand([Self.python, Self.script, "verify-dir", c.a.mnt + "/storescp", src], timeout: 900)
        XCTAssertEqual(check.status, 0, "storescp's files on a's mount: " + check.stdout + check.stderr)

        waitUntil("every file closed on both nodes") {
            status(c.a)["open_handles"] as? Int == 0 && status(c.b)["open_handles"] as? Int == 0
        }
        waitHealthy(c)
        try assertReplicasIdentical(c)
    }
}
