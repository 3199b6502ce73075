import Crypto
import Glibc

/// Bytes to upload, read a part at a time so a large file never sits whole in memory.
public protocol UploadSource: Sendable {
    var size: Int64 { get }
    func read(offset: Int64, count: Int) throws(ObjectStoreError) -> [UInt8]
}

public struct BytesSource: UploadSource {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var size: Int64 { Int64(bytes.count) }
    public func read(offset: Int64, count: Int) throws(ObjectStoreError) -> [UInt8] {
        Array(bytes[Int(offset)..<min(bytes.count, Int(offset) + count)])
    }
}

/// A local file read with pread. The size is taken at open; a file that shrinks meanwhile fails
/// the upload instead of storing a short object.
public final class FileSource: UploadSource {
    public let path: String
    public let size: Int64
    private let fd: Int32

    public init(path: String) throws(ObjectStoreError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .localFile(path: path, reason: String(cString: strerror(errno))) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw .localFile(path: path, reason: reason)
        }
        self.path = path
        self.fd = fd
        self.size = Int64(st.st_size)
    }

    deinit { close(fd) }

    public func read(offset: Int64, count: Int) throws(ObjectStoreError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0, errno == EINTR { continue }
            if n < 0 { throw .localFile(path: path, reason: String(cString: strerror(errno))) }
            if n == 0 { throw .localFile(path: path, reason: "the file shrank while it was uploaded") }
            done += n
        }
        return out
    }
}

/// S3's multipart limits: parts of 5 MiB at least (but the last), 10,000 parts at most.
public enum MultipartPlan {
    public static let minimumPartSize = 5 << 20
    public static let maximumParts = 10_000

    /// The part size for `size` bytes: `preferred`, grown if the object would need more than 10,000 parts.
    public static func partSize(for size: Int64, preferred: Int) -> Int {
        let p = max(preferred, minimumPartSize)
        let needed = Int((size + Int64(maximumParts) - 1) / Int64(maximumParts))
        return max(p, needed)
    }
}

extension ObjectStore {
    /// Stores `source` under `key`: one PUT up to `partSize`, else a multipart upload (each part
    /// checked against its MD5 by the store). A failed multipart upload is aborted so that no
    /// parts are left to be billed or to fill the store. `pace` is awaited with each body's size
    /// before it is sent (a bandwidth limit).
    public func upload(_ key: String, from source: some UploadSource, options: PutOptions,
                       partSize preferred: Int = 16 << 20,
                       pace: (Int) async -> Void = { _ in }) async throws(ObjectStoreError) -> PutResult {
        let partSize = MultipartPlan.partSize(for: source.size, preferred: preferred)
        if source.size <= Int64(partSize) {
            let body = try source.read(offset: 0, count: Int(source.size))
            await pace(body.count)
            return try await put(key, body: body, options: options)
        }
        let uploadId = try await createMultipartUpload(key, options: options)
        do {
            var parts: [CompletedPart] = []
            var offset: Int64 = 0
            while offset < source.size {
                let count = Int(min(Int64(partSize), source.size - offset))
                let body = try source.read(offset: offset, count: count)
                await pace(body.count)
                parts.append(try await uploadPart(key, uploadId: uploadId, number: parts.count + 1, body: body))
                offset += Int64(count)
            }
            let result = try await completeMultipartUpload(key, uploadId: uploadId, parts: parts)
            try Self.checkMultipartETag(result.etag, parts: parts, key: key)
            if let retention = options.retention {
                try await putRetention(key, versionId: result.versionId, retention: retention)
            }
            return result
        } catch {
            try? await abortMultipartUpload(key, uploadId: uploadId)
            throw error
        }
    }

    /// A multipart object's ETag is the MD5 of its parts' MD5s, "-" and the number of parts: the
    /// store's checksum of the whole, matched against the parts we sent.
    static func checkMultipartETag(_ etag: String, parts: [CompletedPart], key: String) throws(ObjectStoreError) {
        var md5s: [UInt8] = []
        for p in parts {
            guard let bytes = Hex.decode(p.etag), bytes.count == 16 else {
                throw .integrity(key: key, detail: "part \(p.number)'s ETag \(p.etag) is not an MD5")
            }
            md5s += bytes
        }
        let expected = Hex.encode(Insecure.MD5.hash(data: md5s)) + "-\(parts.count)"
        guard etag.lowercased() == expected else {
            throw .integrity(key: key, detail: "the store's ETag \(etag) is not \(expected), the MD5 of the parts sent")
        }
    }

    /// Every object under `prefix`, page by page.
    public func listAll(prefix: String, pageSize: Int = 1000) async throws(ObjectStoreError) -> [ObjectInfo] {
        var out: [ObjectInfo] = []
        var token: String?
        repeat {
            let page = try await list(prefix: prefix, continuation: token, maxKeys: pageSize)
            out += page.objects
            token = page.continuation
        } while token != nil
        return out
    }
}
