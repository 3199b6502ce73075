import Foundation
import XCTest

/// `twinfs node` refuses a [tier] whose credentials file others can read, before it touches the
/// brick, the journal or the mount point (as it does for peer.secret_file).
final class TierPreflightTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func testNodeRefusesAWorldReadableTierCredentialsFile() throws {
        guard getuid() == 0 else { throw XCTSkip("twinfs node runs as root only") }
        let binary = ProcessInfo.processInfo.environment["TWINFS_BIN"] ?? Self.repoRoot + "/.build/debug/twinfs"
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw XCTSkip("\(binary) is not built") }
        let dir = NSTemporaryDirectory() + "twinfs-tier-preflight-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir + "/brick", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/mnt", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let creds = dir + "/tier.credentials"
        try Data("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n".utf8).write(to: URL(fileURLWithPath: creds))
        chmod(creds, 0o644)
        let secret = dir + "/peer.secret"
        try Data((0..<32).map { UInt8($0) }).write(to: URL(fileURLWithPath: secret))
        chmod(secret, 0o600)
        // A port this test holds: if the tier check were missing, the node would stop at the
        // busy listen port instead (exit 2 as well, another message), never reaching a mount.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &len) } }
        listen(holder, 1)
        let port = UInt16(bigEndian: addr.sin_port)
        let config = dir + "/node.toml"
        try Data("""
            volume = "pacs"
            node = "a"
            brick = "\(dir)/brick"
            journal = "\(dir)/pacs.journal"
            mountpoint = "\(dir)/mnt"
            control_socket = "\(dir)/pacs.sock"
            listen = "127.0.0.1:\(port)"

            [peer]
            node = "b"
            address = "127.0.0.1:1"
            secret_file = "\(secret)"

            [tier]
            endpoint = "http://127.0.0.1:7480"
            bucket = "pacs-archive"
            credentials_file = "\(creds)"
            qualify_after_days = 90
            """.utf8).write(to: URL(fileURLWithPath: config))

        let (status, out) = try Spawn.run([binary, "node", "--config", config])
        XCTAssertEqual(status, 2, out)
        XCTAssertTrue(out.contains("tier credentials file \(creds) is readable or writable by every user (mode 644)"), out)
        XCTAssertTrue(out.contains("chmod 600 \(creds)"), out)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/brick"), [], "refused before the brick was touched")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/pacs.journal"))
    }
}
