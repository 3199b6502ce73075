import Fixity
import Foundation
import ObjectStore
import TwinConfig
import TwinCore
import XCTest
@testable import Tier

/// Upload and proof before any brick may drop a file's bytes, against the in-memory store.
final class ArchiverTests: XCTestCase {
    let now = UTCTime.parseISO8601("2026-12-07T17:00:00Z")!

    private func file(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "twinfs-archiver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        addTeardownBlock { unlink(path) }
        return path
    }

    private func request(_ path: String, _ local: String, _ bytes: [UInt8]) throws -> ArchiveRequest {
        ArchiveRequest(path: path, key: try ObjectKey(prefix: "pacs/", path: path), localFile: local, size: Int64(bytes.count),
                       xxh3: XXH128Hasher.hash(bytes), mtimeNs: 1_700_000_000_000_000_001, mode: 0o100640, uid: 1001, gid: 1002)
    }

    private func bytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) } }

    func testArchiveStoresTheBytesAndDescribesThem() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(100_000)
        let r = try request("S/1/IM1.dcm", try file(body), body)
        let a = try await Archiver(store: store, bucket: "pacs-archive", retention: .locked(mode: .compliance, years: 30))
            .archive(r, now: now)
        let stored = try await store.get("pacs/S/1/IM1.dcm", range: nil)
        XCTAssertEqual(stored, body)
        let info = try await store.head("pacs/S/1/IM1.dcm")
        let until = UTCTime.parseISO8601("2056-12-07T17:00:00Z")!
        XCTAssertEqual(info.retention, Retention(mode: .compliance, until: until))
        XCTAssertEqual(info.metadata["xxh3"], r.xxh3.hex)
        XCTAssertEqual(a.manifest, ManifestEntry(key: "pacs/S/1/IM1.dcm", path: "S/1/IM1.dcm", size: 100_000, xxh3: r.xxh3,
                                                 mtimeNs: r.mtimeNs, mode: 0o100640, uid: 1001, gid: 1002, retainUntil: until,
                                                 versionId: info.versionId))
        XCTAssertEqual(a.stub, TierStub(bucket: "pacs-archive", key: "pacs/S/1/IM1.dcm", versionId: info.versionId, size: 100_000,
                                        xxh3: r.xxh3, retainUntil: until))
    }

    func testLargeFileGoesMultipartAndStillGetsItsRetention() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(6 << 20)
        let r = try request("big", try file(body), body)
        _ = try await Archiver(store: store, bucket: "b", retention: .locked(mode: .governance, years: 1), partSize: 5 << 20)
            .archive(r, now: now)
        let (parts, info) = (await store.callCount(.uploadPart), try await store.head("pacs/big"))
        XCTAssertEqual(parts, 2)
        XCTAssertEqual(info.retention?.mode, .governance)
        XCTAssertEqual(info.size, Int64(body.count))
    }

    func testAFileThatIsNotAsJournaledIsNeverUploaded() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(1000)
        var r = try request("a", try file(body), body)
        r.xxh3 = XXH128Hasher.hash([1])
        do {
            _ = try await Archiver(store: store, bucket: "b", retention: .locked(mode: .compliance, years: 30)).archive(r, now: now)
            XCTFail("a file with another hash was archived")
        } catch {
            guard case .notAsJournaled(let p, let d) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, "a")
            XCTAssertTrue(d.contains("XXH3-128"), d)
        }
        r = try request("a", r.localFile, body)
        r.size = 999
        do {
            _ = try await Archiver(store: store, bucket: "b", retention: .off).archive(r, now: now)
            XCTFail("a file of another size was archived")
        } catch {
            guard case .notAsJournaled = error else { return XCTFail("\(error)") }
        }
        let (puts, keys) = (await store.callCount(.put), await store.keys)
        XCTAssertEqual(puts, 0)
        XCTAssertEqual(keys, [])
    }

    func testReadBackVerificationReadsTheObject() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(5000)
        _ = try await Archiver(store: store, bucket: "b", retention: .off, verification: .readBack)
            .archive(try request("a", try file(body), body), now: now)
        let gets = await store.callCount(.get)
        XCTAssertEqual(gets, 1)
    }

    func testStoreFailuresAreRetriedWithBackoffAndPermanentOnesAreNot() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(5000)
        let r = try request("a", try file(body), body)
        let archiver = Archiver(store: store, bucket: "b", retention: .off)
        await store.failNext(.put, count: 2, with: .server(endpoint: "memory://test", status: 503, code: "SlowDown", message: ""))
        var slept: [Double] = []
        _ = try await RetrySchedule(first: 1, cap: 60, jitter: 0.2).run(sleep: { slept.append($0) }, random: { 0 }) { () async throws(ArchiveError) in
            try await archiver.archive(r, now: now)
        }
        XCTAssertEqual(slept, [1, 2])
        let stored = try await store.get("pacs/a", range: nil)
        XCTAssertEqual(stored, body)

        await store.failNext(.put, count: 1, with: .accessDenied(endpoint: "memory://test", code: "InvalidAccessKeyId"))
        slept = []
        do {
            _ = try await RetrySchedule().run(sleep: { slept.append($0) }, random: { 0 }) { () async throws(ArchiveError) in
                try await archiver.archive(r, now: now)
            }
            XCTFail("bad keys retried into success")
        } catch {
            XCTAssertEqual(error, .store(.accessDenied(endpoint: "memory://test", code: "InvalidAccessKeyId")))
            XCTAssertTrue(error.description.contains("check the tier credentials file"))
        }
        XCTAssertEqual(slept, [])
    }

    func testTheHashCoversExactlyOneOrderedPassOfTheUpload() throws {
        let body = bytes(10_000)
        let source = HashingSource(try FileSource(path: try file(body)))
        _ = try source.read(offset: 0, count: 4000)
        _ = try source.read(offset: 4000, count: 6000)
        XCTAssertEqual(source.digest()?.digest, XXH128Hasher.hash(body))
        XCTAssertEqual(source.digest()?.size, 10_000)
        // A second pass (a retried part) would hash bytes twice: it proves nothing.
        _ = try source.read(offset: 0, count: 10)
        XCTAssertNil(source.digest())
    }
}

/// `tier.bandwidth_mb`.
final class BandwidthTests: XCTestCase {
    func testTokenBucketKeepsTheAverageAndSavesOnlyABurst() {
        var b = TokenBucket(bytesPerSecond: 1000)
        XCTAssertEqual(b.take(1000, now: 0), 0, "a full burst at start")
        XCTAssertEqual(b.take(500, now: 0), 0.5, accuracy: 1e-9)
        // Debt is paid by time: at 0.5 s the bucket is back at zero.
        XCTAssertEqual(b.take(0, now: 0.5), 0)
        XCTAssertEqual(b.take(3000, now: 0.5), 3, accuracy: 1e-9, "a part bigger than the burst still goes, after its time")
        // Idle for an hour saves one burst, not an hour of bytes.
        XCTAssertEqual(b.take(1000, now: 3.5 + 3600), 0)
        XCTAssertEqual(b.take(1000, now: 3.5 + 3600), 1, accuracy: 1e-9)
    }

    func testUploadsArePacedPartByPart() async throws {
        let store = InMemoryObjectStore()
        let paced = Paced()
        _ = try await store.upload("k", from: BytesSource([UInt8](repeating: 1, count: 11 << 20)), options: PutOptions(),
                                   partSize: 5 << 20, pace: { await paced.add($0) })
        let sizes = await paced.sizes
        XCTAssertEqual(sizes, [5 << 20, 5 << 20, 1 << 20])
    }

    func testTheLimiterSlowsAnArchiveToTheRate() async throws {
        let store = InMemoryObjectStore()
        let body = [UInt8](repeating: 3, count: 3_000_000)
        let path = NSTemporaryDirectory() + "twinfs-bw-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Data(body).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let r = ArchiveRequest(path: "a", key: try ObjectKey(prefix: "", path: "a"), localFile: path, size: Int64(body.count),
                               xxh3: XXH128Hasher.hash(body), mtimeNs: 0, mode: 0o100644, uid: 0, gid: 0)
        // 2 MB/s with a 2 MB burst: 3 MB cannot take less than half a second.
        let archiver = Archiver(store: store, bucket: "b", retention: .off, limiter: BandwidthLimiter(bytesPerSecond: 2_000_000))
        let started = Date()
        _ = try await archiver.archive(r, now: UTCTime.now())
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 0.45)
    }
}

actor Paced {
    var sizes: [Int] = []
    func add(_ n: Int) { sizes.append(n) }
}
