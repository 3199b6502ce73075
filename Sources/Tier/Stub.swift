import Fixity
import Foundation
import ObjectStore

/// What stands in the brick for a tiered file: a short text file saying where the content is,
/// plus the xattr `trusted.twinfs.tier` holding the same record as JSON.
///
/// Why a text file and not an empty one: a tool reading the brick without TwinFS (cp, rsync, a
/// backup, a DICOM reader) would take an empty or sparse file for a truncated or zeroed image;
/// the text is not DICOM (no "DICM" at byte 128), is not the recorded size or hash, and tells
/// whoever opens it which object holds the bytes. Why the xattr too: only root can set
/// `trusted.*` and the mount hides `trusted.twinfs.*`, so a user cannot forge a stub by writing
/// the same text; TwinFS trusts a stub only when the xattr is there and the content is exactly
/// the text rendered from it (see docs/ARCHITECTURE.md, "The archive tier").
public struct TierStub: Sendable, Equatable, Codable {
    public static let xattrName = "trusted.twinfs.tier"
    public static let magic = "TWINFS TIERED FILE v1\n"
    /// Larger than any stub can be (a key is at most 1024 bytes); a bigger file is never one.
    public static let maximumBytes = 4096

    public var bucket: String
    public var key: String
    public var versionId: String?
    public var size: Int64
    public var xxh3: String
    public var retainUntil: String?

    enum CodingKeys: String, CodingKey {
        case bucket, key, size, xxh3
        case versionId = "version_id"
        case retainUntil = "retain_until"
        case format = "v"
    }

    public init(bucket: String, key: String, versionId: String?, size: Int64, xxh3: XXH128Digest, retainUntil: UTCTime?) {
        self.bucket = bucket
        self.key = key
        self.versionId = versionId
        self.size = size
        self.xxh3 = xxh3.hex
        self.retainUntil = retainUntil?.iso8601
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let format = try c.decode(Int.self, forKey: .format)
        guard format == 1 else {
            throw DecodingError.dataCorruptedError(forKey: .format, in: c, debugDescription: "stub format \(format) is not 1")
        }
        bucket = try c.decode(String.self, forKey: .bucket)
        key = try c.decode(String.self, forKey: .key)
        versionId = try c.decodeIfPresent(String.self, forKey: .versionId)
        size = try c.decode(Int64.self, forKey: .size)
        xxh3 = try c.decode(String.self, forKey: .xxh3)
        retainUntil = try c.decodeIfPresent(String.self, forKey: .retainUntil)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(1, forKey: .format)
        try c.encode(bucket, forKey: .bucket)
        try c.encode(key, forKey: .key)
        try c.encodeIfPresent(versionId, forKey: .versionId)
        try c.encode(size, forKey: .size)
        try c.encode(xxh3, forKey: .xxh3)
        try c.encodeIfPresent(retainUntil, forKey: .retainUntil)
    }

    /// The xattr's value: compact JSON, keys sorted.
    public var xattrValue: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(self))
    }

    /// The stub file's content: the magic line, a sentence for whoever opens it, and the record.
    public var content: [UInt8] {
        var s = Self.magic
        s += "The content of this file is not here: TwinFS moved it to an S3 object store.\n"
        s += "Read it through the TwinFS mount, or get the object below with any S3 client.\n"
        s += "bucket: \(bucket)\n"
        s += "key: \(key)\n"
        if let versionId { s += "version_id: \(versionId)\n" }
        s += "size: \(size)\n"
        s += "xxh3-128: \(xxh3)\n"
        if let retainUntil { s += "retain_until: \(retainUntil)\n" }
        return Array(s.utf8)
    }
}

/// What a regular file in the brick is, for the tier.
public enum StubState: Sendable, Equatable {
    /// No tier xattr: the file holds its own content (whatever the text in it says).
    case content
    case stub(TierStub)
    /// A tier xattr, but it is unreadable or the content is not its stub text: someone changed
    /// the brick behind TwinFS. Neither content to serve nor a stub to recall onto blindly;
    /// heal and scrub report it.
    case damaged(reason: String)
}

extension TierStub {
    /// Classifies a file from its `trusted.twinfs.tier` value (nil: none) and its size, reading
    /// the content only when it may be a stub.
    public static func recognise(xattr: [UInt8]?, size: Int64, content: () throws -> [UInt8]) rethrows -> StubState {
        guard let xattr else { return .content }
        guard let stub = try? JSONDecoder().decode(TierStub.self, from: Data(xattr)), XXH128Digest(hex: stub.xxh3) != nil else {
            return .damaged(reason: "its \(xattrName) xattr is not a stub record")
        }
        let expected = stub.content
        guard size == Int64(expected.count) else {
            return .damaged(reason: "it is \(size) bytes, its stub text \(expected.count)")
        }
        guard try content() == expected else { return .damaged(reason: "its content is not the stub text of its \(xattrName) xattr") }
        return .stub(stub)
    }
}
