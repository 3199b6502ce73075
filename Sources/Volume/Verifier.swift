import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import TwinCore

/// One difference between the brick and the journal.
public struct VerifyProblem: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// The bytes in the brick do not hash to the journal's XXH3-128 (or the size differs).
        case mismatch = "MISMATCH"
        /// The journal has the entry, the brick does not.
        case missing = "MISSING"
        /// The brick has the entry, the journal does not.
        case unexpected = "UNEXPECTED"
    }
    public var kind: Kind
    public var path: String
    public var detail: String
}

public struct VerifyReport: Sendable, Codable {
    public var filesChecked = 0
    public var directoriesChecked = 0
    public var bytesHashed: Int64 = 0
    /// Files being written right now (dirty in the journal): not judged.
    public var inProgress = 0
    public var problems: [VerifyProblem] = []

    enum CodingKeys: String, CodingKey {
        case problems
        case filesChecked = "files_checked"
        case directoriesChecked = "directories_checked"
        case bytesHashed = "bytes_hashed"
        case inProgress = "in_progress"
    }
}

/// Re-reads every file of the brick and compares it with the journal: content by XXH3-128,
/// namespace by name and stable id. Read-only on both sides.
public struct Verifier {
    let brick: Brick
    let journal: Journal

    public init(brick: Brick, journal: Journal) {
        self.brick = brick
        self.journal = journal
    }

    public func run(progress: ((VerifyProblem) -> Void)? = nil) throws(JournalError) -> VerifyReport {
        var report = VerifyReport()
        func problem(_ k: VerifyProblem.Kind, _ path: String, _ detail: String) {
            let p = VerifyProblem(kind: k, path: "/" + path, detail: detail)
            report.problems.append(p)
            progress?(p)
        }
        // Depth-first over directories the journal knows, comparing each with the brick.
        var stack: [(id: UInt64, path: String)] = [(StableID.root, "")]
        while let (dirID, dirPath) = stack.popLast() {
            report.directoriesChecked += 1
            var known: [String: UInt64] = [:]
            for c in try journal.children(of: dirID) { known[c.name] = c.id }
            let onDisk = Self.list(brick.absolute(dirPath)).filter { !Brick.isPrivate(parentPath: dirPath, name: $0) }
            for name in onDisk.sorted() {
                let rel = Brick.join(dirPath, name)
                guard let st = try? brick.lstat(rel) else { continue }
                guard let id = known.removeValue(forKey: name) else {
                    problem(.unexpected, rel, "in the brick but not in the journal")
                    continue
                }
                let brickID = brick.readID(rel: rel)
                if brickID != id {
                    problem(.mismatch, rel, "stable id \(brickID.map { String($0) } ?? "none") in the brick, \(id) in the journal")
                    continue
                }
                guard let rec = try journal.inode(id) else {
                    problem(.missing, rel, "journal names it but has no record of id \(id)")
                    continue
                }
                if rec.kind != EntryKind(mode: st.st_mode) {
                    problem(.mismatch, rel, "a \(EntryKind(mode: st.st_mode)) in the brick, a \(rec.kind) in the journal")
                    continue
                }
                switch EntryKind(mode: st.st_mode) {
                case .directory:
                    stack.append((id, rel))
                case .file:
                    report.filesChecked += 1
                    if rec.dirty { report.inProgress += 1; continue }
                    guard let fd = try? brick.openFile(rel, flags: O_RDONLY) else {
                        problem(.mismatch, rel, "cannot be read: \(String(cString: strerror(errno)))")
                        continue
                    }
                    defer { close(fd) }
                    guard let (digest, size) = try? XXH128Hasher.hash(fd: fd) else {
                        problem(.mismatch, rel, "read error while hashing")
                        continue
                    }
                    report.bytesHashed += size
                    let expected = rec.hash.map { XXH128Digest(bytes: $0).hex } ?? "none"
                    if size != rec.size || digest.bytes != rec.hash {
                        problem(.mismatch, rel, "xxh3-128 \(digest.hex) size \(size) in the brick, \(expected) size \(rec.size) in the journal")
                    }
                case .symlink:
                    report.filesChecked += 1
                    var buf = [UInt8](repeating: 0, count: Int(PATH_MAX))
                    let n = readlinkat(brick.rootFD, rel, &buf, buf.count)
                    let digest = XXH128Hasher.hash(Array(buf[0..<max(n, 0)]))
                    if digest.bytes != rec.hash {
                        problem(.mismatch, rel, "symlink target differs from the journal")
                    }
                case .other:
                    report.filesChecked += 1
                    if let h = rec.hash, LocalVolume.specialHash(st) != h {
                        problem(.mismatch, rel, "special file type or device number differs from the journal")
                    }
                }
            }
            for (name, _) in known.sorted(by: { $0.key < $1.key }) {
                problem(.missing, Brick.join(dirPath, name), "in the journal but not in the brick")
            }
        }
        return report
    }

    /// Names in a directory (without . and ..), empty if unreadable.
    static func list(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = dirent.name(e)
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }
}

/// Rebuilds a journal from the brick alone (principle 2): every entry keeps the stable id in
/// its xattr; entries without one get a new id. The old journal is kept as a backup.
public struct JournalRebuilder {
    public let brickPath: String
    public let journalPath: String
    public let identity: VolumeIdentity
    public let nodeOrdinal: UInt8

    public init(brickPath: String, journalPath: String, identity: VolumeIdentity, nodeOrdinal: UInt8) {
        self.brickPath = brickPath
        self.journalPath = journalPath
        self.identity = identity
        self.nodeOrdinal = nodeOrdinal
    }

    public struct Result: Sendable {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        public var bytes: Int64 = 0
        public var idsAssigned = 0
        public var backup: String?
    }

    public func run() throws(AdminError) -> Result {
        // Hold the real journal's lock for the whole rebuild: no node may run meanwhile.
        let lockFD = open(journalPath + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            if lockFD >= 0 { close(lockFD) }
            throw JournalError.locked(path: journalPath).adminError
        }
        defer { close(lockFD) }
        switch Brick.inspect(path: brickPath) {
        case .missing, .notDirectory:
            throw AdminError(problem: "brick \(brickPath) does not exist or is not a directory",
                             fix: "correct 'brick' in the config or mount the brick's disk")
        case .notWritable:
            throw AdminError(problem: "brick \(brickPath) is not writable", fix: "check its permissions and mount options")
        case .badMarker(let p):
            throw AdminError(problem: "brick marker \(p) is unreadable", fix: "inspect it by hand; TwinFS will not guess")
        case .marked(let id) where id != identity:
            throw AdminError(problem: "brick \(brickPath) belongs to \(id), not to \(identity)",
                             fix: "point 'brick' at this node's own brick")
        default:
            break
        }
        let brick = try Brick(path: brickPath)
        let tmp = journalPath + ".rebuild"
        for suffix in ["", "-wal", "-shm", ".intents"] { unlink(tmp + suffix) }
        var result = Result()
        var highWater: UInt64 = 2
        do {
            let j = try Journal(path: tmp, identity: identity, create: true)
            var closed = false
            defer { if !closed { j.close(cleanShutdown: false) } }
            var ops: [JournalOp] = []
            func flushOps() throws(JournalError) {
                if ops.count >= 2000 { try j.submit(ops, wait: .queued); ops.removeAll(keepingCapacity: true) }
            }
            func add(_ rel: String, _ st: stat, id: UInt64, parent: UInt64?, name: String) throws(AdminError) {
                var hash: [UInt8]?
                switch EntryKind(mode: st.st_mode) {
                case .file:
                    guard let fd = try? brick.openFile(rel, flags: O_RDONLY) else {
                        throw AdminError(problem: "cannot open \(brick.absolute(rel)) to hash it", fix: "check the disk (dmesg) and the file's permissions")
                    }
                    defer { close(fd) }
                    guard let (d, n) = try? XXH128Hasher.hash(fd: fd) else {
                        throw AdminError(problem: "cannot read \(brick.absolute(rel)) to hash it", fix: "check the disk (dmesg) for I/O errors")
                    }
                    hash = d.bytes
                    result.files += 1
                    result.bytes += n
                case .symlink:
                    var buf = [UInt8](repeating: 0, count: Int(PATH_MAX))
                    let n = readlinkat(brick.rootFD, rel, &buf, buf.count)
                    hash = XXH128Hasher.hash(Array(buf[0..<max(n, 0)])).bytes
                    result.symlinks += 1
                case .directory:
                    result.directories += 1
                case .other:
                    hash = LocalVolume.specialHash(st)
                }
                ops.append(.insertInode(LocalVolume.record(st, id: id, hash: hash)))
                if let p = parent { ops.append(.link(parent: p, name: name, id: id)) }
            }
            // Pass 1: the highest id counter of this node in use, so new ids never collide.
            var maxCounter: UInt64 = 1
            var scan: [String] = [""]
            while let dirRel = scan.popLast() {
                for name in Verifier.list(brick.absolute(dirRel)) where !Brick.isPrivate(parentPath: dirRel, name: name) {
                    let rel = Brick.join(dirRel, name)
                    if let id = brick.readID(rel: rel), id >> 56 == UInt64(nodeOrdinal) {
                        maxCounter = max(maxCounter, id & 0x00FF_FFFF_FFFF_FFFF)
                    }
                    if let st = try? brick.lstat(rel), EntryKind(mode: st.st_mode) == .directory { scan.append(rel) }
                }
            }
            // Pass 2: every entry, keeping its id; entries copied in without one (behind
            // TwinFS's back, or an imported directory) get fresh ids above every id in use.
            // Above every id in the brick and every id block ever reserved (ids of deleted
            // entries must not come back: a peer may still know them).
            var next = max(maxCounter, brick.readHighWater() ?? 0) + 1
            let rootSt = try brick.lstat("")
            try add("", rootSt, id: StableID.root, parent: nil, name: "")
            var stack: [(id: UInt64, rel: String)] = [(StableID.root, "")]
            while let (dirID, dirRel) = stack.popLast() {
                for name in Verifier.list(brick.absolute(dirRel)).sorted() where !Brick.isPrivate(parentPath: dirRel, name: name) {
                    let rel = Brick.join(dirRel, name)
                    guard let st = try? brick.lstat(rel) else { continue }
                    let id: UInt64
                    if let existing = brick.readID(rel: rel) {
                        id = existing
                    } else {
                        id = StableID.make(nodeOrdinal: nodeOrdinal, counter: next)
                        next += 1
                        do { try brick.writeID(rel: rel, id: id) } catch {
                            throw AdminError(problem: "cannot set the TwinFS id xattr on \(brick.absolute(rel)): \(error)",
                                             fix: "the brick's filesystem must support trusted.* xattrs (ext4, xfs) and TwinFS must run as root")
                        }
                        result.idsAssigned += 1
                    }
                    try add(rel, st, id: id, parent: dirID, name: name)
                    if EntryKind(mode: st.st_mode) == .directory { stack.append((id, rel)) }
                    try flushOps()
                }
            }
            highWater = next + 1
            ops.append(.setMeta(key: "next_id", value: "\(next + 1)"))
            ops.append(.setMeta(key: "rebuilt", value: ISO8601DateFormatter().string(from: Date())))
            try j.submit(ops, wait: .durable)
            j.close(cleanShutdown: true)
            closed = true
        } catch let e as JournalError {
            throw e.adminError
        } catch let e as AdminError {
            throw e
        } catch {
            throw AdminError(problem: "journal rebuild failed: \(error)", fix: "see the message above")
        }
        if case .marked = Brick.inspect(path: brickPath) {} else {
            try brick.writeMarker(identity)
        }
        do { try brick.writeHighWater(highWater) } catch {
            throw AdminError(problem: "cannot record the id high-water mark in \(brick.absolute(Brick.privateDir)): \(error)",
                             fix: "check that the brick is writable and not full")
        }
        // Keep the old journal: never delete metadata to "repair".
        if FileManager.default.fileExists(atPath: journalPath) {
            let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
            let backup = journalPath + ".bak-" + stamp
            for suffix in ["", "-wal", "-shm", ".intents"] where FileManager.default.fileExists(atPath: journalPath + suffix) {
                rename(journalPath + suffix, backup + suffix)
            }
            result.backup = backup
        }
        for suffix in ["-wal", "-shm", ".intents"] { unlink(tmp + suffix) }
        rename(tmp, journalPath)
        unlink(tmp + ".lock")
        return result
    }
}
