import Glibc

/// Stat helpers shared by every layer.
public extension stat {
    var mtimeNs: Int64 { Int64(st_mtim.tv_sec) * 1_000_000_000 + Int64(st_mtim.tv_nsec) }
    var ctimeNs: Int64 { Int64(st_ctim.tv_sec) * 1_000_000_000 + Int64(st_ctim.tv_nsec) }
    var kind: EntryKind { EntryKind(mode: st_mode) }
}

public extension dirent {
    /// The entry's name, read where readdir(3) left it. A record is only as long as its name,
    /// so copying the whole 256-byte `d_name` field (as `withUnsafeBytes(of:)` would) reads
    /// past the record and can fault when readdir's buffer ends a mapping.
    static func name(_ entry: UnsafePointer<dirent>) -> String {
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        return String(cString: (UnsafeRawPointer(entry) + offset).assumingMemoryBound(to: CChar.self))
    }
}
