import Crypto
import Foundation

/// One TCP connection a client holds to a public address (for tickle ACKs after a takeover).
public struct ClientConnection: Sendable, Hashable {
    /// IPv4 addresses and ports in network byte order, as the kernel and the raw socket use them.
    public var publicIP: UInt32
    public var publicPort: UInt16
    public var clientIP: UInt32
    public var clientPort: UInt16
}

/// A heartbeat (UDP, every `beat_interval`, on every heartbeat link). Authenticated with
/// HMAC-SHA256 over the cluster secret (truncated to 16 bytes); anything that does not parse or
/// authenticate is dropped and counted.
public struct Beat: Sendable, Equatable {
    public var node: String
    /// Random per daemon start: a restarted peer is told apart from a replayed packet.
    public var incarnation: UInt64
    public var seq: UInt64
    /// Sender's wall clock, ms since the epoch (for replays across incarnations).
    public var sentMs: UInt64
    public var healthy: Bool
    public var holds: Bool
    /// Clean stop under way: the peer may take over at once.
    public var leaving: Bool
    /// The node the sender thinks should hold the addresses ("" = none).
    public var choice: String
    public var healthyForMs: UInt32
    public var connections: [ClientConnection]

    public static let maxConnections = 64
}

public struct WitnessRequest: Sendable, Equatable {
    public enum Op: UInt8, Sendable { case acquire = 1, release = 2, query = 3 }
    public var op: Op
    public var node: String
    public var nonce: UInt64
}

public struct WitnessReply: Sendable, Equatable {
    public var granted: Bool
    public var holder: String
    public var remainingMs: UInt32
    public var nonce: UInt64
}

/// Wire format shared by heartbeats and the witness: magic, version, fields, 16-byte MAC.
public enum Packets {
    static let version: UInt8 = 1
    static let macSize = 16
    static let beatMagic = Array("TWHB".utf8)
    static let requestMagic = Array("TWWQ".utf8)
    static let replyMagic = Array("TWWR".utf8)

    static func mac(_ body: [UInt8], secret: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: secret)).prefix(macSize))
    }

    static func seal(_ body: [UInt8], secret: [UInt8]) -> [UInt8] { body + mac(body, secret: secret) }

    /// The body if the packet is long enough and its MAC is right (constant-time compare).
    static func open(_ packet: [UInt8], magic: [UInt8], secret: [UInt8]) -> Reader? {
        guard packet.count > magic.count + 1 + macSize, Array(packet.prefix(magic.count)) == magic,
              packet[magic.count] == version else { return nil }
        let body = Array(packet.dropLast(macSize))
        let got = packet.suffix(macSize)
        var diff: UInt8 = 0
        for (a, b) in zip(mac(body, secret: secret), got) { diff |= a ^ b }
        guard diff == 0 else { return nil }
        var r = Reader(bytes: body)
        r.pos = magic.count + 1
        return r
    }

    public static func encode(_ b: Beat, secret: [UInt8]) -> [UInt8] {
        var w = Writer(beatMagic + [version])
        w.text(b.node); w.u64(b.incarnation); w.u64(b.seq); w.u64(b.sentMs)
        w.u8((b.healthy ? 1 : 0) | (b.holds ? 2 : 0) | (b.leaving ? 4 : 0))
        w.text(b.choice); w.u32(b.healthyForMs)
        let conns = b.connections.prefix(Beat.maxConnections)
        w.u8(UInt8(conns.count))
        for c in conns { w.u32(c.publicIP); w.u16(c.publicPort); w.u32(c.clientIP); w.u16(c.clientPort) }
        return seal(w.bytes, secret: secret)
    }

    public static func decodeBeat(_ p: [UInt8], secret: [UInt8]) -> Beat? {
        guard var r = open(p, magic: beatMagic, secret: secret),
              let node = r.text(), let inc = r.u64(), let seq = r.u64(), let sent = r.u64(), let flags = r.u8(),
              let choice = r.text(), let hf = r.u32(), let n = r.u8(), Int(n) <= Beat.maxConnections else { return nil }
        var conns: [ClientConnection] = []
        for _ in 0..<n {
            guard let a = r.u32(), let ap = r.u16(), let c = r.u32(), let cp = r.u16() else { return nil }
            conns.append(ClientConnection(publicIP: a, publicPort: ap, clientIP: c, clientPort: cp))
        }
        guard r.atEnd, flags & ~7 == 0 else { return nil }
        return Beat(node: node, incarnation: inc, seq: seq, sentMs: sent, healthy: flags & 1 != 0, holds: flags & 2 != 0,
                    leaving: flags & 4 != 0, choice: choice, healthyForMs: hf, connections: conns)
    }

    public static func encode(_ q: WitnessRequest, secret: [UInt8]) -> [UInt8] {
        var w = Writer(requestMagic + [version])
        w.u8(q.op.rawValue); w.text(q.node); w.u64(q.nonce)
        return seal(w.bytes, secret: secret)
    }

    public static func decodeRequest(_ p: [UInt8], secret: [UInt8]) -> WitnessRequest? {
        guard var r = open(p, magic: requestMagic, secret: secret), let op = r.u8().flatMap(WitnessRequest.Op.init),
              let node = r.text(), !node.isEmpty, let nonce = r.u64(), r.atEnd else { return nil }
        return WitnessRequest(op: op, node: node, nonce: nonce)
    }

    public static func encode(_ a: WitnessReply, secret: [UInt8]) -> [UInt8] {
        var w = Writer(replyMagic + [version])
        w.u8(a.granted ? 1 : 0); w.text(a.holder); w.u32(a.remainingMs); w.u64(a.nonce)
        return seal(w.bytes, secret: secret)
    }

    public static func decodeReply(_ p: [UInt8], secret: [UInt8]) -> WitnessReply? {
        guard var r = open(p, magic: replyMagic, secret: secret), let g = r.u8(), g <= 1, let holder = r.text(),
              let rem = r.u32(), let nonce = r.u64(), r.atEnd else { return nil }
        return WitnessReply(granted: g == 1, holder: holder, remainingMs: rem, nonce: nonce)
    }

    struct Writer {
        var bytes: [UInt8]
        init(_ start: [UInt8]) { bytes = start }
        mutating func u8(_ v: UInt8) { bytes.append(v) }
        mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
        /// At most 72 bytes (node names of up to 64, and a node's askers "name/fs"): longer is cut.
        mutating func text(_ s: String) {
            let b = Array(s.utf8.prefix(72))
            u8(UInt8(b.count)); bytes += b
        }
    }

    struct Reader {
        let bytes: [UInt8]
        var pos = 0
        var atEnd: Bool { pos == bytes.count }
        mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n >= 0, bytes.count - pos >= n else { return nil }
            defer { pos += n }
            return bytes[pos..<pos + n]
        }
        mutating func int<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard let s = take(MemoryLayout<T>.size) else { return nil }
            return s.reduce(T(0)) { $0 << 8 | T($1) }
        }
        mutating func u8() -> UInt8? { int(UInt8.self) }
        mutating func u16() -> UInt16? { int(UInt16.self) }
        mutating func u32() -> UInt32? { int(UInt32.self) }
        mutating func u64() -> UInt64? { int(UInt64.self) }
        mutating func text() -> String? {
            guard let n = u8(), n <= 72, let s = take(Int(n)) else { return nil }
            let str = String(decoding: s, as: UTF8.self)
            guard Array(str.utf8) == Array(s), str.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) || s.isEmpty else { return nil }
            return str
        }
    }
}
