import Crypto

/// An object store in memory, for testing the layers above S3 without a network. It keeps one
/// version per key and behaves like a WORM bucket for retained keys (delete and overwrite are
/// refused with `.retained` until the retain-until date of its clock). Faults are injected per
/// operation: the next N calls fail with a chosen error, or every call while `isUnreachable`.
public actor InMemoryObjectStore: ObjectStore {
    public enum Operation: Sendable, Hashable, CaseIterable {
        case put, get, head, delete, list, createMultipart, uploadPart, completeMultipart, abortMultipart, putRetention
    }

    private struct Stored {
        var bytes: [UInt8]
        var info: ObjectInfo
    }

    private struct Upload {
        var key: String
        var options: PutOptions
        var parts: [Int: [UInt8]] = [:]
    }

    public let endpoint: String
    private var objects: [String: Stored] = [:]
    private var uploads: [String: Upload] = [:]
    private var faults: [Operation: [ObjectStoreError]] = [:]
    private var unreachable = false
    private var nextVersion = 1
    private var calls: [Operation: Int] = [:]
    private let clock: @Sendable () -> UTCTime

    public init(endpoint: String = "memory://test", clock: @escaping @Sendable () -> UTCTime = UTCTime.now) {
        self.endpoint = endpoint
        self.clock = clock
    }

    // MARK: Faults and inspection

    /// The next `count` calls of `operation` fail with `error`, before touching any object.
    public func failNext(_ operation: Operation, count: Int = 1, with error: ObjectStoreError) {
        faults[operation, default: []] += Array(repeating: error, count: count)
    }

    /// While set, every call fails with `.unreachable` ("connection refused").
    public func setUnreachable(_ value: Bool) { unreachable = value }

    public func callCount(_ operation: Operation) -> Int { calls[operation] ?? 0 }
    public var keys: [String] { objects.keys.sorted() }
    public var openUploads: Int { uploads.count }

    private func enter(_ op: Operation) throws(ObjectStoreError) {
        calls[op, default: 0] += 1
        if unreachable { throw .unreachable(endpoint: endpoint, reason: "connection refused") }
        if var queue = faults[op], !queue.isEmpty {
            let e = queue.removeFirst()
            faults[op] = queue
            throw e
        }
    }

    private func refuseIfRetained(_ key: String) throws(ObjectStoreError) {
        if let r = objects[key]?.info.retention, r.until > clock() { throw .retained(key: key) }
    }

    private func store(_ key: String, _ bytes: [UInt8], _ options: PutOptions, etag: String) -> PutResult {
        let version = "v\(nextVersion)"
        nextVersion += 1
        let info = ObjectInfo(key: key, size: Int64(bytes.count), etag: etag, lastModified: clock(), versionId: version,
                              retention: options.retention, metadata: options.metadata)
        objects[key] = Stored(bytes: bytes, info: info)
        return PutResult(etag: etag, versionId: version)
    }

    // MARK: ObjectStore

    public func put(_ key: String, body: [UInt8], options: PutOptions) async throws(ObjectStoreError) -> PutResult {
        try enter(.put)
        try refuseIfRetained(key)
        return store(key, body, options, etag: Hex.encode(Insecure.MD5.hash(data: body)))
    }

    /// One version per key: asking for another version than the stored one finds nothing.
    private func stored(_ key: String, _ versionId: String?) throws(ObjectStoreError) -> Stored {
        guard let o = objects[key], versionId == nil || versionId == o.info.versionId else { throw .noSuchKey(key: key) }
        return o
    }

    public func get(_ key: String, versionId: String?, range: ByteRange?) async throws(ObjectStoreError) -> [UInt8] {
        try enter(.get)
        let o = try stored(key, versionId)
        guard let range else { return o.bytes }
        guard range.first < Int64(o.bytes.count) else { throw .invalidRange(key: key, range: range.header) }
        let end = min(range.last, Int64(o.bytes.count) - 1)
        return Array(o.bytes[Int(range.first)...Int(end)])
    }

    public func headVersion(_ key: String, versionId: String?) async throws(ObjectStoreError) -> ObjectInfo {
        try enter(.head)
        return try stored(key, versionId).info
    }

    /// Replaces an object's bytes behind the tier's back, keeping its version (tests of what
    /// must never be served: a store that lost or changed data).
    public func corrupt(_ key: String, with bytes: [UInt8]) {
        objects[key]?.bytes = bytes
    }

    public func delete(_ key: String, versionId: String?) async throws(ObjectStoreError) {
        try enter(.delete)
        try refuseIfRetained(key)
        objects[key] = nil
    }

    public func list(prefix: String, continuation: String?, maxKeys: Int) async throws(ObjectStoreError) -> ListPage {
        try enter(.list)
        // The continuation token is the last key of the previous page, as S3's StartAfter.
        let all = objects.keys.filter { key in key.hasPrefix(prefix) && continuation.map { key > $0 } ?? true }.sorted()
        let page = all.prefix(max(1, maxKeys))
        let info = page.map { objects[$0]!.info }
        return ListPage(objects: info, continuation: all.count > page.count ? page.last : nil)
    }

    public func createMultipartUpload(_ key: String, options: PutOptions) async throws(ObjectStoreError) -> String {
        try enter(.createMultipart)
        let id = "upload-\(nextVersion)"
        nextVersion += 1
        // As Ceph RGW 16: the retention of CreateMultipartUpload is not applied (putRetention is).
        var kept = options
        kept.retention = nil
        uploads[id] = Upload(key: key, options: kept)
        return id
    }

    public func uploadPart(_ key: String, uploadId: String, number: Int, body: [UInt8]) async throws(ObjectStoreError) -> CompletedPart {
        try enter(.uploadPart)
        guard uploads[uploadId]?.key == key else { throw .refused(endpoint: endpoint, status: 404, code: "NoSuchUpload", message: uploadId) }
        guard (1...10_000).contains(number) else { throw .refused(endpoint: endpoint, status: 400, code: "InvalidArgument", message: "part \(number)") }
        uploads[uploadId]!.parts[number] = body
        return CompletedPart(number: number, etag: Hex.encode(Insecure.MD5.hash(data: body)))
    }

    public func completeMultipartUpload(_ key: String, uploadId: String, parts: [CompletedPart]) async throws(ObjectStoreError) -> PutResult {
        try enter(.completeMultipart)
        guard let up = uploads[uploadId], up.key == key else {
            throw .refused(endpoint: endpoint, status: 404, code: "NoSuchUpload", message: uploadId)
        }
        var bytes: [UInt8] = []
        var md5s: [UInt8] = []
        for p in parts.sorted(by: { $0.number < $1.number }) {
            guard let body = up.parts[p.number], Hex.encode(Insecure.MD5.hash(data: body)) == p.etag else {
                throw .refused(endpoint: endpoint, status: 400, code: "InvalidPart", message: "part \(p.number)")
            }
            bytes += body
            md5s += Array(Insecure.MD5.hash(data: body))
        }
        try refuseIfRetained(key)
        uploads[uploadId] = nil
        return store(key, bytes, up.options, etag: Hex.encode(Insecure.MD5.hash(data: md5s)) + "-\(parts.count)")
    }

    public func abortMultipartUpload(_ key: String, uploadId: String) async throws(ObjectStoreError) {
        try enter(.abortMultipart)
        uploads[uploadId] = nil
    }

    /// Like S3: a retention can be set or lengthened, never shortened or dropped before it ends.
    public func putRetention(_ key: String, versionId: String?, retention: Retention) async throws(ObjectStoreError) {
        try enter(.putRetention)
        guard let o = objects[key] else { throw .noSuchKey(key: key) }
        if let old = o.info.retention, old.until > clock(), retention.until < old.until || retention.mode != old.mode {
            throw .retained(key: key)
        }
        objects[key]!.info.retention = retention
    }
}
