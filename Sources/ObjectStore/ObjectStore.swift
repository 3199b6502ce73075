/// S3 Object Lock retention modes. COMPLIANCE cannot be shortened or removed by anyone before it
/// ends; GOVERNANCE can be by a user with the bypass permission.
public enum RetentionMode: String, Sendable, Equatable, CaseIterable {
    case compliance = "COMPLIANCE"
    case governance = "GOVERNANCE"
}

/// An Object Lock retention: the mode and the moment it ends.
public struct Retention: Sendable, Equatable {
    public var mode: RetentionMode
    public var until: UTCTime

    public init(mode: RetentionMode, until: UTCTime) {
        self.mode = mode
        self.until = until
    }
}

/// What a PUT (or the start of a multipart upload) carries besides the bytes.
public struct PutOptions: Sendable, Equatable {
    public var retention: Retention?
    public var contentType: String
    /// `x-amz-meta-*` headers (names without the prefix, lowercase).
    public var metadata: [String: String]

    public init(retention: Retention? = nil, contentType: String = "application/octet-stream",
                metadata: [String: String] = [:]) {
        self.retention = retention
        self.contentType = contentType
        self.metadata = metadata
    }
}

/// What the store says about a stored object.
public struct ObjectInfo: Sendable, Equatable {
    public var key: String
    public var size: Int64
    /// The ETag without quotes: the MD5 hex of a single-PUT object, "md5-of-md5s-N" of a multipart one.
    public var etag: String
    public var lastModified: UTCTime?
    public var versionId: String?
    public var retention: Retention?
    public var metadata: [String: String]

    public init(key: String, size: Int64, etag: String, lastModified: UTCTime? = nil, versionId: String? = nil,
                retention: Retention? = nil, metadata: [String: String] = [:]) {
        self.key = key
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
        self.versionId = versionId
        self.retention = retention
        self.metadata = metadata
    }
}

/// The answer to a PUT or to a completed multipart upload.
public struct PutResult: Sendable, Equatable {
    public var etag: String
    public var versionId: String?

    public init(etag: String, versionId: String? = nil) {
        self.etag = etag
        self.versionId = versionId
    }
}

/// One page of ListObjectsV2.
public struct ListPage: Sendable, Equatable {
    public var objects: [ObjectInfo]
    /// The token for the next page; nil on the last page.
    public var continuation: String?

    public init(objects: [ObjectInfo], continuation: String?) {
        self.objects = objects
        self.continuation = continuation
    }
}

/// A byte range of an object, both ends included, as in HTTP's `Range: bytes=first-last`.
public struct ByteRange: Sendable, Equatable {
    public let first: Int64
    public let last: Int64

    public init?(first: Int64, last: Int64) {
        guard first >= 0, last >= first else { return nil }
        self.first = first
        self.last = last
    }

    public var count: Int64 { last - first + 1 }
    public var header: String { "bytes=\(first)-\(last)" }
}

/// A part already uploaded in a multipart upload.
public struct CompletedPart: Sendable, Equatable {
    public var number: Int
    public var etag: String

    public init(number: Int, etag: String) {
        self.number = number
        self.etag = etag
    }
}

/// An S3 bucket as the tier uses it. Keys are plain strings ("prefix/path/of/file"), never
/// percent-encoded by the caller. Every call fails only with `ObjectStoreError`.
///
/// Implemented by `S3Client` (real S3 over HTTP) and `InMemoryObjectStore` (tests, with
/// injectable faults), so the tier's logic above is tested without a network.
public protocol ObjectStore: Sendable {
    /// Stores `body` under `key` in one request; the store checks it against its MD5.
    func put(_ key: String, body: [UInt8], options: PutOptions) async throws(ObjectStoreError) -> PutResult
    /// The bytes of a version of the object (nil: the latest), or those of `range`.
    func get(_ key: String, versionId: String?, range: ByteRange?) async throws(ObjectStoreError) -> [UInt8]
    /// What the store says about a version of the object (nil: the latest).
    func headVersion(_ key: String, versionId: String?) async throws(ObjectStoreError) -> ObjectInfo
    /// Removes the key (on a versioned bucket: adds a delete marker, or removes `versionId`).
    func delete(_ key: String, versionId: String?) async throws(ObjectStoreError)
    func list(prefix: String, continuation: String?, maxKeys: Int) async throws(ObjectStoreError) -> ListPage

    func createMultipartUpload(_ key: String, options: PutOptions) async throws(ObjectStoreError) -> String
    func uploadPart(_ key: String, uploadId: String, number: Int, body: [UInt8]) async throws(ObjectStoreError) -> CompletedPart
    func completeMultipartUpload(_ key: String, uploadId: String, parts: [CompletedPart]) async throws(ObjectStoreError) -> PutResult
    func abortMultipartUpload(_ key: String, uploadId: String) async throws(ObjectStoreError)
    /// Sets Object Lock retention on an existing version (PutObjectRetention). Needed after a
    /// multipart upload: Ceph RGW 16 ignores the lock headers of CreateMultipartUpload.
    func putRetention(_ key: String, versionId: String?, retention: Retention) async throws(ObjectStoreError)
}

extension ObjectStore {
    /// The latest version's bytes, or those of `range`.
    public func get(_ key: String, range: ByteRange?) async throws(ObjectStoreError) -> [UInt8] {
        try await get(key, versionId: nil, range: range)
    }

    public func head(_ key: String) async throws(ObjectStoreError) -> ObjectInfo {
        try await headVersion(key, versionId: nil)
    }
}
