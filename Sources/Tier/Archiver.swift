import Fixity
import Foundation
import ObjectStore
import TwinConfig
import TwinCore

/// One file to move to the store, with what the journal says it holds.
public struct ArchiveRequest: Sendable, Equatable {
    public var path: String
    public var key: ObjectKey
    /// Where to read the bytes (the brick's file).
    public var localFile: String
    public var size: Int64
    public var xxh3: XXH128Digest
    public var mtimeNs: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32

    public init(path: String, key: ObjectKey, localFile: String, size: Int64, xxh3: XXH128Digest, mtimeNs: Int64,
                mode: UInt32, uid: UInt32, gid: UInt32) {
        self.path = path
        self.key = key
        self.localFile = localFile
        self.size = size
        self.xxh3 = xxh3
        self.mtimeNs = mtimeNs
        self.mode = mode
        self.uid = uid
        self.gid = gid
    }
}

/// An object in the store that holds exactly the file's bytes: its manifest line and its stub.
public struct Archived: Sendable, Equatable {
    public var manifest: ManifestEntry
    public var stub: TierStub
}

public enum ArchiveError: Error, Sendable, Equatable, CustomStringConvertible {
    case store(ObjectStoreError)
    /// The file is not what the journal says (changed, or bit rot): nothing was uploaded.
    case notAsJournaled(path: String, detail: String)
    /// The bytes uploaded are not the journal's (the file changed during the upload, or the
    /// read-back differs): the object must not be used; it may be retained, but no stub names it.
    case verificationFailed(path: String, key: String, detail: String)

    public var description: String {
        switch self {
        case .store(let e): return e.description
        case .notAsJournaled(let p, let d): return "\(p) stays on the disks: it is not what the journal records (\(d))"
        case .verificationFailed(let p, let k, let d): return "\(p) stays on the disks: object \(k) failed verification (\(d))"
        }
    }
}

/// Uploads one file and proves the store holds exactly its bytes before anyone may remove them
/// from a brick. The proof is the store's own checksum matched against ours (the MD5 of every
/// part, which S3 checks on arrival and answers as the ETag, over bytes whose XXH3-128 is the
/// journal's) or, with `.readBack`, the object read back and hashed.
public struct Archiver: Sendable {
    public enum Verification: Sendable, Equatable { case storeChecksum, readBack }

    public let store: any ObjectStore
    public let bucket: String
    public let retention: TierConfig.Retention
    public let verification: Verification
    public let partSize: Int
    /// `tier.bandwidth_mb`, shared by the node's uploads; nil: no limit.
    public let limiter: BandwidthLimiter?

    public init(store: any ObjectStore, bucket: String, retention: TierConfig.Retention,
                verification: Verification = .storeChecksum, partSize: Int = 16 << 20, limiter: BandwidthLimiter? = nil) {
        self.store = store
        self.bucket = bucket
        self.retention = retention
        self.verification = verification
        self.partSize = partSize
        self.limiter = limiter
    }

    public func archive(_ r: ArchiveRequest, now: UTCTime) async throws(ArchiveError) -> Archived {
        // First the file against the journal: a changed file is never uploaded (under a
        // retention it could not be removed again).
        let source: HashingSource
        do {
            source = HashingSource(try FileSource(path: r.localFile))
        } catch {
            throw .notAsJournaled(path: r.path, detail: error.description)
        }
        guard source.size == r.size else { throw .notAsJournaled(path: r.path, detail: "\(source.size) bytes, the journal says \(r.size)") }
        let before = try hashFile(r)
        guard before == r.xxh3 else { throw .notAsJournaled(path: r.path, detail: "XXH3-128 \(before), the journal says \(r.xxh3)") }

        let lock = lockFor(now)
        let options = PutOptions(retention: lock, metadata: ["xxh3": r.xxh3.hex])
        let put: PutResult
        do {
            let limiter = self.limiter
            put = try await store.upload(r.key.key, from: source, options: options, partSize: partSize,
                                         pace: { bytes in await limiter?.pace(bytes) })
        } catch {
            throw .store(error)
        }
        try await verify(r, uploaded: source.digest())
        let manifest = ManifestEntry(key: r.key.key, path: r.path, size: r.size, xxh3: r.xxh3, mtimeNs: r.mtimeNs, mode: r.mode,
                                     uid: r.uid, gid: r.gid, retainUntil: lock?.until, versionId: put.versionId)
        let stub = TierStub(bucket: bucket, key: r.key.key, versionId: put.versionId, size: r.size, xxh3: r.xxh3, retainUntil: lock?.until)
        return Archived(manifest: manifest, stub: stub)
    }

    /// Object Lock until whole years from now, or none.
    func lockFor(_ now: UTCTime) -> Retention? {
        switch retention {
        case .off: return nil
        case .locked(let mode, let years):
            return Retention(mode: mode == .compliance ? .compliance : .governance, until: now.addingYears(years))
        }
    }

    private func hashFile(_ r: ArchiveRequest) throws(ArchiveError) -> XXH128Digest {
        let fd = open(r.localFile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .notAsJournaled(path: r.path, detail: String(cString: strerror(errno))) }
        defer { close(fd) }
        do {
            return try XXH128Hasher.hash(fd: fd).0
        } catch {
            throw .notAsJournaled(path: r.path, detail: "\(error)")
        }
    }

    private func verify(_ r: ArchiveRequest, uploaded: (digest: XXH128Digest, size: Int64)?) async throws(ArchiveError) {
        // What was read for the upload (and checked by the store against its MD5) must be the journal's bytes.
        guard let uploaded else {
            throw .verificationFailed(path: r.path, key: r.key.key, detail: "the upload read the file more than once")
        }
        guard uploaded.digest == r.xxh3, uploaded.size == r.size else {
            throw .verificationFailed(path: r.path, key: r.key.key,
                                      detail: "the bytes uploaded hash to \(uploaded.digest) (\(uploaded.size) bytes): the file changed during the upload")
        }
        guard verification == .readBack else { return }
        let back: [UInt8]
        do {
            back = try await store.get(r.key.key, range: nil)
        } catch {
            throw .store(error)
        }
        let digest = XXH128Hasher.hash(back)
        guard digest == r.xxh3, Int64(back.count) == r.size else {
            throw .verificationFailed(path: r.path, key: r.key.key, detail: "read back \(back.count) bytes hashing to \(digest)")
        }
    }
}

/// Hashes what an upload reads, in order, so the bytes sent are the bytes proven.
final class HashingSource: UploadSource, @unchecked Sendable {
    private let inner: FileSource
    private let lock = NSLock()
    private let hasher = XXH128Hasher()
    private var next: Int64 = 0
    private var sequential = true

    init(_ inner: FileSource) { self.inner = inner }

    var size: Int64 { inner.size }

    func read(offset: Int64, count: Int) throws(ObjectStoreError) -> [UInt8] {
        let bytes = try inner.read(offset: offset, count: count)
        lock.lock()
        defer { lock.unlock() }
        if offset == next {
            hasher.update(bytes)
            next += Int64(bytes.count)
        } else {
            sequential = false
        }
        return bytes
    }

    /// The hash and length of everything read; nil if the reads were not one ordered pass
    /// (a part read twice), which proves nothing.
    func digest() -> (digest: XXH128Digest, size: Int64)? {
        lock.lock()
        defer { lock.unlock() }
        return sequential ? (hasher.digest(), next) : nil
    }
}

extension RetrySchedule {
    /// Runs `op` until it succeeds, fails with an error retrying cannot help, or the attempts run
    /// out; `sleep` waits between attempts (injected so tests need not wait).
    public func run<T>(sleep: (Double) async -> Void, random: () -> Double = { Double.random(in: 0..<1) },
                       _ op: () async throws(ArchiveError) -> T) async throws(ArchiveError) -> T {
        var attempt = 1
        while true {
            do {
                return try await op()
            } catch {
                guard case .store(let e) = error, case .retry(let seconds) = decide(after: attempt, error: e, random: random()) else {
                    throw error
                }
                await sleep(seconds)
                attempt += 1
            }
        }
    }
}
