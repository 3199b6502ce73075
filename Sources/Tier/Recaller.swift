import Fixity
import Glibc
import ObjectStore

public enum RecallError: Error, Sendable, Equatable, CustomStringConvertible {
    case store(ObjectStoreError)
    /// The object is not the bytes the stub promises: never served.
    case mismatch(key: String, detail: String)
    case local(path: String, reason: String)

    public var description: String {
        switch self {
        case .store(let e): return e.description
        case .mismatch(let k, let d): return "object \(k) is not the file's content (\(d)): not served"
        case .local(let p, let r): return "cannot write the recalled file \(p): \(r)"
        }
    }
}

/// Brings a tiered file's bytes back from the store into a local file, in ranged pieces so
/// memory stays at one piece, and proves them (size and XXH3-128 of the stub, which are the
/// journal's) before the caller may serve a byte. The file is written and fsynced at `path`;
/// the caller renames it into place.
public struct Recaller: Sendable {
    public let store: any ObjectStore
    public let pieceSize: Int

    public init(store: any ObjectStore, pieceSize: Int = 8 << 20) {
        self.store = store
        self.pieceSize = max(1, pieceSize)
    }

    public func recall(_ stub: TierStub, to path: String) async throws(RecallError) {
        do {
            try await fetch(stub, to: path)
        } catch {
            // Nothing half-written or unproven is left where a caller could take it for the file.
            unlink(path)
            throw error
        }
    }

    private func fetch(_ stub: TierStub, to path: String) async throws(RecallError) {
        guard let expected = XXH128Digest(hex: stub.xxh3) else {
            throw .mismatch(key: stub.key, detail: "the stub's xxh3 '\(stub.xxh3)' is not a digest")
        }
        // The version the stub names (a later overwrite in the bucket is not this file), and
        // its size first: a longer or shorter object is not the file, whatever its first bytes.
        let info: ObjectInfo
        do {
            info = try await store.headVersion(stub.key, versionId: stub.versionId)
        } catch {
            throw .store(error)
        }
        guard info.size == stub.size else {
            throw .mismatch(key: stub.key, detail: "the object is \(info.size) bytes, the file \(stub.size)")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .local(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let hasher = XXH128Hasher()
        var offset: Int64 = 0
        while offset < stub.size {
            let last = min(stub.size, offset + Int64(pieceSize)) - 1
            let piece: [UInt8]
            do {
                piece = try await store.get(stub.key, versionId: stub.versionId, range: ByteRange(first: offset, last: last)!)
            } catch {
                throw .store(error)
            }
            guard Int64(piece.count) == last - offset + 1 else {
                throw .mismatch(key: stub.key, detail: "asked for bytes \(offset)-\(last), got \(piece.count)")
            }
            hasher.update(piece)
            try write(fd, piece, at: offset, path: path)
            offset += Int64(piece.count)
        }
        let got = hasher.digest()
        guard got == expected else { throw .mismatch(key: stub.key, detail: "XXH3-128 \(got), the journal says \(expected)") }
        guard fsync(fd) == 0 else { throw .local(path: path, reason: String(cString: strerror(errno))) }
    }

    private func write(_ fd: Int32, _ bytes: [UInt8], at offset: Int64, path: String) throws(RecallError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .local(path: path, reason: String(cString: strerror(errno))) }
            done += n
        }
    }
}
