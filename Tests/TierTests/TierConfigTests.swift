import TwinConfig
import TwinCore
import XCTest

/// The `[tier]` table: every key, its defaults, and a one-line refusal for each mistake.
final class TierConfigTests: XCTestCase {
    let base = """
    volume = "pacs"
    node = "a"
    brick = "/srv/twinfs/brick"
    journal = "/var/lib/twinfs/pacs.journal"
    mountpoint = "/mnt/pacs"
    control_socket = "/run/twinfs/pacs.sock"
    listen = "192.0.2.10:7780"

    """

    let minimal = """
    [tier]
    endpoint = "http://127.0.0.1:7480"
    bucket = "pacs-archive"
    credentials_file = "/etc/twinfs/tier.credentials"
    qualify_after_days = 90
    """

    private func parse(_ tier: String) throws -> NodeConfig { try NodeConfig.parse(base + tier) }

    /// The refusal for `tier`, which must be one line naming `mentions`.
    private func refusal(_ tier: String, mentions: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try parse(tier)
            XCTFail("accepted:\n\(tier)", file: file, line: line)
        } catch {
            let e = error as! AdminError
            XCTAssertTrue(e.problem.contains(mentions), "\(e.description) does not mention \(mentions)", file: file, line: line)
            XCTAssertFalse(e.fix.isEmpty, file: file, line: line)
            XCTAssertFalse(e.description.contains("\n"), e.description, file: file, line: line)
        }
    }

    func testNoTierByDefault() throws {
        XCTAssertNil(try NodeConfig.parse(base).tier)
    }

    func testMinimalTierAndDefaults() throws {
        let t = try XCTUnwrap(try parse(minimal).tier)
        XCTAssertEqual(t, TierConfig(endpoint: "http://127.0.0.1:7480", bucket: "pacs-archive", prefix: "pacs/",
                                     credentialsFile: "/etc/twinfs/tier.credentials", qualifyAfterDays: 90))
        XCTAssertEqual(t.region, "us-east-1")
        XCTAssertEqual(t.retention, .off)
        XCTAssertEqual(t.bandwidth, 0)
        XCTAssertEqual(t.paths, [])
    }

    func testEveryKey() throws {
        let t = try XCTUnwrap(try parse("""
            [tier]
            endpoint = "https://s3.example.org:443/"
            bucket = "hospital.pacs-1"
            prefix = "site-a/pacs"
            region = "eu-central-1"
            credentials_file = "/etc/twinfs/../twinfs/tier.credentials"
            qualify_after_days = 30.5
            paths = ["STUDIES/**", "*/[0-9]*.dcm"]
            retention_mode = "compliance"
            retention_years = 30
            bandwidth_mb = 50
            """).tier)
        XCTAssertEqual(t.endpoint, "https://s3.example.org:443")
        XCTAssertEqual(t.bucket, "hospital.pacs-1")
        XCTAssertEqual(t.prefix, "site-a/pacs/")
        XCTAssertEqual(t.region, "eu-central-1")
        XCTAssertEqual(t.credentialsFile, "/etc/twinfs/tier.credentials")
        XCTAssertEqual(t.qualifyAfterDays, 30.5)
        XCTAssertEqual(t.paths.map(\.pattern), ["STUDIES/**", "*/[0-9]*.dcm"])
        XCTAssertEqual(t.retention, .locked(mode: .compliance, years: 30))
        XCTAssertEqual(t.bandwidth, 50_000_000)
        XCTAssertEqual(try parse(minimal + "\nprefix = \"\"").tier?.prefix, "")
        XCTAssertEqual(try parse(minimal + "\nretention_mode = \"off\"").tier?.retention, .off)
        XCTAssertEqual(try parse(minimal + "\nretention_mode = \"governance\"\nretention_years = 1").tier?.retention,
                       .locked(mode: .governance, years: 1))
    }

    func testRefusals() {
        let without = { (key: String) in self.minimal.split(separator: "\n").filter { !$0.hasPrefix(key) }.joined(separator: "\n") }
        refusal(without("endpoint"), mentions: "tier.endpoint' is missing")
        refusal(without("bucket"), mentions: "tier.bucket' is missing")
        refusal(without("credentials_file"), mentions: "tier.credentials_file' is missing")
        refusal(without("qualify_after_days"), mentions: "tier.qualify_after_days' is missing")
        refusal(minimal + "\nbuckets = \"x\"", mentions: "unknown key 'tier.buckets'")
        refusal(minimal.replacingOccurrences(of: "http://127.0.0.1:7480", with: "127.0.0.1:7480"), mentions: "does not start with http://")
        refusal(minimal.replacingOccurrences(of: "http://127.0.0.1:7480", with: "http://127.0.0.1:7480/pacs-archive"), mentions: "scheme, host and port only")
        refusal(minimal.replacingOccurrences(of: "http://127.0.0.1:7480", with: "http://key:secret@127.0.0.1:7480"), mentions: "scheme, host and port only")
        refusal(minimal.replacingOccurrences(of: "http://127.0.0.1:7480", with: "http://127.0.0.1:99999"), mentions: "scheme, host and port only")
        for bucket in ["PACS", "ab", "-pacs", "pacs_archive", "a..b", String(repeating: "a", count: 64)] {
            refusal(minimal.replacingOccurrences(of: "pacs-archive", with: bucket), mentions: "not a valid S3 bucket name")
        }
        for prefix in ["/pacs", "a//b", "a/../b", "./a", "a/."] {
            refusal(minimal + "\nprefix = \"\(prefix)\"", mentions: "not a clean relative key prefix")
        }
        refusal(minimal.replacingOccurrences(of: "/etc/twinfs/tier.credentials", with: "tier.credentials"), mentions: "absolute path")
        refusal(minimal.replacingOccurrences(of: "/etc/twinfs/tier.credentials", with: "/srv/twinfs/brick/creds"), mentions: "inside the brick or the mount point")
        refusal(minimal.replacingOccurrences(of: "= 90", with: "= -1"), mentions: "qualify_after_days' must be a number")
        refusal(minimal + "\npaths = \"*.dcm\"", mentions: "must be a list of patterns")
        refusal(minimal + "\npaths = [\"/abs/**\"]", mentions: "tier.paths[0] = '/abs/**' starts with /")
        refusal(minimal + "\npaths = [\"ok/*\", \"a/[0-9\"]", mentions: "tier.paths[1] = 'a/[0-9' has a [ without its ]")
        refusal(minimal + "\npaths = [\"a**b\"]", mentions: "** inside a name")
        refusal(minimal + "\npaths = [\"a/../b\"]", mentions: "has a . or .. component")
        refusal(minimal + "\npaths = [1]", mentions: "tier.paths[0] is not a string")
        refusal(minimal + "\nretention_years = 30", mentions: "retention_years is set without tier.retention_mode")
        refusal(minimal + "\nretention_mode = \"compliance\"", mentions: "needs tier.retention_years")
        refusal(minimal + "\nretention_mode = \"legal-hold\"\nretention_years = 3", mentions: "is not a retention mode")
        refusal(minimal + "\nretention_mode = \"off\"\nretention_years = 3", mentions: "retention_mode is \"off\"")
        refusal(minimal + "\nretention_mode = \"compliance\"\nretention_years = 2.5", mentions: "not a whole number of years")
        refusal(minimal + "\nretention_mode = \"compliance\"\nretention_years = 101", mentions: "retention_years' must be a number")
        refusal(minimal + "\nbandwidth_mb = -5", mentions: "bandwidth_mb' must be a number")
        refusal(minimal + "\nregion = \"eu central\"", mentions: "not a valid name")
        refusal("tier = 3\n", mentions: "'tier' must be a table")
    }

    func testTheExampleConfigParses() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/twinfs.example.toml").path
        let c = try NodeConfig.load(path: example)
        let t = try XCTUnwrap(c.tier, "docs/twinfs.example.toml shows every key, [tier] included")
        XCTAssertEqual(t.retention, .locked(mode: .compliance, years: 30))
    }
}

/// Path patterns for `tier.paths`.
final class PathGlobTests: XCTestCase {
    private func g(_ p: String) -> PathGlob { try! PathGlob(p) }

    func testMatching() {
        XCTAssertTrue(g("STUDIES/**").matches("STUDIES/2019/1.2.3/IM1.dcm"))
        XCTAssertTrue(g("STUDIES/**").matches("STUDIES/x"))
        XCTAssertFalse(g("STUDIES/**").matches("OTHER/STUDIES/x"))
        XCTAssertTrue(g("**/*.dcm").matches("a.dcm"))
        XCTAssertTrue(g("**/*.dcm").matches("a/b/c.dcm"))
        XCTAssertFalse(g("**/*.dcm").matches("a/b/c.dcm.tmp"))
        XCTAssertTrue(g("*/[0-9]*.dcm").matches("s/7x.dcm"))
        XCTAssertFalse(g("*/[0-9]*.dcm").matches("s/x7.dcm"))
        XCTAssertFalse(g("*/[0-9]*.dcm").matches("a/b/7.dcm"), "* does not cross /")
        XCTAssertTrue(g("a/[!.]*").matches("a/b"))
        XCTAssertFalse(g("a/[!.]*").matches("a/.hidden"))
        XCTAssertTrue(g("a/?.dcm").matches("a/x.dcm"))
        XCTAssertFalse(g("a/?.dcm").matches("a/xy.dcm"))
        XCTAssertTrue(g("a/**/b").matches("a/b"))
        XCTAssertTrue(g("a/**/b").matches("a/x/y/b"))
        XCTAssertTrue(g("Série/*").matches("Série/1"))
        XCTAssertFalse(g("Série/*").matches("Se\u{301}rie/1"), "bytes, not canonically equal strings: ext4 keeps both")
    }

    func testRefusals() {
        XCTAssertThrowsError(try PathGlob(""))
        XCTAssertThrowsError(try PathGlob("/a"))
        XCTAssertThrowsError(try PathGlob("a//b"))
        XCTAssertThrowsError(try PathGlob("a/"))
        XCTAssertThrowsError(try PathGlob("a/[b"))
        XCTAssertThrowsError(try PathGlob("a/**b"))
        XCTAssertThrowsError(try PathGlob(".."))
    }
}
