/// The identity of a volume and of a node within it, written into the brick marker and the
/// journal so that a brick or journal can never be used by the wrong volume or node.
public struct VolumeIdentity: Sendable, Equatable, Codable, CustomStringConvertible {
    public var volume: String
    public var node: String
    public init(volume: String, node: String) {
        self.volume = volume
        self.node = node
    }
    public var description: String { "volume '\(volume)', node '\(node)'" }
}

/// Stable ids of files and directories: the same number in the journal, in the brick's
/// `trusted.twinfs.id` xattr and as the inode number the mount reports. The top byte is
/// the creating node's ordinal so that two nodes never hand out the same id.
public enum StableID {
    public static let root: UInt64 = 1
    public static func make(nodeOrdinal: UInt8, counter: UInt64) -> UInt64 {
        (UInt64(nodeOrdinal) << 56) | (counter & 0x00FF_FFFF_FFFF_FFFF)
    }
}

/// The special files a brick keeps (journal kind `other`): no bytes, only a type and, for a
/// device, its number. The journal's XXH3-128 of one is the hash of `identity`, so replication,
/// heal and verify compare them as they compare a file's bytes.
public enum SpecialFile: Sendable, Equatable {
    case fifo, socket, characterDevice, blockDevice

    public init?(mode: UInt32) {
        switch mode & 0o170000 {
        case 0o010000: self = .fifo
        case 0o140000: self = .socket
        case 0o020000: self = .characterDevice
        case 0o060000: self = .blockDevice
        default: return nil
        }
    }

    public var isDevice: Bool { self == .characterDevice || self == .blockDevice }

    /// The bytes its hash covers: the file type bits and the device number (0 unless a device),
    /// little-endian.
    public static func identity(mode: UInt32, rdev: UInt64) -> [UInt8] {
        let type = mode & 0o170000
        let dev = SpecialFile(mode: mode)?.isDevice == true ? rdev : 0
        return withUnsafeBytes(of: type.littleEndian) { Array($0) } + withUnsafeBytes(of: dev.littleEndian) { Array($0) }
    }
}

/// What kind of entry a journal row describes.
public enum EntryKind: Int, Sendable, Codable {
    case file = 1
    case directory = 2
    case symlink = 3
    case other = 4

    public init(mode: UInt32) {
        switch mode & 0o170000 {
        case 0o100000: self = .file
        case 0o040000: self = .directory
        case 0o120000: self = .symlink
        default: self = .other
        }
    }
}
