import BrickStore
import ControlSocket
import PeerProtocol
import Foundation
import Glibc
import Journal
import ObjectStore
import TwinConfig
import TwinCore

/// What starting the node will do to the disk, decided before anything is changed.
public struct StartPlan: Sendable, Equatable {
    public enum BrickAction: Sendable, Equatable { case use, initialize }
    public enum JournalAction: Sendable, Equatable { case open, create }
    public var brick: BrickAction
    public var journal: JournalAction
    /// A dead mount of this volume left by a crashed node sits on the mount point.
    public var detachStaleMount = false
    /// A new, empty brick in a pair (a replaced disk, or a first start): it is filled from the
    /// peer by the healer, never taken as "everything was deleted".
    public var rebuild = false
    /// The journal of the brick that is gone: kept aside (renamed), a new one is made.
    public var setAsideJournal = false
}

/// Every check that can refuse a start, run before anything is written: a refused start
/// leaves brick, journal and mount point exactly as they were.
public enum Preflight {
    public static func check(_ cfg: NodeConfig) throws(AdminError) -> StartPlan {
        guard getuid() == 0 else {
            throw AdminError(problem: "twinfs node must run as root (it keeps owners and TwinFS ids in trusted.* xattrs)",
                             fix: "start it as root, e.g. with systemctl start twinfs-node@NAME")
        }
        let brickAction: StartPlan.BrickAction
        switch Brick.inspect(path: cfg.brick) {
        case .missing:
            throw AdminError(problem: "brick \(cfg.brick) does not exist",
                             fix: "create it on the node's data disk (mkdir -p \(cfg.brick)) or correct 'brick' in \(cfg.path)")
        case .notDirectory:
            throw AdminError(problem: "brick \(cfg.brick) is not a directory", fix: "point 'brick' at a directory")
        case .notWritable:
            throw AdminError(problem: "brick \(cfg.brick) is not writable",
                             fix: "run the node as root and check that the brick's disk is mounted read-write")
        case .badMarker(let p):
            throw AdminError(problem: "the brick marker \(p) is damaged",
                             fix: "inspect it by hand; TwinFS will not guess which volume the brick belongs to")
        case .unmarked:
            throw AdminError(problem: "brick \(cfg.brick) holds files but no TwinFS marker (not a TwinFS brick)",
                             fix: "point 'brick' at an empty directory, or import this directory with `twinfs journal rebuild --config \(cfg.path)`")
        case .marked(let id) where id != cfg.identity:
            throw AdminError(problem: "brick \(cfg.brick) belongs to \(id), not to \(cfg.identity)",
                             fix: "point 'brick' at this node's own brick, or correct 'volume'/'node' in \(cfg.path)")
        case .marked:
            brickAction = .use
        case .empty:
            brickAction = .initialize
        }

        let stale = try checkMountpoint(cfg.mountpoint, volume: cfg.volume)

        var journalAction: StartPlan.JournalAction
        var setAside = false
        if FileManager.default.fileExists(atPath: cfg.journal) {
            let found: VolumeIdentity
            do { found = try Journal.storedIdentity(path: cfg.journal) } catch { throw error.adminError }
            guard found == cfg.identity else {
                throw JournalError.foreign(path: cfg.journal, found: found, expected: cfg.identity).adminError
            }
            if brickAction == .initialize {
                guard cfg.peer != nil else {
                    throw AdminError(problem: "brick \(cfg.brick) is empty but journal \(cfg.journal) lists the volume's files",
                                     fix: "mount the brick's disk (is it missing?); to start over on purpose, move the old journal away")
                }
                // A replaced disk in a pair: the old journal describes a brick that is gone. It
                // is kept (renamed), and the new brick is rebuilt from the peer. But if that
                // journal still holds changes the peer never received, this may just be a data
                // disk that did not mount: the admin decides.
                if let j = try? Journal(readOnlyPath: cfg.journal), let b = try? j.peerBacklog(), b.ops + b.files > 0 {
                    throw AdminError(problem: "brick \(cfg.brick) is empty, but journal \(cfg.journal) holds \(b.ops) changes and \(b.files) files the peer has not received yet (is the data disk not mounted?)",
                                     fix: "mount the brick's disk; if the disk really was replaced and those changes are lost, move the journal away (mv \(cfg.journal) \(cfg.journal).lost) and start again")
                }
                setAside = true
                journalAction = .create
            } else {
                journalAction = .open
            }
        } else {
            let dir = (cfg.journal as NSString).deletingLastPathComponent
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue,
                  access(dir, W_OK) == 0 else {
                throw AdminError(problem: "the journal's directory \(dir) does not exist or is not writable",
                                 fix: "create it on the node's local disk (mkdir -p \(dir)) or correct 'journal'")
            }
            if brickAction == .use {
                // Never rebuild on our own: the journal's disk may just not be mounted (a new,
                // empty journal would then silently diverge from the real one), and a rebuild
                // re-hashes the whole archive, hours for tens of TB. The admin decides.
                throw AdminError(problem: "journal \(cfg.journal) is missing, but brick \(cfg.brick) holds volume '\(cfg.volume)'",
                                 fix: "if the journal's disk is not mounted, mount it; to rebuild the journal from the brick, run `twinfs journal rebuild --config \(cfg.path)` (it re-hashes every file)")
            }
            journalAction = .create
        }
        if isLocked(cfg.journal + ".lock") {
            throw JournalError.locked(path: cfg.journal).adminError
        }
        if FileManager.default.fileExists(atPath: cfg.controlSocket),
           (try? ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "ping"), timeout: .seconds(2))) != nil {
            throw AdminError(problem: "a TwinFS node is already running with control socket \(cfg.controlSocket)",
                             fix: "stop it first, or give this node its own control_socket")
        }
        let sockDir = (cfg.controlSocket as NSString).deletingLastPathComponent
        var sockIsDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: sockDir, isDirectory: &sockIsDir) {
            guard sockIsDir.boolValue, access(sockDir, W_OK) == 0 else {
                throw AdminError(problem: "control socket directory \(sockDir) is not a writable directory",
                                 fix: "create it as root (mkdir -p \(sockDir)) or change control_socket")
            }
        } else if access((sockDir as NSString).deletingLastPathComponent, W_OK) != 0 {
            throw AdminError(problem: "control socket directory \(sockDir) does not exist and cannot be created",
                             fix: "create it as root (mkdir -p \(sockDir)) or change control_socket")
        }
        // What the pair needs, before the brick or the journal is touched: a bad secret file or
        // a taken port refused after initialising a fresh brick would leave it half made.
        // The tier's S3 keys follow the secret's rules (a key file others can read is refused).
        if let tier = cfg.tier {
            _ = try CredentialsFile.load(path: tier.credentialsFile)
        }
        if let peer = cfg.peer {
            _ = try SecretFile.load(path: peer.secretFile)
            _ = try ClusterMember.split(peer.address, "peer.address")
            let (host, port) = try ClusterMember.split(cfg.listen, "listen")
            try checkPortFree(host: host, port: port, key: "listen")
        }
        if let m = cfg.metricsListen {
            let (host, port) = try ClusterMember.split(m, "metrics_listen")
            try checkPortFree(host: host, port: port, key: "metrics_listen")
        }
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw AdminError(problem: "/dev/fuse is not available",
                             fix: "install fuse3 and load the module (modprobe fuse); in a container, pass --device /dev/fuse")
        }
        return StartPlan(brick: brickAction, journal: journalAction, detachStaleMount: stale,
                         rebuild: brickAction == .initialize && cfg.peer != nil, setAsideJournal: setAside)
    }

    /// Refuses a start whose TCP port another process holds (bound and released at once; the
    /// node binds it again moments later, with SO_REUSEADDR as NIO does).
    static func checkPortFree(host: String, port: Int, key: String) throws(AdminError) {
        var addr = in_addr()
        guard inet_pton(AF_INET, host == "0.0.0.0" || host.isEmpty ? "0.0.0.0" : host, &addr) == 1 else { return }  // a name or IPv6: NIO reports it
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = UInt16(port).bigEndian
        sa.sin_addr = addr
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            let why = String(cString: strerror(errno))
            throw AdminError(problem: "cannot listen on \(key) \(host):\(port): \(why)",
                             fix: errno == EADDRINUSE ? "another process uses port \(port) (see `ss -ltnp`); stop it or change \(key)"
                                                      : "use an address of this machine in \(key)")
        }
    }

    /// Returns true when the mount point holds a dead mount of this same volume (its node
    /// crashed): safe to detach, since nothing can be served through it any more.
    static func checkMountpoint(_ mp: String, volume: String) throws(AdminError) -> Bool {
        // mountinfo first: stat() on a live but hung FUSE mount would block this start.
        if mountPoints().contains(mp) {
            if let src = mountSource(mp), src == "twinfs:\(volume)" {
                // Ours: dead (ENOTCONN) after a crash, or alive because a node still runs;
                // the journal lock and control socket checks tell the two apart.
                let fd = open(mp, O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC)
                if fd < 0 && errno == ENOTCONN { return true }
                if fd >= 0 { close(fd) }
            }
            throw AdminError(problem: "mount point \(mp) is busy: something is already mounted there",
                             fix: "unmount it first (umount \(mp)) or choose another mount point")
        }
        var st = stat()
        if stat(mp, &st) != 0 {
            if errno == ENOTCONN {
                if mountSource(mp) == "twinfs:\(volume)" { return true }
                throw AdminError(problem: "mount point \(mp) is a dead FUSE mount of something else (transport endpoint is not connected)",
                                 fix: "unmount it with `fusermount3 -u \(mp)` (or `umount -l \(mp)`) and start again")
            }
            throw AdminError(problem: "mount point \(mp) does not exist", fix: "create it (mkdir -p \(mp)) or correct 'mountpoint'")
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw AdminError(problem: "mount point \(mp) is not a directory", fix: "point 'mountpoint' at a directory")
        }
        if mountPoints().contains(mp) {
            throw AdminError(problem: "mount point \(mp) is busy: something is already mounted there",
                             fix: "unmount it first (umount \(mp)) or choose another mount point")
        }
        return false
    }

    /// The source field ("twinfs:VOLUME") of the mount at `mp`, from /proc/self/mountinfo.
    static func mountSource(_ mp: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let halves = line.components(separatedBy: " - ")
            let f = halves[0].split(separator: " ")
            guard f.count > 4, unescape(String(f[4])) == mp, halves.count > 1 else { continue }
            let g = halves[1].split(separator: " ")
            if g.count > 1, g[0] == "fuse.twinfs" { return String(g[1]) }
        }
        return nil
    }

    /// Mount points of this mount namespace, from /proc/self/mountinfo (octal escapes decoded).
    public static func mountPoints() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 4 { out.insert(unescape(String(f[4]))) }
        }
        return out
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        var u = Array(s.utf8)[...]
        while let c = u.first {
            if c == UInt8(ascii: "\\"), u.count >= 4, let v = UInt8(String(decoding: u.dropFirst().prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(v)
                u = u.dropFirst(4)
            } else {
                bytes.append(c)
                u = u.dropFirst()
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func isLocked(_ lockPath: String) -> Bool {
        let fd = open(lockPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return false
        }
        return true
    }
}
