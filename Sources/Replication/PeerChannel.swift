import Foundation
import NIOCore
import PeerLink
import PeerProtocol
import TwinCore

/// How one request to the peer ended.
public enum PeerOutcome: Sendable, Equatable {
    /// The peer applied it (errno 0); its reply payload, if any.
    case ok(ByteBuffer?)
    /// The peer answered with an errno: it could not or would not apply it.
    case refused(Int32)
    /// No answer within the timeout, or no link: the peer is treated as down.
    case unreachable(String)

    public var isOK: Bool { if case .ok = self { return true } else { return false } }
}

/// The errno a node answers when a change would overwrite an entry it changed itself while
/// the nodes could not talk (split brain). EBADE: "invalid exchange".
public let splitBrainErrno: Int32 = 52

/// How a node reaches its peer: the TCP link in production (`PeerClientTransport`), an
/// in-process double in tests (module `ReplicationTesting`), so replication can be run under
/// faults without sockets or processes.
public protocol PeerTransport: Sendable {
    /// Requests can be sent now (the link is authenticated and not being torn down).
    var isUp: Bool { get }
    /// The link's state in one line, for `twinfs status` and log lines.
    var linkDescription: String { get }
    /// Sends `message` and calls `done` exactly once with the answer, or `.unreachable` if none
    /// came within `timeout`. `done` may run on any thread: it must be short and never block.
    func start(_ message: PeerMessage, timeout: Duration, done: @escaping @Sendable (PeerOutcome) -> Void)
}

/// The production transport: requests over the authenticated, pipelined `PeerClient`.
public struct PeerClientTransport: PeerTransport {
    public let client: PeerClient

    public init(client: PeerClient) { self.client = client }

    public var isUp: Bool { client.state.isUp }
    public var linkDescription: String { "\(client.state)" }

    public func start(_ message: PeerMessage, timeout: Duration, done: @escaping @Sendable (PeerOutcome) -> Void) {
        let client = self.client
        // The usual case (link up, window not full) goes straight to the event loop: a request
        // through Swift concurrency costs two more thread hand-offs, each way.
        if client.sendNow(message, timeout: timeout, completion: { done(Self.outcome($0)) }) { return }
        Task {
            do throws(PeerLinkError) {
                done(Self.outcome(.success(try await client.send(message, timeout: timeout))))
            } catch {
                done(Self.outcome(.failure(error)))
            }
        }
    }

    static func outcome(_ r: Result<PeerMessage, PeerLinkError>) -> PeerOutcome {
        switch r {
        case let .success(.reply(_, errno, payload)): return errno == 0 ? .ok(payload) : .refused(errno)
        case .success: return .refused(EPROTO)
        case let .failure(error): return .unreachable("\(error)")
        }
    }
}

/// A blocking front to the peer transport for FUSE worker threads and the catch-up thread
/// (never call from Swift concurrency's cooperative pool: `call` blocks the thread).
public final class PeerChannel: Sendable {
    public let transport: any PeerTransport
    public let timeout: Duration

    public init(transport: any PeerTransport, timeout: Duration) {
        self.transport = transport
        self.timeout = timeout
    }

    public convenience init(client: PeerClient, timeout: Duration) {
        self.init(transport: PeerClientTransport(client: client), timeout: timeout)
    }

    public var isUp: Bool { transport.isUp }

    /// The link's state in one line (status, log lines).
    public var linkDescription: String { transport.linkDescription }

    /// Sends and waits for the answer (at most `timeout` once the request is on the wire).
    public func call(_ message: PeerMessage) -> PeerOutcome {
        let pending = start(message)
        return pending.wait()
    }

    /// Sends and waits up to `timeout` (for requests the peer needs long to answer, such as a
    /// whole-file heal: a request that outlives its timeout takes the link down).
    public func call(_ message: PeerMessage, timeout: Duration) -> PeerOutcome {
        let p = PendingCall()
        start(message, timeout: timeout) { p.complete($0) }
        return p.wait()
    }

    /// Sends without waiting; `wait()` on the result collects the answer.
    public func start(_ message: PeerMessage) -> PendingCall {
        let p = PendingCall()
        start(message) { p.complete($0) }
        return p
    }

    /// Sends without waiting and calls `done` with the answer (on the link's event loop or a
    /// concurrency thread: keep it short, never block).
    public func start(_ message: PeerMessage, timeout: Duration? = nil, done: @escaping @Sendable (PeerOutcome) -> Void) {
        transport.start(message, timeout: timeout ?? self.timeout, done: done)
    }
}

/// A request in flight; `wait` blocks until its answer.
public final class PendingCall: @unchecked Sendable {
    /// Guards `outcome`. Leaf (the completion runs on the link's thread and takes nothing else).
    private let cond = NSCondition()
    private var outcome: PeerOutcome?

    func complete(_ o: PeerOutcome) {
        cond.lock()
        outcome = o
        cond.broadcast()
        cond.unlock()
    }

    public func wait() -> PeerOutcome {
        cond.lock()
        defer { cond.unlock() }
        while outcome == nil { cond.wait() }
        return outcome!
    }
}

/// A bound on the bytes of file data streaming to the peer: writers wait instead of growing memory.
final class ByteBudget: @unchecked Sendable {
    /// Guards `used`. Leaf: a writer waits on it holding no other lock (a RepHandle's cond is
    /// released before the wait).
    private let cond = NSCondition()
    private var used = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func acquire(_ n: Int) {
        cond.lock()
        while used > 0 && used + n > limit { cond.wait() }
        used += n
        cond.unlock()
    }

    func release(_ n: Int) {
        cond.lock()
        used -= n
        cond.broadcast()
        cond.unlock()
    }
}
