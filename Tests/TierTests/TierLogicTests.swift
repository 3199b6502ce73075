import Fixity
import ObjectStore
import TwinConfig
import TwinCore
import XCTest
@testable import Tier

/// The tier's pure parts: which files qualify, object keys, the manifest, the stub.
final class TierLogicTests: XCTestCase {
    let day: Int64 = 86_400 * 1_000_000_000
    let now: Int64 = 1_800_000_000 * 1_000_000_000

    private func file(_ path: String, ageDays: Int64 = 100, size: Int64 = 512 << 10) -> FileFacts {
        FileFacts(path: Array(path.utf8), size: size, mtimeNs: now - ageDays * day, ctimeNs: now - ageDays * day)
    }

    private func policy(_ globs: [String] = []) -> CandidatePolicy {
        CandidatePolicy(prefix: "pacs/", qualifyAfterDays: 90, paths: globs.map { try! PathGlob($0) })
    }

    // MARK: Candidates

    func testClosedAndUnchangedLongEnoughQualifies() throws {
        XCTAssertEqual(policy().verdict(file("S/1/IM1.dcm"), nowNs: now), .qualifies(try ObjectKey(prefix: "pacs/", path: "S/1/IM1.dcm")))
        // Exactly 90 days: due now.
        XCTAssertEqual(policy().verdict(file("a", ageDays: 90), nowNs: now), .qualifies(try ObjectKey(prefix: "pacs/", path: "a")))
    }

    func testEachReasonToStayHot() {
        let p = policy()
        var f = file("a", ageDays: 89)
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.changedRecently(qualifiesAtNs: now + day)))
        // A chmod or chown (ctime) restarts the clock as much as a write (mtime).
        f = file("a")
        f.ctimeNs = now - day
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.changedRecently(qualifiesAtNs: now + 89 * day)))
        f = file("a")
        f.isOpen = true
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.open))
        f = file("a")
        f.kind = .directory
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.notRegularFile))
        f = file("a")
        f.kind = .symlink
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.notRegularFile))
        XCTAssertEqual(p.verdict(file("a", size: 0), nowNs: now), .skip(.empty))
        f = file("a")
        f.residence = .tiered
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.alreadyTiered))
        f.residence = .recalled
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.alreadyTiered))
        f = file("a")
        f.nlink = 2
        XCTAssertEqual(p.verdict(f, nowNs: now), .skip(.hardLinked(nlink: 2)))
        var bad = file("a")
        bad.path = [0x61, 0xFF]
        XCTAssertEqual(p.verdict(bad, nowNs: now), .skip(.unsupportedName(.notUTF8)))
        XCTAssertEqual(p.verdict(file("a\u{1}b"), nowNs: now), .skip(.unsupportedName(.controlCharacter)))
        XCTAssertEqual(p.verdict(file(String(repeating: "x/", count: 600) + "f"), nowNs: now),
                       .skip(.unsupportedName(.tooLong(bytes: 5 + 1201))))
        // A file dated in the far future never overflows into "due".
        var future = file("a")
        future.mtimeNs = .max - 1
        XCTAssertEqual(p.verdict(future, nowNs: now), .skip(.changedRecently(qualifiesAtNs: .max)))
    }

    func testPathPatterns() throws {
        let p = policy(["STUDIES/**", "imports/*.dcm"])
        XCTAssertEqual(p.verdict(file("STUDIES/2019/IM1"), nowNs: now), .qualifies(try ObjectKey(prefix: "pacs/", path: "STUDIES/2019/IM1")))
        XCTAssertEqual(p.verdict(file("imports/x.dcm"), nowNs: now), .qualifies(try ObjectKey(prefix: "pacs/", path: "imports/x.dcm")))
        XCTAssertEqual(p.verdict(file("imports/sub/x.dcm"), nowNs: now), .skip(.notInPaths))
        XCTAssertEqual(p.verdict(file("work/x.dcm"), nowNs: now), .skip(.notInPaths))
    }

    func testCandidatesIsLazyAndKeepsOrder() {
        let files = (0..<1000).map { file("f\($0)", ageDays: $0 % 2 == 0 ? 100 : 1) }
        var seen = 0
        let counted = files.lazy.map { f -> FileFacts in seen += 1; return f }
        let firstThree = Array(policy().candidates(counted, nowNs: now).prefix(3))
        XCTAssertEqual(firstThree.map(\.1.key), ["pacs/f0", "pacs/f2", "pacs/f4"])
        XCTAssertLessThan(seen, 10, "a pass that needs 3 candidates does not look at every file")
    }

    func testPolicyFromConfig() throws {
        let t = TierConfig(endpoint: "http://127.0.0.1:7480", bucket: "b", prefix: "v/", credentialsFile: "/c",
                           qualifyAfterDays: 0.5, paths: [try PathGlob("a/**")])
        let p = CandidatePolicy(t)
        XCTAssertEqual(p.qualifyAfterNs, day / 2)
        XCTAssertEqual(p.verdict(file("a/b", ageDays: 1), nowNs: now), .qualifies(try ObjectKey(prefix: "v/", path: "a/b")))
    }

    func testHundredsOfThousandsOfFiles() {
        // The issue asks for 10 million files in seconds (release build): a benchmark's number.
        // Here 300,000 facts in a debug build pick the right candidates; the rate is printed.
        let count = 300_000
        let p = policy(["STUDIES/**"])
        let files = (0..<count).map { i in
            FileFacts(path: Array("STUDIES/\(i % 1000)/IM\(i).dcm".utf8), size: 1, mtimeNs: self.now - Int64(i % 200) * self.day,
                      ctimeNs: self.now - Int64(i % 200) * self.day)
        }
        let started = Date()
        var n = 0
        for _ in p.candidates(files, nowNs: now) { n += 1 }
        let seconds = Date().timeIntervalSince(started)
        XCTAssertEqual(n, count / 200 * 110)
        print("CandidatePolicy: \(count) files, \(n) candidates in \(String(format: "%.2f", seconds)) s (debug build)")
    }

    // MARK: Keys

    func testObjectKeysMirrorPaths() throws {
        XCTAssertEqual(try ObjectKey(prefix: "pacs/", path: "Série 1/IM+1.dcm").key, "pacs/Série 1/IM+1.dcm")
        XCTAssertEqual(try ObjectKey(prefix: "", path: "a").key, "a")
        XCTAssertEqual(ObjectKey.path(ofKey: "pacs/Série 1/IM+1.dcm", prefix: "pacs/"), "Série 1/IM+1.dcm")
        XCTAssertNil(ObjectKey.path(ofKey: "other/a", prefix: "pacs/"))
        XCTAssertNil(ObjectKey.path(ofKey: "pacs/.twinfs/manifest/x.jsonl", prefix: "pacs/"))
        for bad in ["", "/a", "a//b", "a/./b", "../a", "a/"] {
            XCTAssertThrowsError(try ObjectKey(prefix: "p/", path: bad), bad)
        }
        XCTAssertEqual(TierLayout.manifestKey(prefix: "pacs/", node: "a", batch: 7, at: "20261207T170400Z"),
                       "pacs/.twinfs/manifest/20261207T170400Z-a-000007.jsonl")
        XCTAssertTrue(TierLayout.manifestKey(prefix: "pacs/", node: "a", batch: 1, at: "x").hasPrefix(TierLayout.manifestPrefix("pacs/")))
    }

    // MARK: Manifest

    private func entry(_ path: String, retain: Bool = true) -> ManifestEntry {
        ManifestEntry(key: "pacs/" + path, path: path, size: 524_288, xxh3: XXH128Hasher.hash(Array(path.utf8)),
                      mtimeNs: 1_733_590_000_123_456_789, mode: 0o100640, uid: 1001, gid: 1002,
                      retainUntil: retain ? UTCTime.parseISO8601("2056-12-07T17:04:00Z") : nil, versionId: retain ? "v-1" : nil)
    }

    func testManifestRoundTrip() throws {
        let entries = [entry("S/1/IM1.dcm"), entry("Série 2/\"quoted\" & back\\slash.dcm", retain: false), entry("z")]
        let bytes = Manifest.encode(entries)
        XCTAssertEqual(try Manifest.decode(bytes), entries)
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        XCTAssertEqual(String(lines[0]), """
            {"gid":1002,"key":"pacs/S/1/IM1.dcm","mode":33184,"mtime_ns":1733590000123456789,"path":"S/1/IM1.dcm",\
            "retain_until":"2056-12-07T17:04:00Z","size":524288,"uid":1001,"version_id":"v-1",\
            "xxh3":"\(XXH128Hasher.hash(Array("S/1/IM1.dcm".utf8)).hex)"}
            """)
        XCTAssertFalse(lines[1].contains("retain_until"), "no retention, no key")
        XCTAssertEqual(entries[0].digest, XXH128Hasher.hash(Array("S/1/IM1.dcm".utf8)))
    }

    func testManifestDamageIsReportedByLine() {
        let good = Manifest.encode([entry("a")])
        XCTAssertEqual(try Manifest.decode(good + [10] + good), [entry("a"), entry("a")], "blank lines are skipped")
        XCTAssertThrowsError(try Manifest.decode(good + Array("{\"key\":\"x\"}\n".utf8))) {
            XCTAssertEqual("\($0)", "manifest line 2 is not an entry: missing \"path\"")
        }
        XCTAssertThrowsError(try Manifest.decode(good + Array("garbage\n".utf8))) {
            XCTAssertEqual("\($0)", "manifest line 2 is not an entry: not JSON")
        }
        var badHash = entry("a")
        badHash.xxh3 = "xyz"
        XCTAssertThrowsError(try Manifest.decode(Manifest.encode([badHash]))) {
            XCTAssertTrue("\($0)".contains("line 1") && "\($0)".contains("32 hex digits"), "\($0)")
        }
    }

    func testLaterManifestLinesWin() {
        var newer = entry("a")
        newer.size = 1
        let latest = Manifest.latest([[entry("a"), entry("b")], [newer]])
        XCTAssertEqual(latest["pacs/a"]?.size, 1)
        XCTAssertEqual(latest["pacs/b"]?.size, 524_288)
    }

    // MARK: Stub

    private let stub = TierStub(bucket: "pacs-archive", key: "pacs/S/1/IM1.dcm", versionId: "v-1", size: 524_288,
                                xxh3: XXH128Hasher.hash([1, 2, 3]), retainUntil: UTCTime.parseISO8601("2056-12-07T17:04:00Z"))

    func testStubIsRecognisedOnlyWithItsXattrAndExactText() {
        let content = stub.content
        XCTAssertEqual(TierStub.recognise(xattr: stub.xattrValue, size: Int64(content.count), content: { content }), .stub(stub))
        // The same text without the xattr is a user's file, never a stub.
        XCTAssertEqual(TierStub.recognise(xattr: nil, size: Int64(content.count), content: { content }), .content)
        // The xattr over other content: damaged, never served as content nor recalled over blindly.
        var edited = content
        edited[edited.count - 2] ^= 1
        guard case .damaged = TierStub.recognise(xattr: stub.xattrValue, size: Int64(edited.count), content: { edited }) else {
            return XCTFail("edited stub accepted")
        }
        guard case .damaged = TierStub.recognise(xattr: stub.xattrValue, size: 524_288, content: { XCTFail("read"); return [] }) else {
            return XCTFail("full-size file with a stub xattr accepted")
        }
        guard case .damaged = TierStub.recognise(xattr: Array("{\"v\":2}".utf8), size: 1, content: { [] }) else {
            return XCTFail("unknown stub format accepted")
        }
    }

    func testStubTextIsNotDICOMAndNamesTheObject() {
        let text = String(decoding: stub.content, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix(TierStub.magic))
        XCTAssertTrue(text.contains("\nbucket: pacs-archive\nkey: pacs/S/1/IM1.dcm\nversion_id: v-1\nsize: 524288\n"), text)
        XCTAssertLessThanOrEqual(stub.content.count, TierStub.maximumBytes)
        XCTAssertFalse(stub.content.count >= 132 && Array(stub.content[128..<132]) == Array("DICM".utf8))
        XCTAssertNotEqual(Int64(stub.content.count), stub.size)
        // The longest key still fits the limit.
        let long = TierStub(bucket: String(repeating: "b", count: 63), key: String(repeating: "k", count: 1024), versionId: String(repeating: "v", count: 64),
                            size: .max, xxh3: XXH128Hasher.hash([]), retainUntil: UTCTime(seconds: 0))
        XCTAssertLessThanOrEqual(long.content.count, TierStub.maximumBytes)
    }
}

/// Retries of uploads and recalls.
final class RetryScheduleTests: XCTestCase {
    let down = ObjectStoreError.unreachable(endpoint: "http://127.0.0.1:7480", reason: "connection refused")

    func testExponentialUpToTheCapWithJitterTakenOff() {
        let s = RetrySchedule(first: 1, cap: 60, jitter: 0.5)
        XCTAssertEqual(s.decide(after: 1, error: down, random: 0), .retry(afterSeconds: 1))
        XCTAssertEqual(s.decide(after: 2, error: down, random: 0), .retry(afterSeconds: 2))
        XCTAssertEqual(s.decide(after: 4, error: down, random: 0), .retry(afterSeconds: 8))
        XCTAssertEqual(s.decide(after: 7, error: down, random: 0), .retry(afterSeconds: 60))
        XCTAssertEqual(s.decide(after: 1_000, error: down, random: 0), .retry(afterSeconds: 60))
        XCTAssertEqual(s.decide(after: 4, error: down, random: 1), .retry(afterSeconds: 4))
    }

    func testPermanentErrorsAndTheAttemptLimitGiveUp() {
        let s = RetrySchedule(maxAttempts: 3)
        XCTAssertEqual(s.decide(after: 1, error: .accessDenied(endpoint: "e", code: "InvalidAccessKeyId"), random: 0), .giveUp)
        XCTAssertEqual(s.decide(after: 1, error: .retained(key: "k"), random: 0), .giveUp)
        XCTAssertEqual(s.decide(after: 2, error: down, random: 0), .retry(afterSeconds: 2))
        XCTAssertEqual(s.decide(after: 3, error: down, random: 0), .giveUp)
    }
}
