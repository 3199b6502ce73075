import NIOCore
import TwinCore

/// Payload layout of every message: `encode` and `decode` list the same fields in the same
/// order, one case each. Decoding enforces every per-field limit; the frame limit comes first.
extension PeerMessage {
    public func encodePayload(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var w = PayloadWriter(allocator: allocator)
        encode(into: &w)
        return w.buffer
    }

    private func encode(into w: inout PayloadWriter) {
        switch self {
        case let .hello(node, volume, version, nonce):
            w.string(node); w.string(volume); w.integer(version); w.fixed(nonce)
        case let .authChallengeResponse(proof):
            w.fixed(proof)
        case .authOK, .ping, .pong:
            break
        case let .authFailed(reason):
            w.string(reason)
        case let .mkdir(parent, name, mode, uid, gid, id), let .create(parent, name, mode, uid, gid, id):
            w.string(parent); w.string(name); w.integer(mode); w.integer(uid); w.integer(gid); w.integer(id)
        case let .write(path, id, offset, data):
            w.string(path); w.integer(id); w.integer(offset); w.bytes(data)
        case let .commit(path, id, size, digest, mtime):
            w.string(path); w.integer(id); w.integer(size); w.fixed(digest); w.integer(mtime)
        case let .unlink(parent, name), let .rmdir(parent, name):
            w.string(parent); w.string(name)
        case let .rename(fromParent, fromName, toParent, toName, flags):
            w.string(fromParent); w.string(fromName); w.string(toParent); w.string(toName); w.integer(flags)
        case let .link(path, newParent, newName):
            w.string(path); w.string(newParent); w.string(newName)
        case let .symlink(parent, name, target, uid, gid, id):
            w.string(parent); w.string(name); w.string(target); w.integer(uid); w.integer(gid); w.integer(id)
        case let .setattr(path, c):
            w.string(path)
            w.integer(c.presenceMask)
            if let v = c.mode { w.integer(v) }
            if let v = c.uid { w.integer(v) }
            if let v = c.gid { w.integer(v) }
            if let v = c.size { w.integer(v) }
            if let v = c.atimeNs { w.integer(v) }
            if let v = c.mtimeNs { w.integer(v) }
        case let .setxattr(path, name, value, flags):
            w.string(path); w.string(name); w.bytes(value); w.integer(flags)
        case let .removexattr(path, name):
            w.string(path); w.string(name)
        case let .lock(token, keys, lease):
            w.integer(token); w.integer(UInt8(truncatingIfNeeded: keys.count))
            for k in keys { w.string(k) }
            w.integer(lease)
        case let .unlock(token):
            w.integer(token)
        case let .pull(id):
            w.integer(id)
        case let .catchUpState(ops, files):
            w.integer(ops); w.integer(files)
        case let .listDir(dirID, after, limit):
            w.integer(dirID); w.string(after); w.integer(limit)
        case let .healFile(id, expected):
            w.integer(id); w.fixed(expected)
        case let .fileState(id, rehash):
            w.integer(id); w.integer(UInt8(rehash ? 1 : 0))
        case let .volumeInfo(ordinal):
            w.integer(ordinal)
        case let .healInfo(summary):
            w.integer(UInt8(summary ? 1 : 0))
        case let .resolveSplit(id, role):
            w.integer(id); w.integer(role)
        case let .syncDir(path):
            w.string(path)
        case let .noteSplit(id, path, reason):
            w.integer(id); w.string(path); w.string(reason)
        case let .mknod(parent, name, mode, rdev, uid, gid, id):
            w.string(parent); w.string(name); w.integer(mode); w.integer(rdev); w.integer(uid); w.integer(gid); w.integer(id)
        case let .stageWhole(parent, name, mode, uid, gid, id, size):
            w.string(parent); w.string(name); w.integer(mode); w.integer(uid); w.integer(gid); w.integer(id); w.integer(size)
        case let .guarded(expect, change):
            w.integer(UInt8(truncatingIfNeeded: expect.count))
            for e in expect {
                w.string(e.path); w.integer(e.stableID); w.integer(UInt8(truncatingIfNeeded: e.xxh128.count)); w.fixed(e.xxh128)
            }
            w.integer(change.type.rawValue)
            var inner = change.encodePayload()
            w.bytes(inner.readSlice(length: inner.readableBytes)!)
        case let .reply(requestID, errno, payload):
            w.integer(requestID); w.integer(errno)
            if let payload { w.integer(UInt8(1)); w.bytes(payload) } else { w.integer(UInt8(0)) }
        }
    }

    public static func decode(type: MessageType, payload: ByteBuffer) throws(PeerProtocolError) -> PeerMessage {
        var r = PayloadReader(payload, message: "\(type)")
        let m: PeerMessage
        switch type {
        case .hello:
            m = .hello(node: try r.label("node"), volume: try r.label("volume"),
                       protocolVersion: try r.integer("protocolVersion"), nonce: try r.fixed("nonce", count: nonceSize))
        case .authChallengeResponse:
            m = .authChallengeResponse(proof: try r.fixed("proof", count: proofSize))
        case .authOK: m = .authOK
        case .authFailed: m = .authFailed(reason: try r.text("reason", max: maxReasonBytes))
        case .ping: m = .ping
        case .pong: m = .pong
        case .mkdir, .create:
            let (parent, name) = try r.entry("parentPath", "name")
            let (mode, uid, gid, id) = (try r.mode("mode"), try r.integer("uid", as: UInt32.self),
                                        try r.integer("gid", as: UInt32.self), try r.stableID())
            m = type == .mkdir ? .mkdir(parentPath: parent, name: name, mode: mode, uid: uid, gid: gid, stableID: id)
                               : .create(parentPath: parent, name: name, mode: mode, uid: uid, gid: gid, stableID: id)
        case .write:
            let (path, id, offset) = (try r.path("path", allowRoot: false), try r.stableID(), try r.nonNegative("offset"))
            let data = try r.slice("data", max: maxWriteChunk)
            guard offset <= Int64.max - Int64(data.readableBytes) else { throw r.malformed("offset", "write would end past the largest file offset") }
            m = .write(path: path, stableID: id, offset: offset, data: data)
        case .commit:
            m = .commit(path: try r.path("path", allowRoot: false), stableID: try r.stableID(), size: try r.nonNegative("size"),
                        xxh128: try r.fixed("xxh128", count: digestSize), mtimeNs: try r.integer("mtimeNs"))
        case .unlink, .rmdir:
            let (parent, name) = try r.entry("parentPath", "name")
            m = type == .unlink ? .unlink(parentPath: parent, name: name) : .rmdir(parentPath: parent, name: name)
        case .rename:
            let (fromParent, fromName) = try r.entry("fromParent", "fromName")
            let (toParent, toName) = try r.entry("toParent", "toName")
            m = .rename(fromParent: fromParent, fromName: fromName, toParent: toParent, toName: toName,
                        flags: try r.flags("flags", allowed: 0x7))
        case .link:
            let path = try r.path("path", allowRoot: false)
            let (newParent, newName) = try r.entry("newParent", "newName")
            m = .link(path: path, newParent: newParent, newName: newName)
        case .symlink:
            let (parent, name) = try r.entry("parentPath", "name")
            m = .symlink(parentPath: parent, name: name, target: try r.text("target", min: 1, max: maxSymlinkTarget),
                         uid: try r.integer("uid"), gid: try r.integer("gid"), stableID: try r.stableID())
        case .setattr:
            m = .setattr(path: try r.path("path"), changes: try r.attrUpdate())
        case .setxattr:
            m = .setxattr(path: try r.path("path"), name: try r.xattrName(), value: try r.bytes("value", max: maxXattrValue),
                          flags: try r.flags("flags", allowed: 0x3))
        case .removexattr:
            m = .removexattr(path: try r.path("path"), name: try r.xattrName())
        case .lock:
            let token = try r.integer("token", as: UInt64.self)
            let n = try r.integer("keyCount", as: UInt8.self)
            guard (1...UInt8(maxLockKeys)).contains(n) else { throw r.malformed("keyCount", "\(n) keys (1 to \(maxLockKeys) allowed)") }
            var keys: [String] = []
            for _ in 0..<n { keys.append(try r.text("key", min: 3, max: maxLockKey)) }
            let lease = try r.integer("leaseMs", as: UInt32.self)
            guard (1...60_000).contains(lease) else { throw r.malformed("leaseMs", "\(lease) ms is not between 1 ms and 60 s") }
            m = .lock(token: token, keys: keys, leaseMs: lease)
        case .unlock:
            m = .unlock(token: try r.integer("token"))
        case .pull:
            m = .pull(stableID: try r.stableID())
        case .catchUpState:
            m = .catchUpState(ops: try r.integer("ops"), files: try r.integer("files"))
        case .listDir:
            let dir = try r.integer("dirID", as: UInt64.self)
            guard dir >= 1 else { throw r.malformed("dirID", "0 is not a directory id") }
            let after = try r.text("after", max: PeerPath.maxNameBytes)
            let limit = try r.integer("limit", as: UInt32.self)
            guard (1...DirListing.maxEntries).contains(Int(limit)) else {
                throw r.malformed("limit", "\(limit) is not between 1 and \(DirListing.maxEntries)")
            }
            m = .listDir(dirID: dir, after: after, limit: limit)
        case .healFile:
            m = .healFile(stableID: try r.stableID(), expected: try r.fixed("expected", count: digestSize))
        case .fileState:
            m = .fileState(stableID: try r.stableID(), rehash: try r.bool("rehash"))
        case .volumeInfo:
            let o = try r.integer("ordinal", as: UInt8.self)
            guard o == 1 || o == 2 else { throw r.malformed("ordinal", "\(o) is not 1 or 2") }
            m = .volumeInfo(ordinal: o)
        case .healInfo:
            m = .healInfo(summary: try r.bool("summary"))
        case .resolveSplit:
            let id = try r.stableID()
            let role = try r.integer("role", as: UInt8.self)
            guard role == 1 || role == 2 else { throw r.malformed("role", "\(role) is not 1 (lose) or 2 (win)") }
            m = .resolveSplit(stableID: id, role: role)
        case .syncDir:
            m = .syncDir(path: try r.path("path"))
        case .mknod:
            let (parent, name) = try r.entry("parentPath", "name")
            let mode = try r.mode("mode")
            guard SpecialFile(mode: mode) != nil else { throw r.malformed("mode", "0o\(String(mode, radix: 8)) is not a FIFO, socket or device") }
            m = .mknod(parentPath: parent, name: name, mode: mode, rdev: try r.integer("rdev", as: UInt64.self),
                       uid: try r.integer("uid", as: UInt32.self), gid: try r.integer("gid", as: UInt32.self), stableID: try r.stableID())
        case .stageWhole:
            let (parent, name) = try r.entry("parentPath", "name")
            let (mode, uid, gid, id) = (try r.mode("mode"), try r.integer("uid", as: UInt32.self),
                                        try r.integer("gid", as: UInt32.self), try r.stableID())
            m = .stageWhole(parentPath: parent, name: name, mode: mode, uid: uid, gid: gid, stableID: id,
                            size: try r.nonNegative("size"))
        case .noteSplit:
            // Id 0 names an entry known by its path only (a namespace conflict).
            let id = try r.integer("stableID", as: UInt64.self)
            guard id == 0 || id > 1 else { throw r.malformed("stableID", "\(id) is not a file or directory id") }
            m = .noteSplit(stableID: id, path: try r.text("path", max: PeerPath.maxPathBytes * 2 + 8),
                           reason: try r.text("reason", max: maxReasonBytes))
        case .guarded:
            let n = try r.integer("expectCount", as: UInt8.self)
            guard (1...UInt8(maxExpectations)).contains(n) else { throw r.malformed("expectCount", "\(n) expectations (1 to \(maxExpectations) allowed)") }
            var expect: [EntryExpectation] = []
            for _ in 0..<n {
                let path = try r.path("expect.path", allowRoot: false)
                let id = try r.stableID()
                let hashCount = try r.integer("expect.hashLength", as: UInt8.self)
                guard hashCount == 0 || Int(hashCount) == digestSize else { throw r.malformed("expect.hashLength", "\(hashCount) is neither 0 nor \(digestSize)") }
                expect.append(EntryExpectation(path: path, stableID: id, xxh128: try r.fixed("expect.xxh128", count: Int(hashCount))))
            }
            let raw = try r.integer("changeType", as: UInt16.self)
            // Only the changes a replay may apply to an entry it did not see are guarded.
            guard let type = MessageType(rawValue: raw), PeerMessage.guardable.contains(type) else {
                throw r.malformed("changeType", "\(raw) cannot be guarded")
            }
            m = .guarded(expect: expect, change: try decode(type: type, payload: try r.slice("change", max: 4 * PeerPath.maxPathBytes)))
        case .reply:
            let (requestID, errno) = (try r.integer("requestID", as: UInt64.self), try r.integer("errno", as: Int32.self))
            guard (0...4095).contains(errno) else { throw r.malformed("errno", "\(errno) is not an errno value") }
            let payload: ByteBuffer?
            switch try r.integer("hasPayload", as: UInt8.self) {
            case 0: payload = nil
            case 1: payload = try r.slice("payload", max: maxWriteChunk)
            case let v: throw r.malformed("hasPayload", "\(v) is neither 0 nor 1")
            }
            m = .reply(requestID: requestID, errno: errno, payload: payload)
        }
        try r.finish()
        return m
    }
}

extension AttrUpdate {
    fileprivate static let knownBits: UInt8 = 0x3F

    /// Bit i set = the i-th optional field (mode, uid, gid, size, atime, mtime) follows.
    fileprivate var presenceMask: UInt8 {
        [mode != nil, uid != nil, gid != nil, size != nil, atimeNs != nil, mtimeNs != nil]
            .enumerated().reduce(0) { $1.element ? $0 | (1 << $1.offset) : $0 }
    }
}

/// Field rules of this protocol, on top of the generic reader.
extension PayloadReader {
    /// A node or volume name, as the config accepts them: letters, digits, '-', '_', '.'.
    fileprivate mutating func label(_ field: String) throws(PeerProtocolError) -> String {
        let s = try text(field, min: 1, max: PeerMessage.maxLabelBytes)
        guard s.utf8.allSatisfy({ isalnumASCII($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }) else {
            throw malformed(field, "\(PeerProtocolError.display(s)) is not a valid name")
        }
        return s
    }

    /// Ids of files and directories the peer creates or changes: never 0, never the root.
    mutating func stableID() throws(PeerProtocolError) -> UInt64 {
        let id = try integer("stableID", as: UInt64.self)
        guard id > 1 else { throw malformed("stableID", "\(id) is not a file or directory id") }
        return id
    }

    mutating func bool(_ field: String) throws(PeerProtocolError) -> Bool {
        switch try integer(field, as: UInt8.self) {
        case 0: return false
        case 1: return true
        case let v: throw malformed(field, "\(v) is neither 0 nor 1")
        }
    }

    fileprivate mutating func mode(_ field: String) throws(PeerProtocolError) -> UInt32 {
        let m = try integer(field, as: UInt32.self)
        guard m <= 0o177777 else { throw malformed(field, "0o\(String(m, radix: 8)) is not a file mode") }
        return m
    }

    fileprivate mutating func flags(_ field: String, allowed: UInt32) throws(PeerProtocolError) -> UInt32 {
        let f = try integer(field, as: UInt32.self)
        guard f & ~allowed == 0 else { throw malformed(field, "unknown flag bits 0x\(String(f & ~allowed, radix: 16))") }
        return f
    }

    /// TwinFS's own xattrs (BrickStore's `Brick.privateXattrPrefix`) carry stable ids: never set by the peer.
    fileprivate mutating func xattrName() throws(PeerProtocolError) -> String {
        let name = try text("name", min: 1, max: PeerMessage.maxXattrName)
        guard !name.utf8.starts(with: "trusted.twinfs.".utf8) else {
            throw malformed("name", "\(PeerProtocolError.display(name)) is TwinFS's private attribute")
        }
        return name
    }

    fileprivate mutating func attrUpdate() throws(PeerProtocolError) -> AttrUpdate {
        let mask = try integer("presence", as: UInt8.self)
        guard mask & ~AttrUpdate.knownBits == 0 else { throw malformed("presence", "unknown bits 0x\(String(mask, radix: 16))") }
        var c = AttrUpdate()
        if mask & 0x01 != 0 { c.mode = try mode("mode") }
        if mask & 0x02 != 0 { c.uid = try integer("uid") }
        if mask & 0x04 != 0 { c.gid = try integer("gid") }
        if mask & 0x08 != 0 { c.size = try nonNegative("size") }
        if mask & 0x10 != 0 { c.atimeNs = try integer("atimeNs") }
        if mask & 0x20 != 0 { c.mtimeNs = try integer("mtimeNs") }
        return c
    }
}

@inline(__always)
private func isalnumASCII(_ b: UInt8) -> Bool {
    (0x30...0x39).contains(b) || (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b)
}
