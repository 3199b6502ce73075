import TwinConfig
import TwinCore
import XCTest

final class ConfigTests: XCTestCase {
    let good = """
    volume = "pacs"
    node = "a"
    brick = "/srv/twinfs/brick"
    journal = "/var/lib/twinfs/pacs.journal"
    mountpoint = "/mnt/pacs"
    control_socket = "/run/twinfs/pacs.sock"
    listen = "192.0.2.10:7780"

    [peer]
    node = "b"
    address = "192.0.2.11:7780"
    secret_file = "/etc/twinfs/secret"
    """

    func testParsesEveryKey() throws {
        let c = try NodeConfig.parse(good)
        XCTAssertEqual(c.volume, "pacs")
        XCTAssertEqual(c.node, "a")
        XCTAssertEqual(c.brick, "/srv/twinfs/brick")
        XCTAssertEqual(c.journal, "/var/lib/twinfs/pacs.journal")
        XCTAssertEqual(c.mountpoint, "/mnt/pacs")
        XCTAssertEqual(c.controlSocket, "/run/twinfs/pacs.sock")
        XCTAssertEqual(c.listen, "192.0.2.10:7780")
        XCTAssertEqual(c.peer, NodeConfig.Peer(node: "b", address: "192.0.2.11:7780", secretFile: "/etc/twinfs/secret"))
        XCTAssertEqual(c.nodeOrdinal, 1)
        XCTAssertEqual(c.attrTimeout, 1.0)
        XCTAssertFalse(c.sealCommits, "content commits are journaled durably unless asked")
        XCTAssertTrue(try NodeConfig.parse("seal_commits = true\n" + good).sealCommits)
    }

    func testHealAndScrubSections() throws {
        let base = good.replacingOccurrences(of: "\n[peer]", with: "\n[heal]\nrate_mb = 80\nconcurrency = 2\n\n[scrub]\nschedule = \"14d\"\nrate_mb = 20\n\n[peer]")
        let c = try NodeConfig.parse(base)
        XCTAssertEqual(c.healRate, 80_000_000)
        XCTAssertEqual(c.healConcurrency, 2)
        XCTAssertEqual(c.scrubRate, 20_000_000)
        XCTAssertEqual(c.scrubInterval, 14 * 86400)
        let d = try NodeConfig.parse(good)
        XCTAssertEqual(d.healRate, 0, "heal is unlimited by default")
        XCTAssertEqual(d.scrubInterval, 30 * 86400, "a monthly scrub by default")
        XCTAssertNil(try NodeConfig.parse(good.replacingOccurrences(of: "\n[peer]", with: "\n[scrub]\nschedule = \"off\"\n[peer]")).scrubInterval)
        for (bad, words) in [("[heal]\nspeed = 5\n", "heal.speed"), ("[heal]\nconcurrency = 0\n", "concurrency"),
                             ("[scrub]\nschedule = \"sometimes\"\n", "schedule"), ("heal = 5\n", "table")] {
            XCTAssertThrowsError(try NodeConfig.parse(good.replacingOccurrences(of: "\n[peer]", with: "\n" + bad + "[peer]"))) { e in
                XCTAssertTrue("\(e)".contains(words), "\(e)")
            }
        }
    }

    func testPeerTimeoutAndHAConfig() throws {
        let c = try NodeConfig.parse(good.replacingOccurrences(of: "listen = \"192.0.2.10:7780\"",
                                                               with: "listen = \"192.0.2.10:7780\"\nha_config = \"/etc/twinfs/ha/ha.toml\"")
                                     + "\ntimeout = 1.5\n")
        XCTAssertEqual(c.peer?.timeout, 1.5)
        XCTAssertEqual(c.haConfig, "/etc/twinfs/ha/ha.toml")
        XCTAssertEqual(try NodeConfig.parse(good).peer?.timeout, 2.5, "default peer timeout")
        XCTAssertThrowsError(try NodeConfig.parse(good + "\ntimeout = 42\n")) { XCTAssertTrue("\($0)".contains("peer.timeout"), "\($0)") }
        XCTAssertThrowsError(try NodeConfig.parse(good.replacingOccurrences(of: "listen = \"192.0.2.10:7780\"",
                                                                            with: "listen = \"192.0.2.10:7780\"\nha_config = \"ha.toml\""))) {
            XCTAssertTrue("\($0)".contains("ha_config"), "\($0)")
        }
    }

    func testTheExampleConfigInDocsParses() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path + "/docs/twinfs.example.toml"
        let c = try NodeConfig.load(path: path)
        XCTAssertEqual(c.peer?.timeout, 2.5)
    }

    func testRenderedConfigParsesBack() throws {
        let text = NodeConfig.render(volume: "v", node: "n2", brick: "/b", journal: "/j/x.db", mountpoint: "/m",
                                     controlSocket: "/r/s.sock", listen: "[::1]:7000",
                                     peer: .init(node: "n1", address: "127.0.0.1:7001", secretFile: "/s"))
        let c = try NodeConfig.parse(text)
        XCTAssertEqual(c.node, "n2")
        XCTAssertEqual(c.nodeOrdinal, 2)
        XCTAssertEqual(c.peer?.node, "n1")
    }

    /// Every bad config gets one line naming the key and a fix.
    func testBadConfigsAreRefusedWithTheKeyNamed() {
        let cases: [(String, String)] = [
            (good.replacingOccurrences(of: "volume = \"pacs\"\n", with: ""), "'volume' is missing"),
            (good.replacingOccurrences(of: "\"/srv/twinfs/brick\"", with: "\"relative/brick\""), "'brick' must be an absolute path"),
            (good.replacingOccurrences(of: "\"192.0.2.10:7780\"", with: "\"nohostport\""), "listen"),
            (good.replacingOccurrences(of: "node = \"b\"", with: "node = \"a\""), "the same as this node"),
            ("colour = \"blue\"\n" + good, "unknown key 'colour'"),
            (good + "\ncolour = \"blue\"\n", "unknown key 'peer.colour'"),
            (good.replacingOccurrences(of: "[peer]", with: "[peer"), "line"),
            (good.replacingOccurrences(of: "\"/var/lib/twinfs/pacs.journal\"", with: "\"/mnt/pacs/j.db\""), "lies inside the mount point"),
            (good.replacingOccurrences(of: "\"/var/lib/twinfs/pacs.journal\"", with: "\"/srv/twinfs/brick/j.db\""), "lies inside the brick"),
            (good.replacingOccurrences(of: "node = \"a\"", with: "node = \"a b\""), "not a valid name"),
            (good.replacingOccurrences(of: "volume = \"pacs\"", with: "volume = 5"), "must be a string"),
            (good + "\nmax_threads = 0\n", "max_threads"),
            ("seal_commits = 1\n" + good, "seal_commits"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try NodeConfig.parse(text, path: "/etc/twinfs/a.toml")) { e in
                let err = e as? AdminError
                XCTAssertEqual(err?.exitCode, 2)
                XCTAssertTrue(err?.description.contains(expected) == true, "\(err?.description ?? "nil") should mention \(expected)")
                XCTAssertTrue(err?.description.contains("fix:") == true)
                XCTAssertFalse(err?.description.contains("\n") == true, "one line")
            }
        }
    }

    func testHostPort() {
        XCTAssertEqual(NodeConfig.parseHostPort("10.0.0.1:80")?.port, 80)
        XCTAssertEqual(NodeConfig.parseHostPort("[::1]:7780")?.host, "::1")
        XCTAssertNil(NodeConfig.parseHostPort("host:0"))
        XCTAssertNil(NodeConfig.parseHostPort(":80"))
        XCTAssertNil(NodeConfig.parseHostPort("[::1]7780"))
    }
}
