import CHAShims
import Foundation
import Glibc

/// What the daemon asks the system (the kernel is the truth about who holds an address), and
/// the raw-packet helpers.
public enum SystemNet {
    /// Runs a command, returns (status, stdout). Short-lived helpers only (`ip`).
    @discardableResult
    public static func run(_ args: [String]) -> (Int32, String) {
        var out: [Int32] = [0, 0]
        guard twin_pipe_cloexec(&out) == 0 else { return (-1, "") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addclose(&actions, out[0])
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, args[0], &actions, nil, argv, environ)
        close(out[1])
        guard rc == 0 else { close(out[0]); return (-1, "") }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(out[0], &buf, buf.count)
            if n > 0 { data += buf[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        close(out[0])
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        return ((st >> 8) & 0xFF, String(decoding: data, as: UTF8.self))
    }

    /// Whether `address` is configured on `interface` now.
    public static func holds(_ a: HAConfig.PublicAddress) -> Bool {
        let (rc, out) = run(["ip", "-o", "-4", "addr", "show", "dev", a.interface])
        return rc == 0 && out.contains("inet \(a.address)/")
    }

    /// Whether the interface exists and has carrier (an administratively down link reads as
    /// an error: no carrier either).
    public static func hasCarrier(_ interface: String) -> Bool {
        guard !interface.contains("/") else { return false }
        let fd = open("/sys/class/net/\(interface)/carrier", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var c: UInt8 = 0
        return read(fd, &c, 1) == 1 && c == UInt8(ascii: "1")
    }

    public static func ipv4(_ s: String) -> UInt32 { inet_addr(s) }

    /// Established TCP connections whose local address is one of `addresses` (from
    /// /proc/net/tcp, where addresses and ports are hex in host order of the kernel's raw value).
    public static func connections(to addresses: Set<UInt32>) -> [ClientConnection] {
        guard let text = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return [] }
        var out: [ClientConnection] = []
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 3, f[3] == "01" else { continue }
            func parse(_ s: Substring) -> (UInt32, UInt16)? {
                let p = s.split(separator: ":")
                guard p.count == 2, let ip = UInt32(p[0], radix: 16), let port = UInt16(p[1], radix: 16) else { return nil }
                // /proc shows the raw network-order word as a little-endian hex number.
                return (ip, port.bigEndian)
            }
            guard let (lip, lport) = parse(f[1]), let (rip, rport) = parse(f[2]), addresses.contains(lip) else { continue }
            out.append(ClientConnection(publicIP: lip, publicPort: lport, clientIP: rip, clientPort: rport))
        }
        return out
    }

    public static func announce(_ a: HAConfig.PublicAddress, count: Int = 3) -> Int32 {
        twin_arp_announce(a.interface, ipv4(a.address), Int32(count))
    }

    /// 1 in use, 0 free, negative errno.
    public static func probe(interface: String, address: String, timeoutMs: Int) -> Int32 {
        twin_arp_probe(interface, ipv4(address), Int32(timeoutMs))
    }

    public static func tickle(_ c: ClientConnection, count: Int = 2) -> Int32 {
        twin_send_tickle(c.publicIP, c.publicPort, c.clientIP, c.clientPort, Int32(count))
    }
}
