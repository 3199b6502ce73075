import Foundation
import TwinCore
import XCTest
@testable import ObjectStore

/// The S3 client's parts that need no store: errors, XML, request shape, credentials file; and
/// the in-memory store with the upload logic on top of it.
final class ObjectStoreTests: XCTestCase {
    let creds = S3Credentials(accessKey: "AK", secretKey: "SK")

    private func freeLoopbackPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    func testNothingListeningIsUnreachableInOneLine() async throws {
        let endpoint = "http://127.0.0.1:\(freeLoopbackPort())"
        let s3 = S3Client(config: S3Config(endpoint: endpoint, bucket: "b", credentials: creds, connectTimeout: 1, requestTimeout: 5))
        addTeardownBlock { await s3.shutdown() }
        let started = Date()
        do {
            _ = try await s3.head("k")
            XCTFail("head succeeded with nothing listening")
        } catch {
            XCTAssertEqual(error.description, "object store at \(endpoint) unreachable: connection refused")
            XCTAssertTrue(error.isRetryable)
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 6)
    }

    func testSignedRequestShape() {
        let s3 = S3Client(config: S3Config(endpoint: "http://127.0.0.1:7480/", bucket: "tier", credentials: creds, payloadSigning: .unsigned),
                          clock: { UTCTime(seconds: 1_369_353_600) })
        defer { Task { await s3.shutdown() } }
        let r = s3.signedRequest(.PUT, key: "pacs/Study 1/IM+1.dcm", query: [("uploadId", "a/b"), ("partNumber", "2")],
                                 headers: [("content-md5", "xyz")], body: [1], now: UTCTime(seconds: 1_369_353_600))
        XCTAssertEqual(r.url, "http://127.0.0.1:7480/tier/pacs/Study%201/IM%2B1.dcm?partNumber=2&uploadId=a%2Fb")
        let h = Dictionary(r.headers, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(h["host"], "127.0.0.1:7480")
        XCTAssertEqual(h["x-amz-date"], "20130524T000000Z")
        XCTAssertEqual(h["x-amz-content-sha256"], "UNSIGNED-PAYLOAD")
        XCTAssertTrue(h["authorization"]!.contains("SignedHeaders=content-md5;host;x-amz-content-sha256;x-amz-date,"), h["authorization"]!)
    }

    func testObjectLockAndMetadataHeaders() {
        let until = UTCTime.parseISO8601("2056-12-07T17:00:00Z")!
        let h = S3Client.putHeaders(PutOptions(retention: Retention(mode: .compliance, until: until), metadata: ["xxh3": "ab"]))
        XCTAssertTrue(h.contains { $0 == ("x-amz-object-lock-mode", "COMPLIANCE") })
        XCTAssertTrue(h.contains { $0 == ("x-amz-object-lock-retain-until-date", "2056-12-07T17:00:00Z") })
        XCTAssertTrue(h.contains { $0 == ("x-amz-meta-xxh3", "ab") })
    }

    func testErrorsAdminsUnderstand() {
        let s3 = S3Client(config: S3Config(endpoint: "http://127.0.0.1:7480", bucket: "tier", credentials: creds))
        defer { Task { await s3.shutdown() } }
        XCTAssertEqual(s3.classify(status: 403, code: "SignatureDoesNotMatch", message: "", key: "k"),
                       .accessDenied(endpoint: "http://127.0.0.1:7480", code: "SignatureDoesNotMatch"))
        XCTAssertEqual(s3.classify(status: 403, code: "RequestTimeTooSkewed", message: "", key: "k"), .clockSkew(endpoint: "http://127.0.0.1:7480"))
        XCTAssertEqual(s3.classify(status: 404, code: "", message: "", key: "k"), .noSuchKey(key: "k"))
        XCTAssertEqual(s3.classify(status: 404, code: "NoSuchBucket", message: "", key: nil), .noSuchBucket(bucket: "tier"))
        XCTAssertTrue(s3.classify(status: 503, code: "SlowDown", message: "", key: "k").isRetryable)
        XCTAssertFalse(s3.classify(status: 400, code: "InvalidArgument", message: "x", key: "k").isRetryable)
        let denied = ObjectStoreError.accessDenied(endpoint: "http://127.0.0.1:7480", code: "InvalidAccessKeyId")
        XCTAssertTrue(denied.description.hasPrefix("access denied"), denied.description)
        XCTAssertTrue(denied.description.contains("check the tier credentials file"))
        XCTAssertEqual(S3Client.reason(NSError(domain: "x", code: 1, userInfo: [NSLocalizedDescriptionKey: "connect(): Connection refused (errno: 111)"])),
                       "connection refused")
    }

    func testXMLAnswers() {
        let list = Array("""
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>tier</Name><Prefix>p/</Prefix>
            <KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
            <NextContinuationToken>tok&amp;1</NextContinuationToken>
            <Contents><Key>p/a &amp; b.dcm</Key><LastModified>2026-12-07T17:04:00.123Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>10</Size></Contents>
            <Contents><Key>p/c</Key><LastModified>2026-12-07T17:04:01.000Z</LastModified><ETag>"def-2"</ETag><Size>20</Size></Contents>
            </ListBucketResult>
            """.utf8)
        let page = S3XML.listPage(list)
        XCTAssertEqual(page?.objects.map(\.key), ["p/a & b.dcm", "p/c"])
        XCTAssertEqual(page?.objects.map(\.etag), ["abc", "def-2"])
        XCTAssertEqual(page?.objects.map(\.size), [10, 20])
        XCTAssertEqual(page?.continuation, "tok&1")
        XCTAssertEqual(page?.objects.first?.lastModified, UTCTime.parseISO8601("2026-12-07T17:04:00Z"))
        XCTAssertNil(S3XML.listPage(Array("<Error><Code>x</Code></Error>".utf8)))
        XCTAssertNil(S3XML.listPage(Array("not xml".utf8)))
        let e = S3XML.error(Array("<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>".utf8))
        XCTAssertEqual(e?.code, "NoSuchKey")
        XCTAssertEqual(e?.message, "gone")
        XCTAssertEqual(S3XML.uploadId(Array("<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>2~abc</UploadId></InitiateMultipartUploadResult>".utf8)), "2~abc")
        let complete = String(decoding: S3XML.completeMultipart([CompletedPart(number: 2, etag: "b"), CompletedPart(number: 1, etag: "a")]), as: UTF8.self)
        XCTAssertTrue(complete.contains("<Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag></Part><Part><PartNumber>2</PartNumber>"), complete)
    }

    func testBase64MatchesFoundation() {
        for n in 0..<20 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            XCTAssertEqual(Base64.encode(bytes), Data(bytes).base64EncodedString())
        }
    }

    func testMultipartPartSize() {
        XCTAssertEqual(MultipartPlan.partSize(for: 100, preferred: 1), 5 << 20)
        XCTAssertEqual(MultipartPlan.partSize(for: 1 << 30, preferred: 16 << 20), 16 << 20)
        // 1 TiB in at most 10,000 parts.
        let tib: Int64 = 1 << 40
        let p = MultipartPlan.partSize(for: tib, preferred: 16 << 20)
        XCTAssertLessThanOrEqual((tib + Int64(p) - 1) / Int64(p), 10_000)
    }

    // MARK: Credentials file

    private func tempFile(_ text: String, mode: mode_t) throws -> String {
        let path = NSTemporaryDirectory() + "twinfs-creds-\(UUID().uuidString)"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, mode)
        addTeardownBlock { unlink(path) }
        return path
    }

    func testCredentialsFileFormats() throws {
        XCTAssertEqual(try CredentialsFile.parse("[default]\naws_access_key_id = AK1\naws_secret_access_key=SK/1+x\n"),
                       S3Credentials(accessKey: "AK1", secretKey: "SK/1+x"))
        XCTAssertEqual(try CredentialsFile.parse("# keys\r\n[tier]\r\naws_access_key_id=A\r\naws_secret_access_key = S\r\n"),
                       S3Credentials(accessKey: "A", secretKey: "S"))
        XCTAssertEqual(try CredentialsFile.parse("[other]\naws_access_key_id=X\naws_secret_access_key=Y\n[default]\naws_access_key_id=A\naws_secret_access_key=S"),
                       S3Credentials(accessKey: "A", secretKey: "S"))
        for bad in ["", "[default]\naws_access_key_id = A\n", "[a]\naws_access_key_id=A\naws_secret_access_key=S\n[b]\naws_access_key_id=B\naws_secret_access_key=S",
                    "[default\naws_access_key_id=A", "just words"] {
            XCTAssertThrowsError(try CredentialsFile.parse(bad), bad) { e in
                let a = e as! AdminError
                XCTAssertFalse(a.description.contains("\n"), a.description)
                XCTAssertTrue(a.fix.contains("chmod 600"), a.description)
            }
        }
    }

    func testCredentialsFileModeRules() throws {
        let text = "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n"
        XCTAssertEqual(try CredentialsFile.load(path: try tempFile(text, mode: 0o600)), S3Credentials(accessKey: "AK", secretKey: "SK"))
        let open = try tempFile(text, mode: 0o644)
        XCTAssertThrowsError(try CredentialsFile.load(path: open)) { e in
            let a = e as! AdminError
            XCTAssertTrue(a.problem.contains("tier credentials file \(open) is readable or writable by every user (mode 644)"), a.description)
            XCTAssertTrue(a.fix.contains("chmod 600 \(open)"), a.description)
        }
        XCTAssertThrowsError(try CredentialsFile.load(path: NSTemporaryDirectory())) { e in
            XCTAssertTrue((e as! AdminError).problem.contains("not a regular file"))
        }
        XCTAssertThrowsError(try CredentialsFile.load(path: "/nonexistent/creds")) { e in
            XCTAssertTrue((e as! AdminError).problem.contains("cannot read tier credentials file /nonexistent/creds"))
        }
    }
}
