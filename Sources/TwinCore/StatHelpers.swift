import Glibc

/// Stat helpers shared by every layer.
public extension stat {
    var mtimeNs: Int64 { Int64(st_mtim.tv_sec) * 1_000_000_000 + Int64(st_mtim.tv_nsec) }
    var ctimeNs: Int64 { Int64(st_ctim.tv_sec) * 1_000_000_000 + Int64(st_ctim.tv_nsec) }
    var kind: EntryKind { EntryKind(mode: st_mode) }
}
