import Crypto
import Foundation
import XCTest
@testable import ObjectStore

/// The fake the tier's logic is tested against, and `upload` (single PUT or multipart, abort on
/// failure) on top of it.
final class InMemoryObjectStoreTests: XCTestCase {
    func testSmallUploadIsOnePutAndLargeIsMultipart() async throws {
        let store = InMemoryObjectStore()
        let small = [UInt8](repeating: 1, count: 1000)
        _ = try await store.upload("a", from: BytesSource(small), options: PutOptions(), partSize: 5 << 20)
        let puts = await store.callCount(.put)
        XCTAssertEqual(puts, 1)
        let big = (0..<(11 << 20)).map { UInt8(truncatingIfNeeded: $0 / 4096) }
        let r = try await store.upload("b", from: BytesSource(big), options: PutOptions(), partSize: 5 << 20)
        XCTAssertTrue(r.etag.hasSuffix("-3"), r.etag)
        let parts = await store.callCount(.uploadPart)
        XCTAssertEqual(parts, 3)
        let got = try await store.get("b", range: nil)
        XCTAssertEqual(got, big)
        let range = try await store.get("b", range: ByteRange(first: 5 << 20, last: (5 << 20) + 3))
        XCTAssertEqual(range, Array(big[(5 << 20)...(5 << 20) + 3]))
    }

    func testAFailedPartAbortsTheUpload() async throws {
        let store = InMemoryObjectStore()
        await store.failNext(.uploadPart, with: .server(endpoint: "memory://test", status: 503, code: "SlowDown", message: ""))
        do {
            _ = try await store.upload("k", from: BytesSource([UInt8](repeating: 0, count: 6 << 20)), options: PutOptions(), partSize: 5 << 20)
            XCTFail("upload succeeded through a failing part")
        } catch {
            XCTAssertTrue(error.isRetryable)
        }
        let (open, aborts, keys) = await (store.openUploads, store.callCount(.abortMultipart), store.keys)
        XCTAssertEqual(open, 0)
        XCTAssertEqual(aborts, 1)
        XCTAssertEqual(keys, [])
    }

    func testUnreachableAndInjectedFaults() async throws {
        let store = InMemoryObjectStore()
        await store.setUnreachable(true)
        do {
            _ = try await store.head("x")
            XCTFail()
        } catch {
            XCTAssertEqual(error.description, "object store at memory://test unreachable: connection refused")
        }
        await store.setUnreachable(false)
        await store.failNext(.get, count: 2, with: .timedOut(endpoint: "memory://test", seconds: 1))
        _ = try await store.put("x", body: [1], options: PutOptions())
        for _ in 0..<2 {
            do { _ = try await store.get("x", range: nil); XCTFail() } catch { XCTAssertTrue(error.isRetryable) }
        }
        let third = try await store.get("x", range: nil)
        XCTAssertEqual(third, [1])
    }

    func testRetentionRefusesDeleteAndOverwriteUntilItEnds() async throws {
        let now = ManualClock(UTCTime(seconds: 1_000_000))
        let store = InMemoryObjectStore(clock: { now.value })
        let retention = Retention(mode: .compliance, until: UTCTime(seconds: 1_000_000 + 86_400))
        _ = try await store.put("k", body: [1], options: PutOptions(retention: retention))
        for attempt in 0..<2 {
            do {
                if attempt == 0 { try await store.delete("k", versionId: nil) } else { _ = try await store.put("k", body: [2], options: PutOptions()) }
                XCTFail("retained object changed")
            } catch {
                XCTAssertEqual(error, .retained(key: "k"))
            }
        }
        now.value = UTCTime(seconds: 1_000_000 + 86_401)
        try await store.delete("k", versionId: nil)
        let keys = await store.keys
        XCTAssertEqual(keys, [])
    }

    func testMultipartUploadSetsRetentionAfterwards() async throws {
        // The fake, like Ceph RGW 16, ignores the lock headers of CreateMultipartUpload.
        let store = InMemoryObjectStore()
        let retention = Retention(mode: .compliance, until: UTCTime.now().adding(seconds: 3600))
        _ = try await store.upload("k", from: BytesSource([UInt8](repeating: 1, count: 6 << 20)),
                                   options: PutOptions(retention: retention), partSize: 5 << 20)
        let info = try await store.head("k")
        XCTAssertEqual(info.retention, retention)
        do {
            try await store.delete("k", versionId: info.versionId)
            XCTFail("retained multipart object deleted")
        } catch {
            XCTAssertEqual(error, .retained(key: "k"))
        }
    }

    func testMultipartETagMustBeTheMD5OfThePartMD5s() throws {
        let parts = [CompletedPart(number: 1, etag: "0cc175b9c0f1b6a831c399e269772661"),   // md5("a")
                     CompletedPart(number: 2, etag: "92eb5ffee6ae2fec3ad71c777531578f")]   // md5("b")
        // md5(md5("a") + md5("b")) - 2, as S3 and Ceph compute it.
        let whole = Hex.encode(Insecure.MD5.hash(data: Hex.decode(parts[0].etag)! + Hex.decode(parts[1].etag)!)) + "-2"
        XCTAssertNoThrow(try InMemoryObjectStore.checkMultipartETag(whole, parts: parts, key: "k"))
        XCTAssertNoThrow(try InMemoryObjectStore.checkMultipartETag(whole.uppercased(), parts: parts, key: "k"))
        XCTAssertThrowsError(try InMemoryObjectStore.checkMultipartETag("d41d8cd98f00b204e9800998ecf8427e-2", parts: parts, key: "k")) {
            guard case .integrity = $0 as! ObjectStoreError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try InMemoryObjectStore.checkMultipartETag(whole, parts: [CompletedPart(number: 1, etag: "zz")], key: "k"))
    }

    func testListPages() async throws {
        let store = InMemoryObjectStore()
        for k in ["p/c", "p/a", "q/x", "p/b"] { _ = try await store.put(k, body: [], options: PutOptions()) }
        let all = try await store.listAll(prefix: "p/", pageSize: 2)
        XCTAssertEqual(all.map(\.key), ["p/a", "p/b", "p/c"])
        let calls = await store.callCount(.list)
        XCTAssertEqual(calls, 2)
    }
}

/// A clock the test moves by hand.
final class ManualClock: @unchecked Sendable {
    private let lock = NSLock()
    private var now: UTCTime
    init(_ now: UTCTime) { self.now = now }
    var value: UTCTime {
        get { lock.lock(); defer { lock.unlock() }; return now }
        set { lock.lock(); now = newValue; lock.unlock() }
    }
}
