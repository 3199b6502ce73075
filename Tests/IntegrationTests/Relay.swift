import Foundation
import Glibc
import TwinCore

// Test support: a TCP relay on 127.0.0.1 that sits between one node's peer client and the
// other node's listener, so that a test can cut the link the way a network would.
//
// One accept thread, and one thread per relayed connection running a poll loop over
// non-blocking sockets (1 MiB buffer per direction). Each thread owns and closes its own
// descriptors; mode changes reach it through its command and a wake-up pipe, and `set`
// waits (bounded) until every connection has applied the change, so when `set` returns no
// further byte is forwarded on an old connection.

/// A free TCP port on 127.0.0.1 right now (bound to port 0, read back, closed). Another
/// process may take it before it is used; the kernel hands ephemeral ports out round-robin,
/// so that is unlikely within a test.
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    precondition(fd >= 0, "socket: \(FSError.last)")
    defer { close(fd) }
    var addr = loopbackAddress(port: 0)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    precondition(rc == 0, "bind 127.0.0.1:0: \(FSError.last)")
    return boundPort(fd)
}

private func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port)).bigEndian
    addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return addr
}

private func boundPort(_ fd: Int32) -> Int {
    var addr = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    precondition(rc == 0, "getsockname: \(FSError.last)")
    return Int(UInt16(bigEndian: addr.sin_port))
}

private func setNonBlocking(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
}

/// Closes with SO_LINGER 0: the other side gets a RST, as from a process that died.
private func abortiveClose(_ fd: Int32) {
    guard fd >= 0 else { return }
    var l = linger(l_onoff: 1, l_linger: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    close(fd)
}

/// A joinable pthread running `body`.
private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

private func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    var t = pthread_t()
    let arg = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    let rc = pthread_create(&t, nil, { raw in
        let b = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        b.body()
        return nil
    }, arg)
    precondition(rc == 0, "pthread_create: \(rc)")
    return t
}

/// A non-blocking self-pipe: writing a byte wakes a thread sleeping in poll.
private struct WakePipe {
    let readFD: Int32
    let writeFD: Int32
    init() {
        var fds: [Int32] = [-1, -1]
        let rc = pipe(&fds)
        precondition(rc == 0, "pipe: \(FSError.last)")
        for fd in fds {
            setNonBlocking(fd)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }
    func wake() {
        var b: UInt8 = 1
        _ = write(writeFD, &b, 1)
    }
    func drain() {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(readFD, &buf, buf.count) > 0 {}
    }
    func close() {
        Glibc.close(readFD)
        Glibc.close(writeFD)
    }
}

final class Relay: @unchecked Sendable {
    enum Mode: Sendable, Equatable, CustomStringConvertible {
        /// Bytes flow both ways.
        case pass
        /// Every connection is reset (RST); new ones are accepted and reset at once.
        case reset
        /// Nothing flows and nothing is closed (a pulled cable); new connections are accepted
        /// and never forwarded. Leaving this mode closes every connection of the period.
        case blackhole
        /// Bytes reach the target, nothing comes back (a link that lost one direction): the
        /// target acts on every request and the sender never hears of it. Leaving this mode
        /// closes every connection of the period.
        case answersLost

        var description: String {
            switch self {
            case .pass: "pass"
            case .reset: "reset"
            case .blackhole: "blackhole"
            case .answersLost: "answers lost"
            }
        }
    }

    /// The port this relay listens on (127.0.0.1).
    let port: Int
    /// The port on 127.0.0.1 it forwards to.
    let targetPort: Int

    private struct State {
        var mode: Mode = .pass
        var stopped = false
        var nextID = 0
        var connections: [Int: Connection] = [:]
        /// Threads of connections that ended, to be joined.
        var finished: [pthread_t] = []
        /// Connections accepted so far (any mode), for tests of the relay itself.
        var accepted = 0
    }

    private let listenFD: Int32
    private let wakePipe = WakePipe()
    private let state = Locked(State())
    private let bytesForwarded = Locked<Int64>(0)
    /// Bytes per second each connection forwards in each direction at most (0: unlimited).
    private let rateLimit = Locked<Int>(0)
    private let stopOnce = Locked(false)
    private var acceptThread: pthread_t?

    /// Listens on an ephemeral 127.0.0.1 port and forwards to 127.0.0.1:`targetPort`.
    init(targetPort: Int) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FSError.last }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = loopbackAddress(port: 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 128) == 0 else {
            let e = FSError.last
            close(fd)
            throw e
        }
        setNonBlocking(fd)
        listenFD = fd
        port = boundPort(fd)
        acceptThread = spawnThread { [self] in acceptLoop() }
    }

    deinit {
        // stop() must have run (the accept thread holds the relay until then).
        wakePipe.close()
    }

    var mode: Mode { state.with { $0.mode } }

    /// Connections currently open through the relay (any mode).
    var openConnections: Int { state.with { $0.connections.count } }

    /// Connections accepted since the relay started.
    var acceptedConnections: Int { state.with { $0.accepted } }

    /// Bytes forwarded so far, both directions together.
    var forwardedBytes: Int64 { bytesForwarded.with { $0 } }

    /// Limits every connection to about `bytesPerSecond` per direction (a slower link, e.g.
    /// 1 GbE shared with PACS traffic); 0 lifts the limit.
    func limitRate(_ bytesPerSecond: Int) { rateLimit.with { $0 = bytesPerSecond } }

    /// Switches mode. Returns once every existing connection has applied it (bounded by a
    /// few seconds): after `set(.blackhole)` no further byte is forwarded on any connection,
    /// after `set(.reset)` or `set(.pass)` from another mode every old connection is closed.
    func set(_ mode: Mode) {
        let targets: [(Connection, Command)] = state.with { s in
            guard !s.stopped else { return [] }
            let old = s.mode
            s.mode = mode
            let conns = Array(s.connections.values)
            switch mode {
            case .reset:
                return conns.map { ($0, .abort) }
            case .blackhole:
                return conns.map { ($0, .blackhole) }
            case .answersLost:
                return conns.map { ($0, .mute) }
            case .pass:
                // Connections open during a blackhole or reset period are closed so that
                // both sides start over on fresh ones.
                return old == .pass ? [] : conns.map { ($0, .abort) }
            }
        }
        let generations = targets.map { $0.0.post($0.1) }
        let deadline = Date().addingTimeInterval(5)
        for ((c, _), g) in zip(targets, generations) {
            while !c.hasApplied(g) && Date() < deadline { usleep(1000) }
        }
    }

    /// Closes the listener and every connection (RST), and joins every thread. Safe to call
    /// more than once; never blocks longer than a few seconds.
    func stop() {
        let first = stopOnce.with { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        let conns = state.with { s -> [Connection] in
            s.stopped = true
            return Array(s.connections.values)
        }
        wakePipe.wake()
        if let t = acceptThread { pthread_join(t, nil) }
        acceptThread = nil
        close(listenFD)
        for c in conns { _ = c.post(.abort) }
        // Connections registered after the snapshot cannot exist: the accept thread is gone.
        let threads = state.with { s -> [pthread_t] in
            let t = s.connections.values.compactMap { $0.thread } + s.finished
            s.finished = []
            return t
        }
        for t in threads { pthread_join(t, nil) }
        state.with { $0.connections = [:] }
    }

    // MARK: - Accept thread

    private func acceptLoop() {
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, 500)
            if fds[1].revents != 0 { wakePipe.drain() }
            reapFinished()
            if state.with({ $0.stopped }) { return }
            while true {
                let c = accept(listenFD, nil, nil)
                if c < 0 { break }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                setNonBlocking(c)
                admit(c)
            }
        }
    }

    private func reapFinished() {
        let done = state.with { s -> [pthread_t] in
            defer { s.finished = [] }
            return s.finished
        }
        for t in done { pthread_join(t, nil) }
    }

    private func admit(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let conn: Connection? = state.with { s in
            s.accepted += 1
            if s.stopped || s.mode == .reset { return nil }
            s.nextID += 1
            let c = Connection(id: s.nextID, client: fd, targetPort: targetPort,
                               initial: s.mode == .pass ? .pass : s.mode == .answersLost ? .mute : .blackhole)
            s.connections[c.id] = c
            return c
        }
        guard let conn else {
            abortiveClose(fd)
            return
        }
        // Registered before the thread runs, so a concurrent set() reaches it; the thread
        // handle is recorded under the lock too, so stop() can always join it.
        let counter = bytesForwarded
        let rate = rateLimit
        let t = spawnThread { [self] in
            conn.run(counter: counter, rate: rate)
            state.with { s in
                s.connections[conn.id] = nil
                if let t = conn.thread { s.finished.append(t) }
            }
            wakePipe.wake()
        }
        state.with { s in
            conn.thread = t
            // The connection may have ended before its handle was recorded.
            if s.connections[conn.id] == nil { s.finished.append(t) }
        }
    }
}

private enum Command: Sendable {
    /// `mute`: forward towards the target only; what it answers is read and dropped.
    case pass, blackhole, mute, abort
}

/// One relayed connection: the accepted client socket and (in pass mode) the upstream one.
private final class Connection: @unchecked Sendable {
    let id: Int
    let client: Int32
    let targetPort: Int
    /// Set (under the relay's state lock) right after the thread starts.
    var thread: pthread_t?
    private let wakePipe = WakePipe()
    /// The latest command and its generation; the generation the thread has applied.
    private let command: Locked<(Command, Int)>
    private let applied = Locked(0)
    private let ended = Locked(false)

    static let bufferSize = 1 << 20

    init(id: Int, client: Int32, targetPort: Int, initial: Command) {
        self.id = id
        self.client = client
        self.targetPort = targetPort
        command = Locked((initial, 0))
    }

    deinit { wakePipe.close() }

    /// Posts a command; returns its generation for `hasApplied`.
    func post(_ c: Command) -> Int {
        let g = command.with { cmd -> Int in
            cmd = (c, cmd.1 + 1)
            return cmd.1
        }
        wakePipe.wake()
        return g
    }

    func hasApplied(_ generation: Int) -> Bool {
        ended.with { $0 } || applied.with { $0 >= generation }
    }

    /// One direction: bytes read from `from` waiting to be written to `to`.
    private struct Pipe {
        var buffer: UnsafeMutableRawPointer
        var start = 0
        var end = 0
        /// `from` reached end of file.
        var eof = false
        /// Shut down for writing on `to` after eof and the buffer drained.
        var shut = false
        var pending: Int { end - start }
    }

    func run(counter: Locked<Int64>, rate: Locked<Int>) {
        var upstream: Int32 = -1
        var connecting = false
        var blackholed = false
        var muted = false
        var seen = -1
        var toUp = Pipe(buffer: .allocate(byteCount: Self.bufferSize, alignment: 16))
        var toClient = Pipe(buffer: .allocate(byteCount: Self.bufferSize, alignment: 16))
        defer {
            toUp.buffer.deallocate()
            toClient.buffer.deallocate()
            ended.with { $0 = true }
        }
        func abortAll() {
            abortiveClose(client)
            abortiveClose(upstream)
        }

        while true {
            let (cmd, gen) = command.with { $0 }
            if gen != seen {
                seen = gen
                switch cmd {
                case .abort:
                    abortAll()
                    applied.with { $0 = gen }
                    return
                case .blackhole:
                    // Whatever the relay holds is lost, as on a pulled cable; the sockets are
                    // no longer read, so the senders' buffers fill and their writes stall.
                    blackholed = true
                    toUp.start = 0; toUp.end = 0
                    toClient.start = 0; toClient.end = 0
                case .mute:
                    muted = true
                    toClient.start = 0; toClient.end = 0
                case .pass:
                    break
                }
                applied.with { $0 = gen }
            }

            if blackholed {
                var fds = [pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 1, 1000)
                wakePipe.drain()
                continue
            }

            if upstream < 0 {
                upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                guard upstream >= 0 else { abortAll(); return }
                var one: Int32 = 1
                _ = setsockopt(upstream, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                var addr = loopbackAddress(port: targetPort)
                let rc = withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                if rc != 0 {
                    guard errno == EINPROGRESS else { abortAll(); return }  // e.g. refused: reset the client
                    connecting = true
                }
            }

            // Poll set: client, upstream, wake pipe.
            var cev: Int16 = 0
            var uev: Int16 = 0
            if connecting {
                uev = Int16(POLLOUT)
            } else {
                if toUp.pending == 0 && !toUp.eof { cev |= Int16(POLLIN) }
                if toClient.pending == 0 && !toClient.eof { uev |= Int16(POLLIN) }
                if toUp.pending > 0 { uev |= Int16(POLLOUT) }
                if toClient.pending > 0 { cev |= Int16(POLLOUT) }
            }
            var fds = [pollfd(fd: cev != 0 ? client : -1, events: cev, revents: 0),
                       pollfd(fd: uev != 0 ? upstream : -1, events: uev, revents: 0),
                       pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 3, 1000)
            if n <= 0 { continue }
            if fds[2].revents != 0 {
                wakePipe.drain()
                continue  // apply the command before any more I/O
            }

            if connecting {
                guard fds[1].revents != 0 else { continue }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                _ = getsockopt(upstream, SOL_SOCKET, SO_ERROR, &err, &len)
                guard err == 0 else { abortAll(); return }
                connecting = false
                continue
            }

            // Reads.
            if fds[0].revents != 0 && cev & Int16(POLLIN) != 0 {
                guard readInto(&toUp, from: client) else { abortAll(); return }
            }
            if fds[1].revents != 0 && uev & Int16(POLLIN) != 0 {
                guard readInto(&toClient, from: upstream) else { abortAll(); return }
                if muted { toClient.start = 0; toClient.end = 0 }
            }
            // A slow link: each chunk read takes the time it would take on the wire.
            let limit = rate.with { $0 }
            if limit > 0, toUp.pending + toClient.pending > 0 {
                usleep(UInt32(min(1_000_000, (toUp.pending + toClient.pending) * 1_000_000 / limit)))
            }
            // Writes (also right after a read: the socket is usually writable).
            guard flush(&toUp, to: upstream, counter: counter),
                  flush(&toClient, to: client, counter: counter) else { abortAll(); return }
            if toUp.shut && toClient.shut {
                close(client)
                close(upstream)
                return
            }
        }
    }

    /// False on a connection error (reset): the caller resets both sides.
    private func readInto(_ p: inout Pipe, from fd: Int32) -> Bool {
        let n = read(fd, p.buffer, Self.bufferSize)
        if n > 0 {
            p.start = 0
            p.end = n
        } else if n == 0 {
            p.eof = true
        } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
            return false
        }
        return true
    }

    private func flush(_ p: inout Pipe, to fd: Int32, counter: Locked<Int64>) -> Bool {
        while p.pending > 0 {
            let n = Glibc.send(fd, p.buffer + p.start, p.pending, Int32(MSG_NOSIGNAL))
            if n > 0 {
                p.start += n
                counter.with { $0 += Int64(n) }
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return true
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        p.start = 0
        p.end = 0
        if p.eof && !p.shut {
            shutdown(fd, Int32(SHUT_WR))
            p.shut = true
        }
        return true
    }
}
