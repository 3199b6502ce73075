import TwinCore
import Volume

/// The kernel's view of inodes: FUSE node id (= stable id) -> the names it is known by and its
/// lookup count. Paths are resolved by walking names up to the root, so no descriptor is kept
/// per inode: an archive of tens of millions of files never runs into the process's fd limit.
final class InodeTable: Sendable {
    struct Name: Hashable {
        var parent: UInt64
        var name: String
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
    /// every name is gone (unlinked while open).
    func path(of id: UInt64) -> String? {
        if id == StableID.root { return "" }
        return state.read { s -> String? in
            var parts: [String] = []
            var cur = id
            while cur != StableID.root {
                guard let e = s.entries[cur], let n = e.names.first, parts.count < 4096 else { return nil }
                parts.append(n.name)
                cur = n.parent
            }
            var out = ""
            for p in parts.reversed() {
                if !out.isEmpty { out += "/" }
                out += p
            }
            return out
        }
    }

    var count: Int { state.read { $0.entries.count } }
}
