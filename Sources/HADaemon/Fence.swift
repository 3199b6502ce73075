import CHAShims
import Glibc
import Logging
import TwinCore

/// The daemon's side of the fence (CHAShims `twin_fence_spawn`): a child process that deletes
/// the public addresses from this kernel as soon as the daemon stops renewing its hold, killed
/// with -9 (the command pipe closes), stopped or starved (the hold's deadline passes). The
/// peer takes the addresses after the same silence, so the two kernels never both hold them;
/// the kernel lifetime (`address_lifetime`) remains only for a fence killed with its daemon.
///
/// Requests with an answer (take, release, drop) wait for the fence's ACK: the fence handles
/// commands in order, so after the ACK an earlier drop has happened and no renewal of the
/// lifetime (which would re-create a deleted address) is under way.
final class Fence: @unchecked Sendable {
    enum FenceError: Error { case unavailable(String) }

    private struct Channel {
        enum Process { case running(pid: pid_t, commands: Int32, notes: Int32), stopped }
        var process: Process = .stopped
        var seq: UInt32 = 0
        /// FENCED notices read while waiting for an ACK (the generations whose hold was dropped).
        var fencedGenerations: [UInt32] = []
    }

    /// Guards the fence's pipes, the command sequence and the notices read so far; held while
    /// a request waits for its ACK (a local pipe round trip, bounded by `ackTimeout`).
    private let channel = Locked(Channel())
    private let addresses: [HAConfig.PublicAddress]
    private let lifetime: Int
    private let log: Logger
    private let ackTimeout: Duration = .seconds(1)

    init(addresses: [HAConfig.PublicAddress], lifetime: Int, logger: Logger) {
        self.addresses = addresses
        self.lifetime = lifetime
        log = logger
    }

    /// Starts the fence process (again, if it died).
    func start() throws(FenceError) {
        try channel.with { (c: inout Channel) throws(FenceError) in try spawn(&c) }
    }

    /// Arms the fence for `hold` (a new generation) before the addresses are configured.
    func take(holdFor hold: Duration) throws(FenceError) -> UInt32 {
        try request(TWIN_FENCE_TAKE, hold: hold)
    }

    /// Renews the hold; no answer. A fence that has dropped the addresses answers with a
    /// FENCED notice instead (see `takeFencedNotices`).
    func feed(holdFor hold: Duration) {
        channel.with { c in
            guard case .running(_, let fd, _) = c.process else { return }
            var cmd = twin_fence_cmd(op: UInt32(TWIN_FENCE_FEED), seq: 0, hold_ms: Self.ms(hold))
            _ = write(fd, &cmd, MemoryLayout<twin_fence_cmd>.size)
        }
    }

    /// Disarms (before releaseip deletes the addresses).
    func release() throws(FenceError) { _ = try request(TWIN_FENCE_RELEASE, hold: .zero) }

    /// Deletes the addresses now and keeps them off this node until the next take or release.
    func drop() throws(FenceError) { _ = try request(TWIN_FENCE_DROP, hold: .zero) }

    /// The generations whose hold the fence dropped on its own, read since the last call.
    func takeFencedNotices() -> [UInt32] {
        channel.with { c in
            if case .running(_, _, let notes) = c.process { readNotes(notes, into: &c, until: nil) }
            defer { c.fencedGenerations = [] }
            return c.fencedGenerations
        }
    }

    /// Closes the command pipe: an idle fence exits, an armed one drops the addresses first.
    func close() {
        channel.with { c in
            guard case .running(let pid, let cmd, let notes) = c.process else { return }
            Glibc.close(cmd)
            Glibc.close(notes)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
            c.process = .stopped
        }
    }

    // MARK: - Internals

    private static func ms(_ d: Duration) -> UInt32 {
        let (s, a) = d.components
        return UInt32(clamping: max(0, s * 1000 + a / 1_000_000_000_000_000))
    }

    private func request(_ op: Int, hold: Duration) throws(FenceError) -> UInt32 {
        try channel.with { (c: inout Channel) throws(FenceError) -> UInt32 in
            // One retry with a fresh fence: a dead fence must not leave the addresses unguarded.
            for attempt in 0..<2 {
                if case .stopped = c.process { try spawn(&c) }
                guard case .running(let pid, let fd, let notes) = c.process else { continue }
                c.seq &+= 1
                var cmd = twin_fence_cmd(op: UInt32(op), seq: c.seq, hold_ms: Self.ms(hold))
                if write(fd, &cmd, MemoryLayout<twin_fence_cmd>.size) == MemoryLayout<twin_fence_cmd>.size,
                   let gen = readNotes(notes, into: &c, until: c.seq) {
                    return gen
                }
                log.error("the fence (pid \(pid)) did not answer\(attempt == 0 ? "; starting a new one" : "")")
                kill(pid, SIGKILL)
                var st: Int32 = 0
                while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
                Glibc.close(fd)
                Glibc.close(notes)
                c.process = .stopped
            }
            throw .unavailable("the fence process does not answer")
        }
    }

    /// Reads notices; with `until`, waits (≤ ackTimeout) for the ACK of that sequence number
    /// and returns the fence's generation from it.
    @discardableResult
    private func readNotes(_ fd: Int32, into c: inout Channel, until seq: UInt32?) -> UInt32? {
        let deadline = ContinuousClock.now + ackTimeout
        var n = twin_fence_note()
        while true {
            let r = read(fd, &n, MemoryLayout<twin_fence_note>.size)
            if r == MemoryLayout<twin_fence_note>.size {
                if n.kind == UInt32(TWIN_FENCE_FENCED) { c.fencedGenerations.append(n.gen) }
                if n.kind == UInt32(TWIN_FENCE_ACK), let seq, n.seq == seq { return n.gen }
                continue
            }
            if r == 0 { return nil }   // the fence is gone
            if r < 0 && errno == EINTR { continue }
            guard let _ = seq, r < 0 && errno == EAGAIN else { return nil }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(Self.ms(left)) + 1)
        }
    }

    private func spawn(_ c: inout Channel) throws(FenceError) {
        if case .running = c.process { return }
        let names = addresses.map { strdup($0.interface) }
        defer { names.forEach { free($0) } }
        let ips = addresses.map { SystemNet.ipv4($0.address) }
        let prefixes = addresses.map { Int32($0.prefix) }
        var cmd: Int32 = -1, notes: Int32 = -1
        let pid = names.map { $0.map { UnsafePointer($0) } }.withUnsafeBufferPointer { n in
            twin_fence_spawn(n.baseAddress, ips, prefixes, Int32(addresses.count), Int32(lifetime), &cmd, &notes)
        }
        guard pid > 0 else { throw .unavailable("cannot start the fence: \(String(cString: strerror(-pid)))") }
        c.process = .running(pid: pid, commands: cmd, notes: notes)
    }
}
