import Foundation
import Glibc
import Logging
import TwinCore

/// `twinfs-ha witness`: the third vote of a two-node pair, on a third machine both nodes reach
/// (as GlusterFS's arbiter or CTDB's cluster lock). It grants one lease at a time: a node cut
/// off from its peer holds the public addresses only while it holds the lease, so a cut
/// heartbeat link can never leave the addresses on both nodes. After its own (re)start it
/// grants nothing for one lease period: a lease granted before the restart runs out first.
public final class WitnessServer: @unchecked Sendable {
    let fd: Int32
    let secret: [UInt8]
    let lease: Duration
    let log: Logger
    /// Who holds the lease (only the `run` thread touches it: no lock).
    private var table: LeaseTable
    public private(set) var dropped = 0

    public init(listen: String, secret: [UInt8], lease: Double, logger: Logger) throws(AdminError) {
        guard let (h, p) = HAConfig.splitHostPort(listen) else {
            throw AdminError(problem: "witness address '\(listen)' is not ipv4:port", fix: "e.g. --listen 10.0.0.13:7796")
        }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = p.bigEndian
        a.sin_addr.s_addr = inet_addr(h)
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, rc == 0 else {
            throw AdminError(problem: "cannot listen on \(listen): \(String(cString: strerror(errno)))", fix: "check the address and that the port is free")
        }
        self.fd = fd
        self.secret = secret
        self.lease = .milliseconds(Int64(lease * 1000))
        log = logger
        table = LeaseTable(lease: self.lease, quietUntil: ContinuousClock.now + self.lease)
    }

    public func run() -> Never {
        log.notice("witness listening; lease \(lease)")
        var buf = [UInt8](repeating: 0, count: 512)
        while true {
            var from = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
            }
            guard n > 0 else { continue }
            guard let q = Packets.decodeRequest(Array(buf[0..<n]), secret: secret) else { dropped += 1; continue }
            let reply = handle(q, now: ContinuousClock.now)
            let out = Packets.encode(reply, secret: secret)
            _ = withUnsafePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, out, out.count, 0, $0, len) }
            }
        }
    }

    func handle(_ q: WitnessRequest, now: ContinuousClock.Instant) -> WitnessReply {
        let before = table.holder
        let reply = table.handle(q, now: now)
        if table.holder != before {
            log.notice(table.holder.isEmpty ? "lease of \(before) released or expired" : "lease granted to \(table.holder)")
        }
        return reply
    }
}

/// The witness's lease, pure (the clock is an argument): unit-tested.
///
/// The lease belongs to a node. A node asks for it from two processes: its twinfs-ha (node
/// name "a", for the public addresses) and its twinfs node ("a/fs", for writes while cut off
/// from its peer). Each asker holds its own claim with its own expiry, and the node holds the
/// lease while any claim of it runs: a release (twinfs-ha's clean stop) ends only that
/// asker's claim, never the lease another process of the node still counts on.
struct LeaseTable: Sendable {
    let lease: Duration
    /// Nothing is granted before this (one lease after the witness's start): a lease granted
    /// by a previous run must run out first.
    let quietUntil: ContinuousClock.Instant
    /// The node holding the lease ("" = nobody).
    private(set) var holder = ""
    /// The holder's claims: asker -> expiry.
    private var claims: [String: ContinuousClock.Instant] = [:]

    init(lease: Duration, quietUntil: ContinuousClock.Instant) {
        self.lease = lease
        self.quietUntil = quietUntil
    }

    /// "a/fs" -> "a": the node an asker belongs to.
    static func node(of asker: String) -> String {
        String(asker.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
    }

    mutating func handle(_ q: WitnessRequest, now: ContinuousClock.Instant) -> WitnessReply {
        claims = claims.filter { $0.value > now }
        if claims.isEmpty { holder = "" }
        let node = Self.node(of: q.node)
        var granted = false
        switch q.op {
        case .acquire:
            if now >= quietUntil && (holder.isEmpty || holder == node) {
                holder = node
                claims[q.node] = now + lease
                granted = true
            }
        case .release:
            if holder == node { claims[q.node] = nil }
            if claims.isEmpty { holder = "" }
        case .query:
            break
        }
        let left = claims.values.max().map { $0 - now } ?? .zero
        let ms = UInt32(max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        return WitnessReply(granted: granted, holder: holder, remainingMs: ms, nonce: q.nonce)
    }
}
