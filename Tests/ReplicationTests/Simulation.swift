import BrickStore
import Fixity
import Foundation
import Glibc
import Journal
import Replication
import ReplicationTesting
import TwinCore
import Volume

/// One seeded run of the randomized test: two in-process nodes, random operations on both
/// through the `ReplicatedVolume` API (as the FUSE adapter calls it), random faults, then the
/// link restored, the pair settled, and the result checked. Returns the problems found.
final class Simulation {
    struct Settings {
        var steps = 40
        var crashes = true
        /// Partitions (false: only lost requests and replies, delays, refusing disks, crashes).
        var partitions = true
        /// How long the pair may take to owe nothing after the faults end.
        var settleTimeout: Duration = .seconds(10)
        /// Wait between steps until the pair did what it can without a client (`quiesce`);
        /// false (TWINFS_RACY=1): steps race catch-up and the healer, as clients do.
        var quiesce = true
    }

    /// A write whose close returned success, where its bytes now live (renames follow it).
    struct AckedWrite {
        var path: String
        var bytes: [UInt8]
        var step: Int
        var node: LinkSide
        /// The window it was written in, and whether the pair was apart then (see `Touch`).
        var window: Int
        var apart: Bool
        /// Paths of changes the other node made to this file's name while apart, before this
        /// write reached it: those changes may not replace it (see `supersede`).
        var contestedBy: [String] = []
        /// Tells writes apart (for `heldNow`).
        var serial: Int
        /// The file's stable id on the writer's brick when its close returned.
        var id: UInt64?
    }

    /// A directory rename that succeeded (or may have) while the pair was apart.
    struct DirRename {
        var node: LinkSide
        var window: Int
        var from: String
        var to: String
    }

    /// Paths a node changed (or may have: unknown outcome) while the pair was apart, i.e. not
    /// settled before or after the change. A window ends when the pair is seen settled at the
    /// start of a step: nothing is owed either way then, so no change before it can meet one
    /// after it. Only changes of both nodes in one window can legitimately conflict.
    struct Touch {
        var node: LinkSide
        var window: Int
        var paths: Set<String>
        /// The ids at `paths` on the node, before and after the change: a split brain names
        /// the file where one node has it, and the other may have changed it under another
        /// name (it renamed the file apart; seed 287).
        var ids: Set<UInt64>
    }

    let seed: UInt64
    let settings: Settings
    let dir: String
    var rng: SeededGenerator
    let link: InProcessLink
    let log = RunLog()
    var nodes: [SimNode] = []
    /// What happened, one line per step (printed with a failure).
    var history: [String] = []
    var acked: [AckedWrite] = []
    /// The writes the node changing names now held on its brick, with their bytes, just before
    /// (see `seen`).
    var heldNow: Set<Int> = []
    var touches: [Touch] = []
    /// The ids at the paths of the change being made, before it (see `Touch.ids`).
    var idsBefore: Set<UInt64> = []
    var dirRenames: [DirRename] = []
    var window = 0
    /// Whether the current window saw the pair apart, and the pair settled at this step's start.
    var apartInWindow = false
    var settledAtStart = true
    var step = 0
    let ctx = RequestContext(uid: 0, gid: 0, pid: 0)

    static let parents = ["", "d0", "d1", "d0/s"]
    static let dirs = ["d0", "d1", "d0/s", "d1/s"]
    static let names = ["f0", "f1", "f2"]
    /// Errors that say the operation was not applied (the name was not what this node saw).
    static let notApplied: Set<Int32> = [ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, EINVAL, EBUSY]

    init(seed: UInt64, settings: Settings, root: String) throws {
        self.seed = seed
        self.settings = settings
        rng = SeededGenerator(seed: seed)
        link = InProcessLink(seed: seed)
        dir = root + "/seed-\(seed)"
        for side in LinkSide.allCases {
            try FileManager.default.createDirectory(atPath: dir + "/\(side)", withIntermediateDirectories: true)
            nodes.append(try SimNode(side, dir: dir + "/\(side)", link: link, log: log))
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func node(_ s: LinkSide) -> SimNode { nodes[s.rawValue] }

    func note(_ line: String) { history.append("step \(step): \(line)") }

    func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &rng)] }

    /// Runs the steps, restores the link, waits for the pair to settle, and checks. Problems, if any.
    func run() throws -> [String] {
        // A populated namespace first, replicated live, so the faults meet files and directories.
        _ = settle()
        for d in ["d0", "d1", "d0/s"] { mkdir(node(.a), d) }
        for f in ["f0", "d0/f1", "d1/f2"] { writeFile(node(.b), path: f) }
        for s in 1...settings.steps {
            step = s
            beginStep()
            if chance(0.2) { fault() } else { operation() }
            if settings.quiesce { quiesce() }
            if let w = ProcessInfo.processInfo.environment["TWINFS_WATCH"] { watch(w) }
        }
        step = settings.steps + 1
        note("faults end: link restored, every node up")
        link.healAll()
        for n in nodes where !n.running { try n.restart() }
        var problems: [String] = []
        if !settle() {
            problems.append("the pair did not settle within \(settings.settleTimeout): " + nodes.map(describe).joined(separator: "; "))
        }
        for n in nodes { link.waitIdle(n.side) }
        for n in nodes { try n.journal.sync() }
        problems += try check()
        for n in nodes { n.stop(clean: true) }
        return problems
    }

    func describe(_ n: SimNode) -> String {
        let b = try? n.journal.peerBacklog()
        let awaited = ((try? n.journal.healPending(limit: 8)) ?? []).map { r in
            "\((try? n.journal.path(of: r.id)).flatMap { $0 } ?? "?") (id \(r.id), \(r.kind)\(n.volume.isSplit(r.id) ? ", split" : ""))"
        }
        return "\(n.side): \(n.volume.mode.rawValue), owes \(b.map { "\($0.ops) ops \($0.files) files" } ?? "?"), peer owes it: \(n.volume.peerOwesUs), link \(n.volume.channel.linkDescription), healer busy: \(n.healer.busy), replicas open: \(n.service.applier.openFiles) \(n.service.applier.openIDs), awaits \(awaited)"
    }

    /// Both nodes up, live, nothing owed or awaited either way.
    var pairSettled: Bool { nodes.allSatisfy { $0.settled && $0.service.applier.openFiles == 0 } }

    /// Both nodes up and live, nothing owed either way: a change made now reaches the peer
    /// before it returns, after everything the peer did. (Not `pairSettled`: a heal or a
    /// receipt still finishing does not make a change concurrent with anything.)
    var inStep: Bool {
        nodes.allSatisfy { n in
            guard n.running, n.volume.mode == .live, let b = try? n.journal.peerBacklog() else { return false }
            return b.ops == 0 && b.files == 0 && !n.volume.peerOwesUs
        }
    }

    /// A new window once the pair is seen in step after being apart.
    func beginStep() {
        idsBefore = []
        settledAtStart = inStep
        if settledAtStart && apartInWindow {
            window += 1
            apartInWindow = false
        }
    }

    /// Both nodes live with nothing owed, twice in a row (a catch-up pass may be between rows).
    func settle() -> Bool {
        let deadline = ContinuousClock.now + settings.settleTimeout
        var calm = 0
        while ContinuousClock.now < deadline {
            if pairSettled {
                calm += 1
                if calm >= 3 { return true }
            } else {
                calm = 0
                // As an admin's `twinfs heal start`: retries now what the healer would retry
                // within seconds anyway (keeps a seed short; changes no outcome).
                for n in nodes where n.running { n.healer.kick() }
            }
            if let w = ProcessInfo.processInfo.environment["TWINFS_WATCH"] { watch(w) }
            usleep(20_000)
        }
        return false
    }

    /// What the pair is doing, to tell when it stopped (see `quiesce`).
    struct Activity: Equatable {
        var nodes: [String]
        var delivered: Int
        var inFlight: Int
    }

    var activity: Activity {
        Activity(nodes: nodes.map { n in
            guard n.running else { return "down" }
            let b = try? n.journal.peerBacklog()
            return "\(n.volume.mode) \(b?.ops ?? -1) \(b?.files ?? -1) \(n.volume.peerOwesUs) \(n.healer.busy) \(n.service.applier.openFiles)"
        }, delivered: link.stats.delivered, inFlight: link.requestsInFlight)
    }

    /// After a step: waits until the pair finished what it does without a client (catch-up's
    /// replay and sends, heals, background writes, a reconnect, noticing a cut link), so the
    /// next step meets the same state on every run of the seed instead of racing those
    /// threads. Done when the pair is settled, or the link cannot carry and every node up went
    /// degraded, or nothing moved for 50 ms (a backoff, a split brain awaited), at most 2 s.
    func quiesce() {
        let deadline = ContinuousClock.now + .seconds(2)
        var last: Activity?
        var calm = 0
        while ContinuousClock.now < deadline {
            let now = activity
            if now.inFlight == 0 && !link.reconnecting {
                if pairSettled { return }
                if !link.canCarry && nodes.allSatisfy({ !$0.running || $0.volume.mode == .degraded }) { return }
            }
            calm = now == last ? calm + 1 : 0
            if calm >= 5 { return }
            last = now
            usleep(10_000)
        }
    }

    /// TWINFS_WATCH=path: after each step, what each node holds at `path` and owes (debugging).
    func watch(_ path: String) {
        let line = "watch \(path): " + nodes.map { n in
            let size = (try? readBytes(n.local.brick.absolute(path)))?.count
            let mtime = (try? n.local.brick.lstat(path))?.mtimeNs
            let b = try? n.journal.peerBacklog()
            return "\(n.side) \(n.kind(path).map { "\($0)" } ?? "none") id \(n.local.brick.readID(rel: path).map(String.init) ?? "-") \(size.map(String.init) ?? "-") bytes, mtime \(mtime.map(String.init) ?? "-"), \(n.volume.mode), owes \(b.map { "\($0.ops) ops \($0.files) files" } ?? "?")"
        }.joined(separator: "; ")
        if line != lastWatch { note(line) }
        lastWatch = line
    }

    var lastWatch = ""

    // MARK: - Faults

    func fault() {
        let up = nodes.filter(\.running)
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<30:
            guard settings.partitions else { return }
            let cut = !link.isPartitioned
            link.setPartitioned(cut)
            note(cut ? "partition" : "partition healed")
        case 30..<45:
            let side = pick(LinkSide.allCases)
            if chance(0.3) {
                link.setDiskRefusal(nil, on: side)
                note("\(side)'s disk takes changes again")
            } else {
                let e = pick([ENOSPC, EROFS, EIO])
                let rate = pick([1.0, 0.3])
                link.setDiskRefusal(e, rate: rate, on: side)
                note("\(side)'s disk refuses \(Int(rate * 100))% of changes with \(String(cString: strerror(e)))")
            }
        case 45..<60:
            let side = pick(LinkSide.allCases)
            // A client's change, not a timer's message: which one it meets must not depend on time.
            link.script(.loseReply, towards: side) { !InProcessLink.isBackground($0) }
            note("the next reply from \(side) is lost")
        case 60..<70:
            let side = pick(LinkSide.allCases)
            link.script(.dropRequest, towards: side) { !InProcessLink.isBackground($0) }
            note("the next request to \(side) is lost")
        case 70..<80:
            var r = FaultRates()
            r.delay = pick([0, 0.3, 0.8])
            r.loseReply = pick([0, 0, 0.05])
            let side = pick(LinkSide.allCases)
            link.setRates(r, towards: side)
            note("requests to \(side): \(Int(r.delay * 100))% delayed, \(Int(r.loseReply * 100))% replies lost")
        default:
            guard settings.crashes else { return }
            if let down = nodes.first(where: { !$0.running }) {
                do {
                    try down.restart()
                    note("\(down.side) restarts")
                } catch {
                    note("\(down.side) fails to restart: \(error)")
                }
            } else if up.count == 2 {
                let n = pick(up)
                n.stop(clean: false)
                note("\(n.side) crashes")
            }
        }
    }

    // MARK: - Operations

    func operation() {
        let up = nodes.filter(\.running)
        let n = pick(up)
        let roll = Int.random(in: 0..<100, using: &rng)
        switch roll {
        case 0..<40: writeFile(n, path: chance(0.5) ? file(on: n) : anyFile())
        case 40..<50: mkdir(n, pick(Self.dirs))
        case 50..<56: rmdir(n, pick(Self.dirs))
        case 56..<66: unlink(n, file(on: n))
        case 66..<80: rename(n, file(on: n), anyFile())
        case 80..<84: rename(n, pick(Self.dirs), pick(Self.dirs))
        case 84..<92: chmod(n, file(on: n))
        default: truncate(n, file(on: n))
        }
    }

    func anyFile() -> String { join(pick(Self.parents), pick(Self.names)) }

    /// Mostly a file this node has (so operations meet files), else any name.
    func file(on n: SimNode) -> String {
        let have = Self.parents.flatMap { p in Self.names.map { join(p, $0) } }.filter { n.kind($0) == .file }
        return have.isEmpty || chance(0.2) ? anyFile() : pick(have)
    }

    func join(_ p: String, _ n: String) -> String { p.isEmpty ? n : p + "/" + n }
    func split(_ path: String) -> (String, String) { ReplicatedVolume.split(path) }

    /// The outcome of one call: nil when it succeeded.
    func attempt(_ body: () throws(FSError) -> Void) -> FSError? {
        do throws(FSError) {
            try body()
            return nil
        } catch {
            return error
        }
    }

    /// Whether node `n` had write `w` when it changed its name: its own, or replicated live,
    /// or the pair settled since (unless it is in a split brain), or it holds its bytes.
    func seen(_ w: AckedWrite, by n: SimNode) -> Bool {
        // In a split brain the other node's copy is its own, whatever the windows say.
        w.node == n.side || heldNow.contains(w.serial) || (!w.apart || w.window < window) && !inSplit(w.path)
    }

    /// Before a change by `n` of `paths`: the writes beneath them `n` holds with their bytes
    /// (it received them, whatever the windows say).
    func hold(_ n: SimNode, _ paths: [String]) {
        idsBefore = ids(n, paths)
        heldNow = Set(acked.filter { w in
            paths.contains { isWithin(w.path, $0) } && (try? readBytes(n.local.brick.absolute(w.path))) == w.bytes
        }.map(\.serial))
    }

    /// A change by `n` (done, or of unknown outcome) replaces what is at `path` or beneath:
    /// the writes `n` had are forgotten. A write `n` had not seen is not replaced by it, as
    /// both changed the name apart: it must end on both bricks or in a listed split brain
    /// with its bytes kept, so it stays, contested by the change's paths.
    func supersede(_ path: String, by n: SimNode, paths: [String]) {
        acked.removeAll { isWithin($0.path, path) && seen($0, by: n) }
        for i in acked.indices where isWithin(acked[i].path, path) { acked[i].contestedBy += paths }
    }

    /// Notes the paths a change by `n` may have changed, if the pair is apart (`Touch`);
    /// whether it was apart.
    @discardableResult
    func touch(_ n: SimNode, _ paths: [String], _ err: FSError?) -> Bool {
        if let e = err, Self.notApplied.contains(e.errno) { return false }
        guard !settledAtStart || !inStep || paths.contains(where: inSplit) else { return false }
        apartInWindow = true
        // The directory a change is made in is changed too: a rename or removal of it by the
        // other node meets the change (seed 111: a wrote d0/s/f0 while b renamed d0/s and removed it).
        let parents = paths.map { ReplicatedVolume.split($0).0 }.filter { !$0.isEmpty }
        touches.append(Touch(node: n.side, window: window, paths: Set(paths), ids: idsBefore.union(ids(n, paths + parents))))
        return true
    }

    func ids(_ n: SimNode, _ paths: [String]) -> Set<UInt64> {
        Set(paths.compactMap { n.local.brick.readID(rel: $0) })
    }

    /// Whether the entry at `path` is in a split brain listed on a node: a change of it stays
    /// on the node that made it until an admin resolves it (each copy is kept as it is), so it
    /// is made apart however in step the pair is otherwise (seed 20).
    func inSplit(_ path: String) -> Bool {
        nodes.contains { n in
            guard n.running, let rows = try? n.journal.splitBrains(), !rows.isEmpty else { return false }
            let id = n.local.brick.readID(rel: path)
            return rows.contains { r in (id != nil && r.id == id) || Self.paths(of: r).contains(path) }
        }
    }

    /// A directory renamed in this window: changes noted beneath its old name are also
    /// beneath its new one (the peer may report a conflict under either).
    func alias(_ from: String, _ to: String) {
        for i in touches.indices where touches[i].window == window {
            for p in touches[i].paths where isWithin(p, from) { touches[i].paths.insert(to + p.dropFirst(from.count)) }
        }
    }

    /// `replaces`: whether the change, if it happened, may have replaced what is at `paths`.
    func record(_ n: SimNode, _ what: String, _ err: FSError?, touching paths: [String], replaces: Bool = true) {
        note("\(n.side): \(what) -> \(err.map { "\($0) (errno \($0.errno))" } ?? "ok")")
        touch(n, paths, err)
        if replaces, let e = err, !Self.notApplied.contains(e.errno) { paths.forEach { supersede($0, by: n, paths: paths) } }
    }

    /// create (or open with O_TRUNC), writes, close (flush + release): acknowledged if flush succeeded.
    func writeFile(_ n: SimNode, path: String) {
        hold(n, [path])
        let rewritten = rewrittenHere(n, path)
        let (p, name) = split(path)
        let size = chance(0.1) ? Int.random(in: 200_000...400_000, using: &rng) : Int.random(in: 0...40_000, using: &rng)
        let bytes = payload(size, seed: rng.next())
        let chunk = pick([4096, 16384, 65536])
        let backwards = chance(0.15)
        let v = n.volume
        var closed = false
        // Versions of the file that reached `n` by the time its open returned: the open pulls
        // the peer's owed copy first (or a heal's send lands just before it), so the client
        // truncates what was current on `n` then, not what `hold` saw (seed 309).
        let mark = link.commitCount
        var arrived: [(id: UInt64, xxh128: [UInt8])] = []
        let err = attempt { () throws(FSError) in
            guard let parent = n.ref(p) else { throw FSError.notFound }
            let h: UInt64
            switch n.kind(path) {
            case .file?:
                guard let id = n.local.brick.readID(rel: path) else { throw FSError.notFound }
                h = try v.open(NodeRef(id: id, path: path), flags: O_WRONLY | O_TRUNC)
                arrived = link.commits(to: n.side, since: mark).filter { $0.id == id }
            case nil:
                h = try v.create(parent: parent, name: name, mode: 0o644, flags: O_WRONLY | O_CREAT, ctx: ctx).1
            case _?:
                throw FSError(EISDIR)
            }
            var offsets = Array(stride(from: 0, to: size, by: chunk))
            if backwards { offsets.reverse() }
            do throws(FSError) {
                for off in offsets {
                    let piece = bytes[off..<min(off + chunk, size)]
                    let r = piece.withUnsafeBytes { b in
                        Result { () throws(FSError) -> Int in try v.write(handle: h, offset: Int64(off), data: b) }
                    }
                    _ = try r.get()
                }
                try v.flush(handle: h)
                closed = true
            } catch {
                try? v.release(handle: h)
                throw error
            }
            // The kernel ignores release's answer: close already returned.
            try? v.release(handle: h)
        }
        note("\(n.side): write \(path) (\(size) bytes\(backwards ? ", backwards" : "")) -> \(err.map { "\($0) (errno \($0.errno))" } ?? "ok")")
        let unknown = err.map { !Self.notApplied.contains($0.errno) || $0.errno == EISDIR && n.kind(path) == .file } ?? false
        var apart = false
        if closed || unknown {
            apart = touch(n, [path], nil)
            supersede(path, by: n, paths: [path])
            acked.removeAll { w in rewritten.contains(w.serial) || Self.reached(w, arrived) }
        }
        if closed {
            var w = AckedWrite(path: path, bytes: bytes, step: step, node: n.side, window: window, apart: apart,
                               serial: acked.count + step * 1000, id: n.local.brick.readID(rel: path))
            // Written beneath a directory the other node renamed apart: the write may end under
            // the new name (it moves with the directory's replay), on both nodes.
            for r in dirRenames where r.window == window && r.node != n.side && apart && isWithin(path, r.from) {
                w.contestedBy += [r.from, r.to]
            }
            acked.append(w)
        }
    }

    /// `bytes` after a truncate to `size`.
    static func cut(_ bytes: [UInt8], to size: Int) -> [UInt8] {
        bytes.count > size ? Array(bytes[..<size]) : bytes + [UInt8](repeating: 0, count: size - bytes.count)
    }

    /// Whether write `w`'s exact version (its file's id and its bytes) is among the commits
    /// a node accepted from its peer during a call (see `InProcessLink.commits`).
    static func reached(_ w: AckedWrite, _ arrived: [(id: UInt64, xxh128: [UInt8])]) -> Bool {
        arrived.contains { $0.id == w.id && $0.xxh128 == XXH128Hasher.hash(w.bytes).bytes }
    }

    /// The writes whose file (same id) `n` holds at `path` with their bytes: its client sees
    /// them there, whatever name the model follows them under (a rename the other node made
    /// apart moved them on `n`), so its rewrite, unlink or rename of `path` is theirs.
    func rewrittenHere(_ n: SimNode, _ path: String) -> Set<Int> {
        guard let id = n.local.brick.readID(rel: path), let have = try? readBytes(n.local.brick.absolute(path)) else { return [] }
        return Set(acked.filter { $0.id == id && $0.bytes == have }.map(\.serial))
    }

    func mkdir(_ n: SimNode, _ path: String) {
        hold(n, [path])
        let (p, name) = split(path)
        let err = attempt { () throws(FSError) in
            guard let parent = n.ref(p) else { throw FSError.notFound }
            _ = try n.volume.mkdir(parent: parent, name: name, mode: 0o755, ctx: ctx)
        }
        record(n, "mkdir \(path)", err, touching: [path])
    }

    func rmdir(_ n: SimNode, _ path: String) {
        hold(n, [path])
        let (p, name) = split(path)
        let err = attempt { () throws(FSError) in
            guard let parent = n.ref(p) else { throw FSError.notFound }
            try n.volume.rmdir(parent: parent, name: name)
        }
        record(n, "rmdir \(path)", err, touching: [path])
    }

    func unlink(_ n: SimNode, _ path: String) {
        hold(n, [path])
        let held = rewrittenHere(n, path)
        let (p, name) = split(path)
        let err = attempt { () throws(FSError) in
            guard let parent = n.ref(p) else { throw FSError.notFound }
            guard n.kind(path) != .directory else { throw FSError(EISDIR) }
            try n.volume.unlink(parent: parent, name: name)
        }
        record(n, "unlink \(path)", err, touching: [path])
        if err == nil {
            supersede(path, by: n, paths: [path])
            acked.removeAll { held.contains($0.serial) }
        }
    }

    func rename(_ n: SimNode, _ from: String, _ to: String) {
        hold(n, [from, to])
        let (moved, replaced) = (rewrittenHere(n, from), rewrittenHere(n, to))
        let (fp, fn) = split(from), (tp, tn) = split(to)
        let err = attempt { () throws(FSError) in
            guard let a = n.ref(fp), let b = n.ref(tp) else { throw FSError.notFound }
            try n.volume.rename(parent: a, name: fn, newParent: b, newName: tn, flags: 0)
        }
        record(n, "rename \(from) -> \(to)", err, touching: [from, to])
        if err.map({ !Self.notApplied.contains($0.errno) }) ?? true {
            alias(from, to)
            if Self.dirs.contains(to), !settledAtStart || !inStep { dirRenames.append(DirRename(node: n.side, window: window, from: from, to: to)) }
        }
        guard err == nil, from != to else { return }
        // The target is replaced; what was under the source is now under the target (writes
        // `n` had not seen stay where they were written, contested).
        supersede(to, by: n, paths: [from, to])
        acked.removeAll { replaced.contains($0.serial) && !moved.contains($0.serial) }
        for i in acked.indices where moved.contains(acked[i].serial) { acked[i].path = to }
        let other = node(n.side.other)
        for i in acked.indices where isWithin(acked[i].path, from) && !moved.contains(acked[i].serial) {
            let now = to + acked[i].path.dropFirst(from.count)
            if seen(acked[i], by: n) {
                acked[i].path = now
            } else {
                acked[i].contestedBy += [from, to]
                // The rename reached the node holding the write (live): its bytes are under the
                // new name there, where that node's client sees, and changes, them (seed 285:
                // its own truncate of them afterwards was taken for a change of another file).
                if other.running, (try? readBytes(other.local.brick.absolute(now))) == acked[i].bytes { acked[i].path = now }
            }
        }
    }

    func chmod(_ n: SimNode, _ path: String) {
        let mode = pick([0o600, 0o640, 0o644] as [mode_t])
        idsBefore = ids(n, [path])
        let err = attempt { () throws(FSError) in
            guard let r = n.ref(path) else { throw FSError.notFound }
            _ = try n.volume.setattr(r, handle: nil, changes: AttrChanges(mode: mode))
        }
        record(n, "chmod \(String(mode, radix: 8)) \(path)", err, touching: [path], replaces: false)
    }

    func truncate(_ n: SimNode, _ path: String) {
        hold(n, [path])
        // What `n`'s client cuts is the file `n` holds at `path`, whatever name the model
        // follows its writes under (seed 483: the other node's directory rename, replayed,
        // moved it there; seeds 714, 960: a rename `n` never saw put another file under the
        // name the model follows a write by).
        let held = rewrittenHere(n, path), here = n.local.brick.readID(rel: path)
        let size = Int.random(in: 0...50_000, using: &rng)
        // As a rewrite's open (seed 309), a truncate to a size above 0 first fetches the
        // peer's version of a file this node awaits (an incomplete replica: `prepareFile`),
        // and cuts that (seeds 664, 869). It did if that version reached `n` during the call
        // and `n` holds it cut right after (a heal landing after the cut would not be cut).
        let mark = link.commitCount
        var arrived: [(id: UInt64, xxh128: [UInt8])] = []
        var after: [UInt8]?
        let err = attempt { () throws(FSError) in
            guard let r = n.ref(path) else { throw FSError.notFound }
            guard n.kind(path) == .file else { throw FSError(EISDIR) }
            _ = try n.volume.setattr(r, handle: nil, changes: AttrChanges(size: Int64(size)))
            arrived = link.commits(to: n.side, since: mark).filter { $0.id == r.id }
            if !arrived.isEmpty { after = try? readBytes(n.local.brick.absolute(path)) }
        }
        let apart = !settledAtStart || !inStep || inSplit(path)
        record(n, "truncate \(path) to \(size)", err, touching: [path])
        guard err == nil else { return }
        func cut(_ w: AckedWrite) -> Bool {
            held.contains(w.serial) || Self.reached(w, arrived) && after == Self.cut(w.bytes, to: size)
                || w.path == path && seen(w, by: n) && (w.id == nil || w.id == here)
        }
        for i in acked.indices where acked[i].path == path && !cut(acked[i]) { acked[i].contestedBy.append(path) }
        for i in acked.indices where cut(acked[i]) {
            acked[i].path = path
            acked[i].bytes = Self.cut(acked[i].bytes, to: size)
            // Now this change of `n`'s.
            (acked[i].step, acked[i].node, acked[i].window, acked[i].apart) = (step, n.side, window, apart)
        }
    }

    // MARK: - The check

    /// The paths a split-brain row names: one path, "from -> to" for a rename, "x <-> y" for
    /// a rename exchange; none for an owed change that could not be decoded (never legitimate).
    static func paths(of row: SplitBrainRow) -> [String] {
        if row.path.hasPrefix("journal peer_ops") { return [] }
        return row.path.components(separatedBy: " <-> ").flatMap { $0.components(separatedBy: " -> ") }
    }

    /// The directories above `rel`, nearest first. A directory in split brain is kept, with
    /// everything in it, on the node whose copy it is, and listed by its id: where that copy
    /// moved since (a rename of it refused for the same split), the row's path is where it
    /// was, and what it holds is excused by the directory's id (seed 591).
    static func ancestors(of rel: String) -> [String] {
        var out: [String] = [], p = Substring(rel)
        while let slash = p.lastIndex(of: "/") { p = p[..<slash]; out.append(String(p)) }
        return out
    }

    /// Whether both nodes changed (or may have) a name related to `paths` in one window:
    /// the only way two copies can legitimately differ (issue 13: a split brain is acceptable
    /// when both sides changed the same entry apart, or the order cannot be known).
    func concurrent(_ paths: [String], id: UInt64) -> Bool {
        let related = touches.filter { t in
            t.paths.contains { p in paths.contains { isWithin(p, $0) || isWithin($0, p) } } || id != 0 && t.ids.contains(id)
        }
        return Dictionary(grouping: related, by: \.window).values.contains { Set($0.map(\.node)).count == 2 }
    }

    /// What a split-brain row's entry meets on the two bricks: the other entries under its
    /// names, and the directories above its names and above wherever its entry is now.
    struct Surroundings {
        var holders: Set<UInt64> = []
        var directories: Set<UInt64> = []
    }

    static func surroundings(of r: SplitBrainRow, in trees: [[String: Entry]]) -> Surroundings {
        var s = Surroundings()
        for t in trees {
            let names = paths(of: r)
            for p in names { if let id = t[p]?.id, id != r.id { s.holders.insert(id) } }
            let moved = r.id == 0 ? [] : t.filter { $0.value.id == r.id }.map(\.key)
            for p in names + moved { for d in ancestors(of: p) { if let id = t[d]?.id { s.directories.insert(id) } } }
        }
        return s
    }

    /// The split brains: each must be listed on both nodes and justified by the model.
    func checkSplits(_ sbA: [SplitBrainRow], _ sbB: [SplitBrainRow], around: (SplitBrainRow) -> Surroundings) -> [String] {
        var problems: [String] = []
        // Listed, or beneath a directory listed there: an entry in a node's copy of a
        // directory in split brain is part of that split (the healer's placeholder of it on
        // the other node is listed there by its own id, seed 382).
        func listed(_ r: SplitBrainRow, in rows: [SplitBrainRow]) -> Bool {
            let dirs = around(r).directories
            return rows.contains { ($0.id != 0 && ($0.id == r.id || dirs.contains($0.id))) || $0.path == r.path }
        }
        for r in sbA where !listed(r, in: sbB) { problems.append("split brain listed on a only: \(r.path) (id \(r.id)): \(r.reason)") }
        for r in sbB where !listed(r, in: sbA) { problems.append("split brain listed on b only: \(r.path) (id \(r.id)): \(r.reason)") }
        var seenKeys: Set<String> = []
        let rows = (sbA + sbB).filter { seenKeys.insert($0.key).inserted }
        // Both rules: cascades by the names an entry was seen under (`unjustified`), then by
        // what holds those names and the directories above them now (`withCascades`).
        let byNames = Set(rows.map(\.key)).subtracting(unjustified(rows).map(\.key))
        let justified = Self.withCascades(rows, direct: rows.filter { byNames.contains($0.key) }, around: around)
        for r in rows where !justified.contains(r.key) {
            problems.append("split brain though no two changes of \(r.path) were concurrent in the model (id \(r.id)): \(r.reason)")
        }
        return problems
    }

    /// The split brains neither concurrent themselves nor caused by one that is. A split
    /// brain leaves its entry under a different name on each node (each keeps its copy, and
    /// a change of the entry stays in the copy of the node that made it), so a later entry
    /// under one of those names meets the other node's copy there: a conflict of its own,
    /// whatever the windows (seed 544: b renamed f1 away while a created the target name, a
    /// split brain; f1 stayed on a, and b's new f1 could not be placed there).
    /// The names are the row's and every name the model saw its entry under (seed 814: a
    /// replaced d0/f0, its copy of an entry in split brain, by a rename; b's copy of that
    /// entry was at d0/f1, and a's rename was refused too).
    func unjustified(_ rows: [SplitBrainRow]) -> [SplitBrainRow] {
        func names(_ r: SplitBrainRow) -> [String] {
            Self.paths(of: r) + (r.id == 0 ? [] : touches.filter { $0.ids.contains(r.id) }.flatMap(\.paths))
        }
        var left = rows.filter { !concurrent(Self.paths(of: $0), id: $0.id) }
        var justified = rows.filter { r in !left.contains { $0.key == r.key } }.flatMap(names)
        while let i = left.firstIndex(where: { r in Self.paths(of: r).contains { p in justified.contains { isWithin(p, $0) || isWithin($0, p) } } }) {
            justified += names(left.remove(at: i))
        }
        return left
    }

    /// The keys of `direct` (split brains of changes both nodes made apart) and of their
    /// cascades, which the model's windows cannot see (the name was changed by one node only):
    /// - a split brain at a name one brick still holds by another entry in a justified split
    ///   brain. That entry stays under that name, as that node's copy, until an admin resolves
    ///   it (the replayed rename that would have moved it was refused, seeds 263 and 353; or
    ///   the peer's removal of it, seed 292), so the other node's create of the name, or rename
    ///   onto it, meets it there, however long after; its own entry can only be kept beside it
    ///   as a split brain too;
    /// - a split brain of an entry beneath a directory in a justified split brain: it belongs
    ///   to a node's copy of that directory, which is kept as it is (seed 382).
    static func withCascades(_ rows: [SplitBrainRow], direct: [SplitBrainRow], around: (SplitBrainRow) -> Surroundings) -> Set<String> {
        var justified = Set(direct.map(\.key))
        while true {
            let held = Set(rows.filter { justified.contains($0.key) && $0.id != 0 }.map(\.id))
            let more = rows.filter { r in
                let s = around(r)
                return !justified.contains(r.key) && !s.holders.union(s.directories).isDisjoint(with: held)
            }
            if more.isEmpty { return justified }
            justified.formUnion(more.map(\.key))
        }
    }

    func check() throws -> [String] {
        let (a, b) = (node(.a), node(.b))
        let sbA = try a.journal.splitBrains(), sbB = try b.journal.splitBrains()
        let ta = try tree(a.local), tb = try tree(b.local)
        var problems = checkSplits(sbA, sbB) { Self.surroundings(of: $0, in: [ta, tb]) }
        // Where both nodes hold an entry in split brain, their copies may differ (both kept).
        let splitIDs = Set((sbA + sbB).map(\.id).filter { $0 != 0 })
        let splitPaths = (sbA + sbB).flatMap(Self.paths)
        func excused(_ rel: String, _ ids: [UInt64?]) -> Bool {
            ids.contains { $0.map(splitIDs.contains) ?? false } || splitPaths.contains { isWithin(rel, $0) }
                || Self.ancestors(of: rel).contains { [ta[$0]?.id, tb[$0]?.id].contains { $0.map(splitIDs.contains) ?? false } }
        }
        problems += compareBricks(ta, tb, excused)
        let ja = try JournalView(a.journal), jb = try JournalView(b.journal)
        problems += compareJournals(ja, jb, excused)
        for (side, t, v) in [("a", ta, ja), ("b", tb, jb)] { problems += journalMatchesBrick(side, t, v, excused) }
        let quarantined = Set(try (a.journal.quarantine() + b.journal.quarantine()).map { hexString($0.hash) })
        problems += checkAcked(ta, tb, quarantined: quarantined) { w in
            // The file the write went to is listed by its stable id wherever it is now (seed
            // 272: its create refused apart, and moved on by the other node's directory rename
            // since, it is no longer under the name the model follows it by).
            let ids = [w.path].map { p in [a, b].map { $0.local.brick.readID(rel: p) } }.flatMap { $0 } + [w.id]
            return ([w.path] + w.contestedBy).contains { excused($0, ids) }
        }
        return problems
    }

    /// Both bricks: names, kinds, ids, modes, owners, sizes, content hashes, file mtimes.
    func compareBricks(_ ta: [String: Entry], _ tb: [String: Entry], _ excused: (String, [UInt64?]) -> Bool) -> [String] {
        var problems: [String] = []
        for rel in Set(ta.keys).union(tb.keys).sorted() {
            let x = ta[rel], y = tb[rel]
            if excused(rel, [x?.id, y?.id]) { continue }
            switch (x.map(Self.comparable), y.map(Self.comparable)) {
            case let (x?, nil): problems.append("brick: \(rel) only on a (\(x.kind), id \(x.id.map(String.init) ?? "none"))")
            case let (nil, y?): problems.append("brick: \(rel) only on b (\(y.kind), id \(y.id.map(String.init) ?? "none"))")
            case let (x?, y?) where x != y: problems.append("brick: \(rel) differs: a \(x) b \(y)")
            default: break
            }
        }
        return problems
    }

    /// A directory's size and link count follow from its entries, which are compared one by
    /// one (and may legitimately differ beneath a split brain); tmpfs sizes count bytes of names.
    static func comparable(_ e: Entry) -> Entry {
        guard e.kind == .directory else { return e }
        var e = e
        (e.size, e.nlink) = (0, 0)
        return e
    }

    /// Both journals: the same rows by path, nothing dirty.
    func compareJournals(_ ja: JournalView, _ jb: JournalView, _ excused: (String, [UInt64?]) -> Bool) -> [String] {
        var problems: [String] = []
        for rel in Set(ja.rows.keys).union(jb.rows.keys).sorted() {
            let x = ja.rows[rel], y = jb.rows[rel]
            if excused(rel, [x?.id, y?.id]) { continue }
            if x != y { problems.append("journal: \(rel) differs: a \(x.map { "\($0)" } ?? "none") b \(y.map { "\($0)" } ?? "none")") }
        }
        // A split brain's placeholder (this node never got the peer's copy) stays dirty: it is
        // awaited until an admin resolves the split, and never served meanwhile.
        for (side, v) in [("a", ja), ("b", jb)] {
            let dirty = v.dirty.filter { id in !excused(v.rows.first { $0.value.id == id }?.key ?? "", [id]) }
            if !dirty.isEmpty { problems.append("journal \(side): dirty rows left: \(dirty)") }
        }
        return problems
    }

    /// Each journal matches its own brick (what a verify would say).
    func journalMatchesBrick(_ side: String, _ t: [String: Entry], _ v: JournalView,
                             _ excused: (String, [UInt64?]) -> Bool) -> [String] {
        var problems: [String] = []
        for (rel, e) in t where e.kind == .file {
            guard let row = v.rows[rel] else { problems.append("journal \(side) has no row for \(rel)"); continue }
            // The split placeholder again: no hash until it is resolved.
            if row.hash == nil && excused(rel, [row.id]) { continue }
            if row.hash.map(hexString) != e.content { problems.append("journal \(side): \(rel) hash \(row.hash.map(hexString) ?? "none") but brick \(e.content ?? "?")") }
        }
        return problems
    }

    /// Every acknowledged write not replaced since is on both bricks with its bytes. The one
    /// exception: a write in a split brain (its path or a contesting change's path is listed)
    /// whose bytes are kept, on either brick under any name, or in a quarantine.
    func checkAcked(_ ta: [String: Entry], _ tb: [String: Entry], quarantined: Set<String>,
                    inSplit: (AckedWrite) -> Bool) -> [String] {
        func holders(_ t: [String: Entry]) -> [String: Set<String>] {
            var out: [String: Set<String>] = [:]
            for (rel, e) in t where e.kind == .file { if let c = e.content { out[c, default: []].insert(rel) } }
            return out
        }
        let (ha, hb) = (holders(ta), holders(tb))
        var problems: [String] = []
        for w in acked {
            let h = XXH128Hasher.hash(w.bytes).hex
            let (pa, pb) = (ha[h] ?? [], hb[h] ?? [])
            if pa.contains(w.path) && pb.contains(w.path) { continue }
            // Moved along with a directory the other node renamed apart: on both under one name.
            if !w.contestedBy.isEmpty && !pa.intersection(pb).isEmpty { continue }
            // Moved along with its file (same id) by the other node's rename, replayed after the
            // write: on both under one name (seed 2471: a rewrote d1/f2 while b's rename of it
            // to d0/s/f2 had not reached a yet).
            if let id = w.id, pa.intersection(pb).contains(where: { ta[$0]?.id == id && tb[$0]?.id == id }) { continue }
            let kept = !pa.isEmpty || !pb.isEmpty || quarantined.contains(h)
            if kept && inSplit(w) { continue }
            let where_ = "a: \(pa.isEmpty ? "nowhere" : pa.sorted().joined(separator: ", ")); b: \(pb.isEmpty ? "nowhere" : pb.sorted().joined(separator: ", "))"
            problems.append("acknowledged write lost: \(w.path) (\(w.bytes.count) bytes, step \(w.step) on \(w.node)"
                            + (w.contestedBy.isEmpty ? "" : ", contested by \(w.contestedBy)") + "): its bytes are on \(where_)"
                            + (kept ? " (not in a listed split brain)" : ""))
        }
        return problems
    }
}

func hexString(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
