import Foundation
import ObjectStore
import XCTest

/// A private Ceph RGW for the integration tests, started with `.ci/rgw.sh up` in a temporary
/// directory and stopped with `down`. With RGW_ENDPOINT, RGW_BUCKET and RGW_CREDENTIALS set
/// (`eval "$(.ci/rgw.sh env DIR)"`), the tests use that running cluster instead.
final class RGWCluster: @unchecked Sendable {
    let endpoint: String
    let bucket: String
    let credentialsPath: String
    let startSeconds: Double
    private let dir: String?

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(".ci/rgw.sh").path

    private init(endpoint: String, bucket: String, credentialsPath: String, startSeconds: Double, dir: String?) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.credentialsPath = credentialsPath
        self.startSeconds = startSeconds
        self.dir = dir
    }

    /// The running cluster from the environment, or a new one; nil (with the reason) when ceph is not installed.
    static func start() throws -> RGWCluster {
        let env = ProcessInfo.processInfo.environment
        if let e = env["RGW_ENDPOINT"], let b = env["RGW_BUCKET"], let c = env["RGW_CREDENTIALS"] {
            return RGWCluster(endpoint: e, bucket: b, credentialsPath: c, startSeconds: 0, dir: nil)
        }
        for tool in ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool"]
        where !["/usr/bin/", "/usr/sbin/"].contains(where: { FileManager.default.isExecutableFile(atPath: $0 + tool) }) {
            throw XCTSkip("\(tool) is not installed (run .ci/install-deps): the RGW tests need a private Ceph")
        }
        let dir = NSTemporaryDirectory() + "twinfs-rgw-\(getpid())"
        let started = Date()
        let (status, out) = try run(["up", dir])
        guard status == 0 else {
            _ = try? run(["down", dir])
            throw NSError(domain: "RGWCluster", code: Int(status), userInfo: [NSLocalizedDescriptionKey: "rgw.sh up failed: \(out)"])
        }
        var vars: [String: String] = [:]
        for line in out.split(separator: "\n") where line.hasPrefix("export ") {
            let kv = line.dropFirst("export ".count).split(separator: "=", maxSplits: 1)
            if kv.count == 2 { vars[String(kv[0])] = String(kv[1]) }
        }
        guard let e = vars["RGW_ENDPOINT"], let b = vars["RGW_BUCKET"], let c = vars["RGW_CREDENTIALS"] else {
            throw NSError(domain: "RGWCluster", code: 1, userInfo: [NSLocalizedDescriptionKey: "rgw.sh printed no env: \(out)"])
        }
        return RGWCluster(endpoint: e, bucket: b, credentialsPath: c, startSeconds: Date().timeIntervalSince(started), dir: dir)
    }

    func stop() {
        guard let dir else { return }
        _ = try? Self.run(["down", dir])
        try? FileManager.default.removeItem(atPath: dir)
    }

    func client(credentials: S3Credentials? = nil, signing: S3Config.PayloadSigning = .signed) throws -> S3Client {
        let creds = try credentials ?? CredentialsFile.load(path: credentialsPath)
        return S3Client(config: S3Config(endpoint: endpoint, bucket: bucket, credentials: creds, payloadSigning: signing))
    }

    private static func run(_ args: [String]) throws -> (Int32, String) {
        try Spawn.run(["/bin/bash", script] + args)
    }
}

/// Runs a command with posix_spawn and waitpid, its output into a file. (Foundation's Process
/// left an exited script unreaped in XCTest's class setUp and hung there.)
enum Spawn {
    static func run(_ argv: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
        let out = NSTemporaryDirectory() + "twinfs-spawn-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        var cargs = argv.map { strdup($0) } + [nil]
        var cenv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cargs + cenv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, &cenv)
        guard rc == 0 else { throw NSError(domain: "Spawn", code: Int(rc), userInfo: [NSLocalizedDescriptionKey: "posix_spawn \(argv[0]): \(rc)"]) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        return (status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), text)
    }
}
