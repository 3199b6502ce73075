import AsyncHTTPClient
import Crypto
import NIOCore
import NIOHTTP1

/// Where the bucket is and how to talk to it.
public struct S3Config: Sendable, Equatable {
    /// "http://127.0.0.1:7480" (no path); requests use path-style URLs, endpoint/bucket/key.
    public var endpoint: String
    public var bucket: String
    public var region: String
    public var credentials: S3Credentials
    /// `.signed` hashes every body with SHA-256 for the signature; `.unsigned` sends
    /// UNSIGNED-PAYLOAD and relies on Content-MD5 (cheaper on large parts).
    public var payloadSigning: PayloadSigning
    public var connectTimeout: Double
    /// The most one request may take, body included.
    public var requestTimeout: Double
    /// The largest body a GET may return into memory.
    public var maxResponseBytes: Int

    public enum PayloadSigning: Sendable, Equatable { case signed, unsigned }

    public init(endpoint: String, bucket: String, region: String = "us-east-1", credentials: S3Credentials,
                payloadSigning: PayloadSigning = .signed, connectTimeout: Double = 3, requestTimeout: Double = 120,
                maxResponseBytes: Int = 1 << 30) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.payloadSigning = payloadSigning
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.maxResponseBytes = maxResponseBytes
    }

    /// "127.0.0.1:7480": the Host header, which is signed.
    var hostHeader: String {
        let noScheme = endpoint.split(separator: "://", maxSplits: 1).last.map(String.init) ?? endpoint
        return noScheme.split(separator: "/", maxSplits: 1).first.map(String.init) ?? noScheme
    }
}

/// A real S3 bucket over HTTP (AsyncHTTPClient), every request signed with SigV4.
/// Call `shutdown()` before dropping it.
public final class S3Client: ObjectStore {
    public let config: S3Config
    private let http: HTTPClient
    private let clock: @Sendable () -> UTCTime

    public init(config: S3Config, clock: @escaping @Sendable () -> UTCTime = UTCTime.now) {
        self.config = config
        self.clock = clock
        var pool = HTTPClient.Configuration.ConnectionPool(idleTimeout: .seconds(30))
        // A refused connection fails the request at once ("unreachable: connection refused"); the
        // tier retries with its own backoff, and a request must not hang until its deadline.
        pool.retryConnectionEstablishment = false
        let c = HTTPClient.Configuration(redirectConfiguration: .disallow,
                                         timeout: .init(connect: .milliseconds(Int64(config.connectTimeout * 1000)),
                                                        read: .milliseconds(Int64(config.requestTimeout * 1000))),
                                         connectionPool: pool)
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: c)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: ObjectStore

    public func put(_ key: String, body: [UInt8], options: PutOptions) async throws(ObjectStoreError) -> PutResult {
        let md5 = Insecure.MD5.hash(data: body)
        var headers = Self.putHeaders(options)
        headers.append(("content-md5", Base64.encode(Array(md5))))
        let r = try await send(.PUT, key: key, headers: headers, body: body)
        let etag = try checkETag(r, key: key, expectedMD5: Hex.encode(md5))
        return PutResult(etag: etag, versionId: r.headers.first(name: "x-amz-version-id"))
    }

    public func get(_ key: String, versionId: String?, range: ByteRange?) async throws(ObjectStoreError) -> [UInt8] {
        let headers = range.map { [("range", $0.header)] } ?? []
        let r = try await send(.GET, key: key, query: versionId.map { [("versionId", $0)] } ?? [], headers: headers)
        if let range {
            // A store that ignores Range answers 200 with the whole object: never hand that back as the range.
            guard r.status == 206, r.body.count <= range.count else {
                throw ObjectStoreError.integrity(key: key, detail: "asked for \(range.header), got HTTP \(r.status) with \(r.body.count) bytes")
            }
        }
        return r.body
    }

    /// HEAD of one version (nil: the latest).
    public func headVersion(_ key: String, versionId: String?) async throws(ObjectStoreError) -> ObjectInfo {
        let r = try await send(.HEAD, key: key, query: versionId.map { [("versionId", $0)] } ?? [])
        return try info(key: key, headers: r.headers)
    }

    public func delete(_ key: String, versionId: String?) async throws(ObjectStoreError) {
        let query = versionId.map { [("versionId", $0)] } ?? []
        do {
            _ = try await send(.DELETE, key: key, query: query)
        } catch .accessDenied(let endpoint, let code) {
            // S3 answers a delete refused by Object Lock with a plain AccessDenied; tell the two apart.
            if let retention = try? await headVersion(key, versionId: versionId).retention, retention.until > clock() {
                throw .retained(key: key)
            }
            throw .accessDenied(endpoint: endpoint, code: code)
        }
    }

    public func list(prefix: String, continuation: String?, maxKeys: Int) async throws(ObjectStoreError) -> ListPage {
        var query: [(String, String)] = [("list-type", "2"), ("prefix", prefix), ("max-keys", String(maxKeys))]
        if let continuation { query.append(("continuation-token", continuation)) }
        let r = try await send(.GET, key: nil, query: query)
        guard let page = S3XML.listPage(r.body) else { throw malformed("ListObjectsV2 answer is not a ListBucketResult") }
        return page
    }

    public func createMultipartUpload(_ key: String, options: PutOptions) async throws(ObjectStoreError) -> String {
        let r = try await send(.POST, key: key, query: [("uploads", "")], headers: Self.putHeaders(options))
        guard let id = S3XML.uploadId(r.body) else { throw malformed("no UploadId in the answer to CreateMultipartUpload") }
        return id
    }

    public func uploadPart(_ key: String, uploadId: String, number: Int, body: [UInt8]) async throws(ObjectStoreError) -> CompletedPart {
        let md5 = Insecure.MD5.hash(data: body)
        let r = try await send(.PUT, key: key, query: [("partNumber", String(number)), ("uploadId", uploadId)],
                               headers: [("content-md5", Base64.encode(Array(md5)))], body: body)
        return CompletedPart(number: number, etag: try checkETag(r, key: key, expectedMD5: Hex.encode(md5)))
    }

    public func completeMultipartUpload(_ key: String, uploadId: String, parts: [CompletedPart]) async throws(ObjectStoreError) -> PutResult {
        let r = try await send(.POST, key: key, query: [("uploadId", uploadId)],
                               headers: [("content-type", "application/xml")], body: S3XML.completeMultipart(parts))
        if let e = S3XML.error(r.body) { throw classify(status: 500, code: e.code, message: e.message, key: key) }
        guard let answered = S3XML.completedETag(r.body) else { throw malformed("CompleteMultipartUpload answer has no ETag") }
        let version = r.headers.first(name: "x-amz-version-id")
        // Ceph RGW 16 answers an empty ETag here; the object's HEAD has it.
        let etag = answered.isEmpty ? try await headVersion(key, versionId: version).etag : answered
        return PutResult(etag: etag, versionId: version)
    }

    public func putRetention(_ key: String, versionId: String?, retention: Retention) async throws(ObjectStoreError) {
        let body = S3XML.retention(retention)
        var query = [("retention", "")]
        if let versionId { query.append(("versionId", versionId)) }
        _ = try await send(.PUT, key: key, query: query,
                           headers: [("content-md5", Base64.encode(Array(Insecure.MD5.hash(data: body)))), ("content-type", "application/xml")],
                           body: body)
    }

    public func abortMultipartUpload(_ key: String, uploadId: String) async throws(ObjectStoreError) {
        _ = try await send(.DELETE, key: key, query: [("uploadId", uploadId)])
    }

    // MARK: Requests

    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    /// The headers that put an object under Object Lock and type it.
    static func putHeaders(_ o: PutOptions) -> [(String, String)] {
        var h: [(String, String)] = [("content-type", o.contentType)]
        if let r = o.retention {
            h.append(("x-amz-object-lock-mode", r.mode.rawValue))
            h.append(("x-amz-object-lock-retain-until-date", r.until.iso8601))
        }
        for (name, value) in o.metadata.sorted(by: { $0.key < $1.key }) { h.append(("x-amz-meta-\(name)", value)) }
        return h
    }

    /// The signed request for `method` on the bucket (key nil) or an object: URL, headers.
    func signedRequest(_ method: HTTPMethod, key: String?, query: [(String, String)], headers extra: [(String, String)],
                       body: [UInt8], now: UTCTime) -> (url: String, headers: [(String, String)]) {
        let path = "/" + config.bucket + (key.map { "/" + $0 } ?? "")
        let payload: PayloadHash = config.payloadSigning == .signed ? .of(body) : .unsigned
        var headers = [("host", config.hostHeader), ("x-amz-date", now.amzDate), ("x-amz-content-sha256", payload.value)]
        headers += extra
        let request = SigV4Request(method: method.rawValue, path: path, query: query.map { ($0.0, $0.1) },
                                   headers: headers.map { ($0.0, $0.1) }, payload: payload)
        let sig = SigV4.sign(request, credentials: config.credentials, scope: SigV4Scope(date: now, region: config.region))
        let q = SigV4.canonicalQuery(request.query)
        let url = config.endpoint + SigV4.encodePath(path) + (q.isEmpty ? "" : "?" + q)
        return (url, headers + [("authorization", sig.authorization)])
    }

    private func send(_ method: HTTPMethod, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [],
                      body: [UInt8] = []) async throws(ObjectStoreError) -> Response {
        let (url, signed) = signedRequest(method, key: key, query: query, headers: headers, body: body, now: clock())
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in signed { request.headers.add(name: name, value: value) }
        if method == .PUT || method == .POST { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response: Response
        do {
            let r = try await http.execute(request, timeout: .milliseconds(Int64(config.requestTimeout * 1000)))
            let limit = method == .HEAD ? 0 : config.maxResponseBytes
            var buffer = try await r.body.collect(upTo: limit)
            response = Response(status: Int(r.status.code), headers: r.headers,
                                body: buffer.readBytes(length: buffer.readableBytes) ?? [])
        } catch {
            throw transportError(error)
        }
        guard (200..<300).contains(response.status) else {
            let e = S3XML.error(response.body)
            throw classify(status: response.status, code: e?.code ?? "", message: e?.message ?? "", key: key)
        }
        return response
    }

    // MARK: Errors

    /// A failure below HTTP: no connection, a timeout, a reset.
    private func transportError(_ error: any Error) -> ObjectStoreError {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return .unreachable(endpoint: config.endpoint, reason: "connect timed out after \(config.connectTimeout) s")
            case .readTimeout, .deadlineExceeded: return .timedOut(endpoint: config.endpoint, seconds: config.requestTimeout)
            default: break
            }
        }
        if error is NIOTooManyBytesError {
            return .refused(endpoint: config.endpoint, status: 200, code: "ResponseTooLarge",
                            message: "more than \(config.maxResponseBytes) bytes")
        }
        return .unreachable(endpoint: config.endpoint, reason: Self.reason(error))
    }

    /// "connection refused" rather than NIO's type dump, when the error says so.
    static func reason(_ error: any Error) -> String {
        let text = String(describing: error)
        let known = [("ECONNREFUSED", "connection refused"), ("Connection refused", "connection refused"),
                     ("connectionRefused", "connection refused"), ("ECONNRESET", "connection reset"),
                     ("Connection reset", "connection reset"), ("EHOSTUNREACH", "no route to host"),
                     ("ENETUNREACH", "network unreachable"), ("remoteConnectionClosed", "the store closed the connection")]
        for (needle, words) in known where text.contains(needle) { return words }
        return text
    }

    func classify(status: Int, code: String, message: String, key: String?) -> ObjectStoreError {
        let e = config.endpoint
        switch (status, code) {
        case (_, "RequestTimeTooSkewed"): return .clockSkew(endpoint: e)
        case (_, "InvalidAccessKeyId"), (_, "SignatureDoesNotMatch"), (403, _): return .accessDenied(endpoint: e, code: code.isEmpty ? "HTTP 403" : code)
        case (_, "NoSuchBucket"): return .noSuchBucket(bucket: config.bucket)
        case (_, "NoSuchKey"): return .noSuchKey(key: key ?? "")
        case (404, _) where key != nil: return .noSuchKey(key: key ?? "")  // HEAD: a 404 without a body
        case (416, _), (_, "InvalidRange"): return .invalidRange(key: key ?? "", range: message)
        case (_, "BadDigest"), (_, "InvalidDigest"), (_, "XAmzContentSHA256Mismatch"):
            return .integrity(key: key ?? "", detail: "the store refused the body (\(code))")
        case (500..., _), (_, "SlowDown"), (_, "InternalError"), (_, "ServiceUnavailable"):
            return .server(endpoint: e, status: status, code: code, message: message)
        default: return .refused(endpoint: e, status: status, code: code, message: message)
        }
    }

    private func malformed(_ detail: String) -> ObjectStoreError { .malformedResponse(endpoint: config.endpoint, detail: detail) }

    /// A single-part ETag is the body's MD5: the store's own checksum, matched against ours.
    private func checkETag(_ r: Response, key: String, expectedMD5: String) throws(ObjectStoreError) -> String {
        guard let raw = r.headers.first(name: "etag") else { throw malformed("no ETag in the answer for \(key)") }
        let etag = S3XML.unquote(raw)
        guard etag.lowercased() == expectedMD5 else {
            throw ObjectStoreError.integrity(key: key, detail: "the store's ETag \(etag) is not the MD5 \(expectedMD5) of what was sent")
        }
        return etag
    }

    private func info(key: String, headers h: HTTPHeaders) throws(ObjectStoreError) -> ObjectInfo {
        guard let size = h.first(name: "content-length").flatMap({ Int64($0) }) else {
            throw malformed("HEAD \(key) has no Content-Length")
        }
        var retention: Retention?
        if let mode = h.first(name: "x-amz-object-lock-mode").flatMap(RetentionMode.init(rawValue:)),
           let until = h.first(name: "x-amz-object-lock-retain-until-date").flatMap(UTCTime.parseISO8601) {
            retention = Retention(mode: mode, until: until)
        }
        var meta: [String: String] = [:]
        for (name, value) in h where name.lowercased().hasPrefix("x-amz-meta-") {
            meta[String(name.lowercased().dropFirst("x-amz-meta-".count))] = value
        }
        return ObjectInfo(key: key, size: size, etag: S3XML.unquote(h.first(name: "etag") ?? ""),
                          lastModified: h.first(name: "last-modified").flatMap(UTCTime.parseHTTPDate),
                          versionId: h.first(name: "x-amz-version-id"), retention: retention, metadata: meta)
    }
}

/// Base64 for Content-MD5 (a 16-byte digest), without Foundation.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = bytes[i], b1 = n > 1 ? bytes[i + 1] : 0, b2 = n > 2 ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x3) << 4 | b1 >> 4)])
            out.append(n > 1 ? alphabet[Int((b1 & 0xF) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
