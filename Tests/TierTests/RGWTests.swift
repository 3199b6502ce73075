import Fixity
import Foundation
import Glibc
import Tier
import Volume
import XCTest
@testable import ObjectStore

/// The S3 client against a real Ceph RGW (`.ci/rgw.sh`): one private cluster for the class,
/// each test under its own key prefix. Skipped when ceph is not installed.
final class RGWTests: XCTestCase {
    nonisolated(unsafe) static var cluster: RGWCluster?
    nonisolated(unsafe) static var startError: (any Error)?

    override class func setUp() {
        super.setUp()
        do {
            cluster = try RGWCluster.start()
            if let c = cluster, c.startSeconds > 0 { print("RGWTests: private RGW at \(c.endpoint) served S3 after \(String(format: "%.1f", c.startSeconds)) s") }
        } catch {
            startError = error
        }
    }

    override class func tearDown() {
        cluster?.stop()
        cluster = nil
        super.tearDown()
    }

    private func rgw() throws -> RGWCluster {
        if let e = Self.startError { throw e }
        return try XCTUnwrap(Self.cluster)
    }

    /// A client for the test, shut down when the test ends.
    private func client(credentials: S3Credentials? = nil, signing: S3Config.PayloadSigning = .signed) throws -> S3Client {
        let c = try rgw().client(credentials: credentials, signing: signing)
        addTeardownBlock { await c.shutdown() }
        return c
    }

    /// This test's own key prefix, the same for every use within the test.
    private lazy var prefix = "t-\(name.filter { $0.isLetter || $0.isNumber })-\(UInt32.random(in: 0...UInt32.max))/"

    /// Random bytes, eight at a time (a byte at a time takes seconds per 10 MiB in a debug build).
    private func random(_ n: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        var out = [UInt8](repeating: 0, count: n)
        out.withUnsafeMutableBytes { buf in
            var i = 0
            while i < n {
                var word = g.next()
                withUnsafeBytes(of: &word) { w in for j in 0..<min(8, n - i) { buf[i + j] = w[j] } }
                i += 8
            }
        }
        return out
    }

    func testPutGetRangeHeadListDelete() async throws {
        let s3 = try client()
        let p = prefix
        let body = random(100_000)
        let put = try await s3.put(p + "a.dcm", body: body, options: PutOptions(metadata: ["xxh3": "00ff"]))
        XCTAssertEqual(put.etag.count, 32)
        let got = try await s3.get(p + "a.dcm", range: nil)
        XCTAssertEqual(got, body)
        let part = try await s3.get(p + "a.dcm", range: ByteRange(first: 99_990, last: 99_999))
        XCTAssertEqual(part, Array(body[99_990...]))
        let info = try await s3.head(p + "a.dcm")
        XCTAssertEqual(info.size, 100_000)
        XCTAssertEqual(info.etag, put.etag)
        XCTAssertEqual(info.metadata["xxh3"], "00ff")
        XCTAssertNotNil(info.lastModified)

        for i in 0..<4 { _ = try await s3.put(p + "s/\(i)", body: [UInt8(i)], options: PutOptions()) }
        let page = try await s3.list(prefix: p + "s/", continuation: nil, maxKeys: 3)
        XCTAssertEqual(page.objects.map(\.key), (0..<3).map { p + "s/\($0)" })
        XCTAssertNotNil(page.continuation)
        let all = try await s3.listAll(prefix: p, pageSize: 2)
        XCTAssertEqual(all.map(\.key), [p + "a.dcm"] + (0..<4).map { p + "s/\($0)" })
        XCTAssertEqual(all.first?.size, 100_000)

        try await s3.delete(p + "a.dcm", versionId: nil)
        do {
            _ = try await s3.get(p + "a.dcm", range: nil)
            XCTFail("deleted object still readable")
        } catch {
            XCTAssertEqual(error, .noSuchKey(key: p + "a.dcm"))
        }
    }

    func testRangeBeyondTheObjectIsInvalid() async throws {
        let s3 = try client()
        let key = prefix + "small"
        _ = try await s3.put(key, body: [1, 2, 3], options: PutOptions())
        do {
            _ = try await s3.get(key, range: ByteRange(first: 10, last: 20))
            XCTFail("range past the end served")
        } catch {
            guard case .invalidRange = error else { return XCTFail("\(error)") }
        }
    }

    func testKeysWithSpacesPlusAndUnicodeRoundTrip() async throws {
        let s3 = try client()
        let key = prefix + "Study 1.2.840/Série+1/IM 0001 ~é$&=.dcm"
        _ = try await s3.put(key, body: [42], options: PutOptions())
        let got = try await s3.get(key, range: nil)
        XCTAssertEqual(got, [42])
        let listed = try await s3.listAll(prefix: prefix)
        XCTAssertEqual(listed.map(\.key), [key])
    }

    func testMultipartUploadOfALargeObject() async throws {
        let s3 = try client(signing: .unsigned)
        let key = prefix + "big.dcm"
        let body = random(12 << 20 + 12_345)
        let result = try await s3.upload(key, from: BytesSource(body), options: PutOptions(), partSize: 5 << 20)
        XCTAssertTrue(result.etag.hasSuffix("-3"), result.etag)
        let info = try await s3.head(key)
        XCTAssertEqual(info.size, Int64(body.count))
        let got = try await s3.get(key, range: nil)
        XCTAssertEqual(got, body)
        // A range across the boundary of parts 1 and 2.
        let first = Int64(5 << 20) - 10
        let range = try await s3.get(key, range: ByteRange(first: first, last: first + 19))
        XCTAssertEqual(range, Array(body[Int(first)..<Int(first) + 20]))
    }

    func testFailedMultipartUploadIsAborted() async throws {
        let s3 = try client()
        let key = prefix + "aborted"
        /// A source that fails after the first part, as a file that shrinks under the upload.
        struct Failing: UploadSource {
            var size: Int64 { 11 << 20 }
            func read(offset: Int64, count: Int) throws(ObjectStoreError) -> [UInt8] {
                if offset > 0 { throw .localFile(path: "/x", reason: "the file shrank while it was uploaded") }
                return [UInt8](repeating: 7, count: count)
            }
        }
        do {
            _ = try await s3.upload(key, from: Failing(), options: PutOptions(), partSize: 5 << 20)
            XCTFail("upload of a failing source succeeded")
        } catch {
            XCTAssertEqual(error, .localFile(path: "/x", reason: "the file shrank while it was uploaded"))
        }
        let listed = try await s3.listAll(prefix: prefix)
        XCTAssertTrue(listed.isEmpty)
    }

    func testObjectLockComplianceRefusesDeletingTheVersion() async throws {
        let s3 = try client()
        let key = prefix + "retained.dcm"
        let until = UTCTime.now().adding(seconds: 86_400)
        let put = try await s3.put(key, body: [1, 2, 3], options: PutOptions(retention: Retention(mode: .compliance, until: until)))
        let version = try XCTUnwrap(put.versionId, "an Object Lock bucket is versioned")
        let info = try await s3.head(key)
        XCTAssertEqual(info.retention, Retention(mode: .compliance, until: until))
        do {
            try await s3.delete(key, versionId: version)
            XCTFail("a retained version was deleted")
        } catch {
            XCTAssertEqual(error, .retained(key: key))
            XCTAssertTrue(error.description.contains("retention"), error.description)
        }
        // A plain delete only adds a delete marker: the retained version is still there.
        try await s3.delete(key, versionId: nil)
        let still = try await s3.headVersion(key, versionId: version)
        XCTAssertEqual(still.size, 3)
    }

    func testMultipartUploadCarriesObjectLock() async throws {
        let s3 = try client()
        let key = prefix + "big-retained"
        let until = UTCTime.now().adding(seconds: 3600)
        let options = PutOptions(retention: Retention(mode: .governance, until: until))
        _ = try await s3.upload(key, from: BytesSource(random(6 << 20)), options: options, partSize: 5 << 20)
        let info = try await s3.head(key)
        XCTAssertEqual(info.retention, Retention(mode: .governance, until: until))
    }

    /// Principle 2 for the tier: the bucket alone, read with boto3 and xxhsum through
    /// docs/tier-restore.py, gives back the tree (bytes, mode, mtime) the manifest describes.
    func testRestoreATreeWithAPlainS3ClientFromTheManifest() async throws {
        let r = try rgw()
        let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"
        guard (try? Spawn.run([python, "-c", "import boto3"]).0) == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/xxhsum") else {
            throw XCTSkip("python3-boto3 or xxhsum missing (run .ci/install-deps)")
        }
        let s3 = try client()
        let p = prefix
        let files: [(String, [UInt8], UInt32)] = [("STUDIES/1.2.840/IM 0001.dcm", random(300_000), 0o640),
                                                   ("STUDIES/1.2.840/Série+2/IM2.dcm", random(6 << 20), 0o600),
                                                   ("other/empty-ish", [7], 0o644)]
        var entries: [ManifestEntry] = []
        for (i, (path, bytes, mode)) in files.enumerated() {
            let key = try ObjectKey(prefix: p, path: path).key
            let put = try await s3.upload(key, from: BytesSource(bytes), options: PutOptions(), partSize: 5 << 20)
            entries.append(ManifestEntry(key: key, path: path, size: Int64(bytes.count), xxh3: XXH128Hasher.hash(bytes),
                                         mtimeNs: 1_600_000_000_123_456_789 + Int64(i), mode: 0o100000 | mode,
                                         uid: getuid(), gid: getgid(), retainUntil: nil, versionId: put.versionId))
        }
        // Two segments; the later one replaces the first file's entry (as a re-upload would).
        _ = try await s3.put(TierLayout.manifestKey(prefix: p, node: "a", batch: 1, at: "20261207T170000Z"),
                             body: Manifest.encode(Array(entries.prefix(2))), options: PutOptions(contentType: "application/x-ndjson"))
        _ = try await s3.put(TierLayout.manifestKey(prefix: p, node: "b", batch: 1, at: "20261207T170100Z"),
                             body: Manifest.encode(Array(entries.suffix(2))), options: PutOptions(contentType: "application/x-ndjson"))

        let dest = NSTemporaryDirectory() + "twinfs-restore-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dest) }
        let tool = URL(fileURLWithPath: RGWCluster.script).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/tier-restore.py").path
        let (status, out) = try Spawn.run([python, tool, "--endpoint", r.endpoint, "--bucket", r.bucket, "--prefix", p,
                                           "--credentials", r.credentialsPath, "--dest", dest])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("3 of 3 files restored and verified"), out)
        for (i, (path, bytes, mode)) in files.enumerated() {
            let restored = dest + "/" + path
            XCTAssertEqual(FileManager.default.contents(atPath: restored).map(Array.init), bytes, path)
            var st = stat()
            XCTAssertEqual(stat(restored, &st), 0)
            XCTAssertEqual(UInt32(st.st_mode) & 0o7777, mode, path)
            XCTAssertEqual(Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), 1_600_000_000_123_456_789 + Int64(i), path)
        }

        // A damaged object is named and fails the restore, never written as the file.
        _ = try await s3.put(entries[2].key, body: [8], options: PutOptions())
        var stale = entries[2]
        stale.versionId = nil
        _ = try await s3.put(TierLayout.manifestKey(prefix: p, node: "b", batch: 2, at: "20261207T170200Z"),
                             body: Manifest.encode([stale]), options: PutOptions())
        let dest2 = dest + "-2"
        defer { try? FileManager.default.removeItem(atPath: dest2) }
        let (status2, out2) = try Spawn.run([python, tool, "--endpoint", r.endpoint, "--bucket", r.bucket, "--prefix", p,
                                             "--credentials", r.credentialsPath, "--dest", dest2])
        XCTAssertEqual(status2, 1, out2)
        XCTAssertTrue(out2.contains("other/empty-ish: got 1 bytes with XXH3-128"), out2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest2 + "/other/empty-ish"))
    }

    /// The Archiver against the real store: a 7 MiB file (multipart) under COMPLIANCE retention,
    /// verified by reading it back; its version cannot then be deleted.
    func testArchiveAFileUnderRetentionReadItBackAndRecallIt() async throws {
        let s3 = try client(signing: .unsigned)
        let p = prefix
        let body = random(7 << 20)
        let local = NSTemporaryDirectory() + "twinfs-rgw-archive-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Data(body).write(to: URL(fileURLWithPath: local))
        defer { unlink(local) }
        let r = ArchiveRequest(path: "S/IM1.dcm", key: try ObjectKey(prefix: p, path: "S/IM1.dcm"), localFile: local,
                               size: Int64(body.count), xxh3: XXH128Hasher.hash(body), mtimeNs: 1, mode: 0o100640, uid: 0, gid: 0)
        let archiver = Archiver(store: s3, bucket: try rgw().bucket, retention: .locked(mode: .compliance, years: 1),
                                verification: .readBack, partSize: 5 << 20)
        let a = try await archiver.archive(r, now: UTCTime.now())
        let version = try XCTUnwrap(a.stub.versionId)
        let info = try await s3.headVersion(r.key.key, versionId: version)
        XCTAssertEqual(info.retention?.mode, .compliance)
        XCTAssertEqual(info.retention?.until.iso8601, a.manifest.retainUntil)
        XCTAssertEqual(info.metadata["xxh3"], r.xxh3.hex)
        do {
            try await s3.delete(r.key.key, versionId: version)
            XCTFail("retained version deleted")
        } catch {
            XCTAssertEqual(error, .retained(key: r.key.key))
        }

        // Someone writes another object under the key: the stub's version still recalls the file.
        _ = try await s3.put(r.key.key, body: [1, 2, 3], options: PutOptions())
        let back = local + ".recalled"
        defer { unlink(back) }
        try await Recaller(store: s3, pieceSize: 3 << 20).recall(a.stub, to: back)
        XCTAssertEqual(FileManager.default.contents(atPath: back).map(Array.init), body)
        // Without the version, the latest object is not the file: refused, nothing left behind.
        var unpinned = a.stub
        unpinned.versionId = nil
        do {
            try await Recaller(store: s3).recall(unpinned, to: back)
            XCTFail("another object recalled as the file")
        } catch {
            guard case .mismatch = error else { return XCTFail("\(error)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: back))
    }

    /// One node's volume tiered into the real RGW under COMPLIANCE retention: the brick keeps
    /// stubs, getattr shows the file, a read recalls and verifies the bytes, deletion is refused
    /// by the mount and by the bucket.
    func testTierAVolumeIntoRGWAndRecallThroughTheVolume() async throws {
        let s3 = try client()
        let p = prefix
        let (dir, v, j) = try makeTierVolume(self, store: s3, pieceSize: 1 << 20)
        var files: [(String, UInt64, [UInt8])] = []
        for (i, n) in [524_288, 3 << 20 + 17].enumerated() {
            let body = random(n)
            let (st, h) = try v.create(parent: .root, name: "IM\(i).dcm", mode: 0o640, flags: O_WRONLY, ctx: .root)
            _ = try body.withUnsafeBytes { try v.write(handle: h, offset: 0, data: $0) }
            try v.release(handle: h)
            files.append(("IM\(i).dcm", UInt64(st.st_ino), body))
        }
        let archiver = Archiver(store: s3, bucket: try rgw().bucket, retention: .locked(mode: .compliance, years: 1), partSize: 5 << 20)
        let pass = TierPass(volume: v, archiver: archiver, policy: CandidatePolicy(prefix: p, qualifyAfterDays: 0, paths: []), node: "a")
        let report = try await pass.run(limit: 10, now: UTCTime.now().adding(seconds: 1))
        XCTAssertEqual(report.tiered, 2, "\(report.outcomes)")
        XCTAssertEqual(report.manifestErrors, [])
        for (name, id, body) in files {
            let onBrick = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/brick/" + name))
            XCTAssertLessThan(onBrick.count, 4096, "the brick holds the stub")
            XCTAssertEqual(try v.getattr(NodeRef(id: id, path: name), handle: nil).st_size, off_t(body.count))
            let row = try XCTUnwrap(try j.tierRow(id))
            do {
                try await s3.delete(row.key, versionId: row.versionId)
                XCTFail("the bucket deleted a retained version")
            } catch {
                XCTAssertEqual(error, .retained(key: row.key))
            }
            XCTAssertEqual(errno(of: { try v.unlink(parent: .root, name: name) }), EPERM)
            let got = try await blocking { try readAll(v, NodeRef(id: id, path: name), size: body.count) }
            XCTAssertEqual(got, body, "recalled and verified")
            XCTAssertEqual(try j.tierRow(id)?.residence, .recalled)
        }
    }

    func testWrongKeysAreAccessDenied() async throws {
        let good = try CredentialsFile.load(path: rgw().credentialsPath)
        for creds in [S3Credentials(accessKey: good.accessKey, secretKey: "wrong-secret-0123456789"),
                      S3Credentials(accessKey: "NOSUCHKEY0123456789", secretKey: good.secretKey)] {
            let s3 = try client(credentials: creds)
            do {
                _ = try await s3.head(prefix + "x")
                XCTFail("wrong keys accepted")
            } catch {
                guard case .accessDenied = error else { return XCTFail("\(error)") }
                XCTAssertTrue(error.description.contains("check the tier credentials file"), error.description)
                XCTAssertFalse(error.isRetryable)
            }
        }
    }

    func testMissingBucket() async throws {
        let r = try rgw()
        let s3 = S3Client(config: S3Config(endpoint: r.endpoint, bucket: "no-such-bucket-\(getpid())",
                                           credentials: try CredentialsFile.load(path: r.credentialsPath)))
        addTeardownBlock { await s3.shutdown() }
        do {
            _ = try await s3.list(prefix: "", continuation: nil, maxKeys: 1)
            XCTFail("listing a missing bucket succeeded")
        } catch {
            XCTAssertEqual(error, .noSuchBucket(bucket: "no-such-bucket-\(getpid())"))
        }
    }
}
