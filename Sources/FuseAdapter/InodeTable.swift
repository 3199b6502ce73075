import Glibc
import TwinCore
import Volume

/// The kernel's view of inodes: FUSE node id (= stable id) -> the names it is known by and its
/// lookup count. Paths are resolved by walking names up to the root, so no descriptor is kept
/// per inode: an archive of tens of millions of files never runs into the process's fd limit.
final class InodeTable: Sendable {
    /// A name as the bytes on disk: Swift's String equality treats canonically equivalent
    /// Unicode (NFC "é" vs NFD "e\u{301}") as equal, but ext4 holds them as two files.
    struct Name: Hashable {
        var parent: UInt64
        var bytes: [UInt8]
        init(parent: UInt64, name: String) {
            self.parent = parent
            bytes = Array(name.utf8)
        }
        var name: String { String(decoding: bytes, as: UTF8.self) }
    }

    struct Entry {
        var names: [Name]
        var lookups: UInt64
    }

    struct State {
        var entries: [UInt64: Entry] = [StableID.root: Entry(names: [], lookups: 1)]
        var byName: [Name: UInt64] = [:]

        mutating func detach(_ key: Name) {
            guard let old = byName.removeValue(forKey: key) else { return }
            entries[old]?.names.removeAll { $0 == key }
        }

        mutating func attach(_ id: UInt64, _ key: Name) {
            if let other = byName[key], other == id { return }
            detach(key)
            byName[key] = id
            entries[id, default: Entry(names: [], lookups: 0)].names.append(key)
        }
    }

    private let state = RWLocked(State())

    /// The kernel got a reference to `id` under `parent/name` (lookup, create, readdirplus...).
    func remember(_ id: UInt64, parent: UInt64, name: String) {
        state.write { s in
            s.attach(id, Name(parent: parent, name: name))
            s.entries[id]!.lookups += 1
        }
    }

    func forget(_ id: UInt64, count: UInt64) {
        guard id != StableID.root else { return }
        state.write { s in
            guard var e = s.entries[id] else { return }
            e.lookups = e.lookups > count ? e.lookups - count : 0
            if e.lookups == 0 {
                for n in e.names where s.byName[n] == id { s.byName[n] = nil }
                s.entries[id] = nil
            } else {
                s.entries[id] = e
            }
        }
    }

    func removeName(parent: UInt64, name: String) {
        state.write { s in s.detach(Name(parent: parent, name: name)) }
    }

    func addName(_ id: UInt64, parent: UInt64, name: String) {
        state.write { s in s.attach(id, Name(parent: parent, name: name)) }
    }

    func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, exchange: Bool) {
        state.write { s in
            let from = Name(parent: parent, name: name)
            let to = Name(parent: newParent, name: newName)
            let a = s.byName[from]
            let b = s.byName[to]
            s.detach(from)
            s.detach(to)
            if let a { s.attach(a, to) }
            if exchange, let b { s.attach(b, from) }
        }
    }

    /// The brick-relative path of `id`, or nil when the kernel references an inode whose
    /// every name is gone (unlinked while open). A hard-linked inode is reached through
    /// whichever of its names still leads to the root.
    func path(of id: UInt64) -> String? {
        if id == StableID.root { return "" }
        return state.read { s -> String? in
            func walk(_ id: UInt64, depth: Int) -> [UInt8]? {
                if id == StableID.root { return [] }
                guard depth < 4096, let e = s.entries[id] else { return nil }
                for n in e.names {
                    if var prefix = walk(n.parent, depth: depth + 1) {
                        if !prefix.isEmpty { prefix.append(UInt8(ascii: "/")) }
                        prefix.append(contentsOf: n.bytes)
                        return prefix
                    }
                }
                return nil
            }
            return walk(id, depth: 0).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    var count: Int { state.read { $0.entries.count } }
}

/// The adapter's namespace lock: shared by every request that resolves a path, exclusive for
/// the local step of removals and renames; writer-preferring, so renames do not starve under a
/// stream of reads.
typealias NamespaceLock = WriterPreferringLock
