import CXXHash
import Glibc
import TwinCore

/// An XXH3-128 digest in canonical (big-endian) byte order, printed as 32 hex digits.
public struct XXH128Digest: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    init(_ h: XXH128_hash_t) {
        var canon = XXH128_canonical_t()
        XXH128_canonicalFromHash(&canon, h)
        self.bytes = withUnsafeBytes(of: canon.digest) { Array($0) }
    }

    public init?(hex: String) {
        guard hex.count == 32 else { return nil }
        var out = [UInt8]()
        var it = hex.makeIterator()
        while let a = it.next(), let b = it.next() {
            guard let v = UInt8(String([a, b]), radix: 16) else { return nil }
            out.append(v)
        }
        self.bytes = out
    }

    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var s = [UInt8]()
        s.reserveCapacity(32)
        for b in bytes {
            s.append(digits[Int(b >> 4)])
            s.append(digits[Int(b & 15)])
        }
        return String(decoding: s, as: UTF8.self)
    }

    public var description: String { hex }

    /// The digest of zero bytes: every new or truncated-to-zero file has it.
    public static let empty: XXH128Digest = XXH128Hasher.hash(UnsafeRawBufferPointer(start: nil, count: 0))
}

/// Streaming XXH3-128. Not thread-safe: one owner at a time (the caller holds a lock).
public final class XXH128Hasher {
    private let state: OpaquePointer

    public init() {
        state = XXH3_createState()
        XXH3_128bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    public func reset() { XXH3_128bits_reset(state) }

    public func update(_ buf: UnsafeRawBufferPointer) {
        guard buf.count > 0 else { return }
        XXH3_128bits_update(state, buf.baseAddress, buf.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public func digest() -> XXH128Digest { XXH128Digest(XXH3_128bits_digest(state)) }

    public static func hash(_ buf: UnsafeRawBufferPointer) -> XXH128Digest {
        XXH128Digest(XXH3_128bits(buf.baseAddress, buf.count))
    }

    public static func hash(_ bytes: [UInt8]) -> XXH128Digest {
        bytes.withUnsafeBytes { hash($0) }
    }

    /// Hashes an open file from offset 0 to EOF with pread (does not move the file offset).
    /// Returns the digest and the number of bytes hashed.
    public static func hash(fd: Int32, chunk: Int = 1 << 20) throws(FSError) -> (XXH128Digest, Int64) {
        let h = XXH128Hasher()
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        var off: Int64 = 0
        while true {
            let n = try sys { pread(fd, buf.baseAddress, chunk, off_t(off)) }
            if n == 0 { break }
            h.update(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
            off += Int64(n)
        }
        return (h.digest(), off)
    }
}
