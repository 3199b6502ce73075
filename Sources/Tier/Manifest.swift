import Fixity
import Foundation
import ObjectStore

/// One line of the manifest: what an object of the tier holds and where it belongs, enough to
/// restore the tree with a plain S3 client (path, size, owner, mode, mtime) and to verify every
/// byte (XXH3-128, as `xxhsum -H2` prints it).
public struct ManifestEntry: Sendable, Equatable, Codable {
    public var key: String
    public var path: String
    public var size: Int64
    /// XXH3-128 in canonical (big-endian) hex.
    public var xxh3: String
    public var mtimeNs: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Object Lock's retain-until date ("2056-12-07T17:04:00Z"), nil without retention.
    public var retainUntil: String?
    /// The object's version (an Object Lock bucket is versioned): the one this entry describes.
    public var versionId: String?

    enum CodingKeys: String, CodingKey {
        case key, path, size, xxh3, mode, uid, gid
        case mtimeNs = "mtime_ns"
        case retainUntil = "retain_until"
        case versionId = "version_id"
    }

    public init(key: String, path: String, size: Int64, xxh3: XXH128Digest, mtimeNs: Int64, mode: UInt32, uid: UInt32,
                gid: UInt32, retainUntil: UTCTime?, versionId: String?) {
        self.key = key
        self.path = path
        self.size = size
        self.xxh3 = xxh3.hex
        self.mtimeNs = mtimeNs
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.retainUntil = retainUntil?.iso8601
        self.versionId = versionId
    }

    public var digest: XXH128Digest? { XXH128Digest(hex: xxh3) }
}

/// The manifest: JSON lines, one `ManifestEntry` each, keys sorted, no other whitespace; a
/// format `jq`, Python or a shell loop reads without TwinFS. Written in segments under
/// `TierLayout.manifestPrefix`; a later line for the same key replaces an earlier one.
public enum Manifest {
    public enum DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        case badLine(number: Int, detail: String)

        public var description: String {
            switch self {
            case .badLine(let n, let d): return "manifest line \(n) is not an entry: \(d)"
            }
        }
    }

    public static func encode(_ entries: [ManifestEntry]) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var out: [UInt8] = []
        for e in entries {
            // Encoding a struct of strings and integers cannot fail.
            out += try! encoder.encode(e)
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }

    /// Every entry, in order; empty lines are skipped, anything else that is not an entry is an
    /// error naming its line (a damaged manifest is reported, never half-read silently).
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> [ManifestEntry] {
        let decoder = JSONDecoder()
        var out: [ManifestEntry] = []
        for (i, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let entry: ManifestEntry
            do {
                entry = try decoder.decode(ManifestEntry.self, from: Data(line))
            } catch {
                throw .badLine(number: i + 1, detail: Self.reason(error))
            }
            guard entry.digest != nil else { throw .badLine(number: i + 1, detail: "xxh3 '\(entry.xxh3)' is not 32 hex digits") }
            guard entry.size >= 0 else { throw .badLine(number: i + 1, detail: "negative size") }
            out.append(entry)
        }
        return out
    }

    /// The latest entry of every key across segments read in order.
    public static func latest(_ segments: [[ManifestEntry]]) -> [String: ManifestEntry] {
        var out: [String: ManifestEntry] = [:]
        for segment in segments { for e in segment { out[e.key] = e } }
        return out
    }

    private static func reason(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "wrong type at \"\(c.codingPath.map(\.stringValue).joined(separator: "."))\""
        case DecodingError.dataCorrupted: return "not JSON"
        default: return "\(error)"
        }
    }
}
