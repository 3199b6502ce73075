/// The object key of a file: the tier's prefix followed by the file's path in the volume, so the
/// bucket mirrors the tree and a plain S3 client can restore it ("pacs/" + "STUDIES/1.2/IM1.dcm").
/// Not every brick name can be a key: S3 keys are UTF-8 of at most 1024 bytes, and control
/// characters do not survive ListObjects' XML; such files stay hot (with the reason).
public struct ObjectKey: Sendable, Equatable, Hashable, CustomStringConvertible {
    public let key: String

    public static let maximumBytes = 1024

    public enum Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        case notUTF8
        case controlCharacter
        case tooLong(bytes: Int)
        case notRelative

        public var description: String {
            switch self {
            case .notUTF8: return "its path is not UTF-8, which S3 keys must be"
            case .controlCharacter: return "its path holds a control character, which S3 listings cannot carry"
            case .tooLong(let n): return "its object key would be \(n) bytes, more than S3's \(ObjectKey.maximumBytes)"
            case .notRelative: return "its path is not a clean relative path"
            }
        }
    }

    /// The key for the relative path `path` (raw bytes from the brick) under `prefix`.
    public init(prefix: String, path: [UInt8]) throws(Refusal) {
        guard let text = String(validating: path, as: UTF8.self) else { throw .notUTF8 }
        guard !path.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { throw .controlCharacter }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard !text.isEmpty, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else { throw .notRelative }
        let key = prefix + text
        guard key.utf8.count <= Self.maximumBytes else { throw .tooLong(bytes: key.utf8.count) }
        self.key = key
    }

    public init(prefix: String, path: String) throws(Refusal) {
        try self.init(prefix: prefix, path: Array(path.utf8))
    }

    public var description: String { key }

    /// The file's path for a key under `prefix` (restore reads keys back into paths); nil for a
    /// key outside the prefix or in the tier's own area.
    public static func path(ofKey key: String, prefix: String) -> String? {
        guard key.hasPrefix(prefix) else { return nil }
        let path = String(key.dropFirst(prefix.count))
        guard !path.isEmpty, !path.hasPrefix(TierLayout.privateArea) else { return nil }
        return path
    }
}

/// Where the tier keeps its own objects in the bucket, beside the mirrored tree.
public enum TierLayout {
    /// ".twinfs/" under the prefix: the brick's `.twinfs` is hidden from the mount, so no file of
    /// the volume can have a path there and no object of the tree can collide with it.
    public static let privateArea = ".twinfs/"

    /// "pacs/.twinfs/manifest/20261207T170400Z-a-000001.jsonl": one manifest segment per batch of
    /// uploads, named by time and node so both nodes of a pair can write without overwriting.
    public static func manifestKey(prefix: String, node: String, batch: Int, at time: String) -> String {
        let n = String(batch)
        return prefix + privateArea + "manifest/\(time)-\(node)-" + String(repeating: "0", count: max(0, 6 - n.count)) + n + ".jsonl"
    }

    public static func manifestPrefix(_ prefix: String) -> String { prefix + privateArea + "manifest/" }
}
