import Fixity
import Foundation
import ObjectStore
import XCTest
@testable import Tier

/// Recall: the bytes come back in pieces and are proven before anyone may serve them.
final class RecallerTests: XCTestCase {
    private func bytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    private func target() -> String {
        let path = NSTemporaryDirectory() + "twinfs-recall-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        addTeardownBlock { unlink(path) }
        return path
    }

    /// An object in the fake store and the stub that names it.
    private func stored(_ body: [UInt8], in store: InMemoryObjectStore) async throws -> TierStub {
        let put = try await store.put("pacs/a", body: body, options: PutOptions())
        return TierStub(bucket: "b", key: "pacs/a", versionId: put.versionId, size: Int64(body.count), xxh3: XXH128Hasher.hash(body), retainUntil: nil)
    }

    func testRecallInPiecesGivesTheBytesBack() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(10_007)
        let stub = try await stored(body, in: store)
        let path = target()
        try await Recaller(store: store, pieceSize: 1000).recall(stub, to: path)
        XCTAssertEqual(FileManager.default.contents(atPath: path).map(Array.init), body)
        let (gets, heads) = (await store.callCount(.get), await store.callCount(.head))
        XCTAssertEqual(gets, 11)
        XCTAssertEqual(heads, 1)
    }

    func testAChangedObjectIsNeverServedAndLeavesNoFile() async throws {
        let store = InMemoryObjectStore()
        let body = bytes(5000)
        let stub = try await stored(body, in: store)
        var other = body
        other[4000] ^= 0xFF
        await store.corrupt("pacs/a", with: other)
        let path = target()
        do {
            try await Recaller(store: store, pieceSize: 1000).recall(stub, to: path)
            XCTFail("a changed object was recalled")
        } catch {
            guard case .mismatch(let key, let detail) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "pacs/a")
            XCTAssertTrue(detail.contains("XXH3-128"), detail)
            XCTAssertTrue(error.description.contains("not served"), error.description)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))

        await store.corrupt("pacs/a", with: Array(body.prefix(4500)))
        do {
            try await Recaller(store: store, pieceSize: 1000).recall(stub, to: path)
            XCTFail("a short object was recalled")
        } catch {
            guard case .mismatch = error else { return XCTFail("\(error)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    }

    func testTheStubsVersionOrNothing() async throws {
        let store = InMemoryObjectStore()
        var stub = try await stored(bytes(100), in: store)
        stub.versionId = "another-version"
        do {
            try await Recaller(store: store).recall(stub, to: target())
            XCTFail("another version was recalled")
        } catch {
            XCTAssertEqual(error, .store(.noSuchKey(key: "pacs/a")))
        }
    }

    func testStoreDownIsARetryableStoreError() async throws {
        let store = InMemoryObjectStore()
        let stub = try await stored(bytes(100), in: store)
        await store.setUnreachable(true)
        let path = target()
        do {
            try await Recaller(store: store).recall(stub, to: path)
            XCTFail("recalled from a store that is down")
        } catch {
            guard case .store(let e) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(e.isRetryable)
            XCTAssertEqual(error.description, "object store at memory://test unreachable: connection refused")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    }
}
