import ArgumentParser
import ControlSocket
import Foundation
import Glibc
import HADaemon
import Logging
import PeerProtocol
import TwinCore

func fail(_ e: AdminError) -> Never { e.exit(tool: "twinfs-ha") }

func out(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

func makeLogger(_ label: String) -> Logger {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var l = Logger(label: label)
    l.logLevel = .info
    return l
}

/// Blocks the stop signals; a thread waits for them and calls `onStop`.
func handleStopSignals(_ onStop: @escaping @Sendable () -> Void) {
    var set = sigset_t()
    sigemptyset(&set)
    for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
    pthread_sigmask(SIG_BLOCK, &set, nil)
    signal(SIGPIPE, SIG_IGN)
    Thread {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        var sig: Int32 = 0
        sigwait(&set, &sig)
        onStop()
    }.start()
}

struct HA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twinfs-ha",
        abstract: "TwinFS's heartbeat daemon: keeps the floating address on exactly one healthy node.",
        subcommands: [Run.self, Status.self, Witness.self, Arp.self])
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground (systemd: Type=simple).")
    @Option(help: "The daemon's TOML config (see ctdb-like/twinfs-ha.example.toml).") var config: String

    func run() throws {
        let cfg: HAConfig
        do { cfg = try HAConfig.load(path: config) } catch { fail(error) }
        let log = makeLogger("twinfs-ha.\(cfg.node)")
        let d: HADaemon
        do { d = try HADaemon(config: cfg, logger: log) } catch { fail(error) }
        handleStopSignals { d.requestStop() }
        do { throw ExitCode(try d.run()) } catch let e as AdminError { fail(e) }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the running daemon: nodes, states, who holds which address, witness, last transitions.")
    @Option(help: "The daemon's TOML config.") var config: String
    @Flag(help: "Print JSON (keys documented in ctdb-like/README.md).") var json = false

    func run() throws {
        let cfg: HAConfig
        do { cfg = try HAConfig.load(path: config) } catch { fail(error) }
        let resp: ControlResponse
        do { resp = try ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "status"), timeout: .seconds(5)) } catch {
            fail(AdminError(.notRunning, problem: "twinfs-ha is not running (no answer on \(cfg.controlSocket))",
                            fix: "start it with `systemctl start twinfs-ha` or `twinfs-ha run --config \(config)`"))
        }
        guard resp.ok, let body = resp.body else { fail(AdminError(problem: "the daemon answered with an error: \(resp.error ?? "?")", fix: "check its log")) }
        if json { out(body); return }
        guard let s = try? JSONDecoder().decode(HADaemon.Status.self, from: Data(body.utf8)) else { out(body); return }
        out("Node \(s.node)  state \(s.state)  \(s.healthy ? (s.caughtUp == false ? "healthy, catching up (no failback here yet)" : "healthy") : "UNHEALTHY")\(s.lastMonitorError.isEmpty || s.healthy ? "" : " (\(s.lastMonitorError))")")
        out("  holds       \(s.holds.isEmpty ? "nothing" : s.holds.joined(separator: ", "))   (addresses \(s.addresses.joined(separator: ", ")), preferred \(s.preferred))")
        out("  peer \(s.peer)      \(s.peerAlive ? "alive" : "NOT HEARD")\(s.peerAlive ? (s.peerHolds ? ", holds the addresses" : ", holds nothing") + (s.peerHealthy ? ", healthy" : ", unhealthy") : "")\(s.peerLastBeatMs.map { "  (last beat \($0) ms ago)" } ?? "")")
        if let w = s.witness {
            out("  witness     \(w): lease \(s.leaseHolder.map { $0.isEmpty ? "free" : "held by \($0)" } ?? "?")\(s.leaseValidMs.map { ", ours for \($0) ms" } ?? "")")
        } else {
            out("  witness     none (a cut heartbeat link is guarded by an ARP probe only; see ctdb-like/README.md)")
        }
        out("  packets     \(s.beatsSent) beats sent, \(s.beatsReceived) received, \(s.packetsDropped) dropped (malformed or unauthenticated)")
        if (s.fencings ?? 0) + (s.stalls ?? 0) > 0 {
            out("  fence       \(s.fencings ?? 0) hold(s) dropped (fence, lost carrier, vanished address), \(s.stalls ?? 0) stall(s) of this daemon")
        }
        for t in s.transitions.suffix(10) { out("  \(t.time)  \(t.event): \(t.reason)") }
    }
}

struct Witness: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the witness (third vote) on a third machine both nodes reach.")
    @Option(help: "Address to listen on, ipv4:port.") var listen: String
    @Option(name: .customLong("secret-file"), help: "The cluster secret (the same file as the nodes').") var secretFile: String
    @Option(help: "Seconds a lease lasts (the nodes' witness.lease; their default is beat_interval x dead_after + 0.05 = 0.35).") var lease: Double = 0.35

    func run() throws {
        let log = makeLogger("twinfs-ha.witness")
        do {
            let secret = try SecretFile.load(path: secretFile)
            let w = try WitnessServer(listen: listen, secret: secret, lease: lease, logger: log)
            w.run()
        } catch { fail(error) }
    }
}

struct Arp: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "ARP helpers for the event scripts.", subcommands: [Announce.self, Probe.self])

    struct Announce: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send gratuitous ARP (request + reply) for an address.")
        @Option var interface: String
        @Option var address: String
        @Option var count: Int = 3
        func run() throws {
            let rc = SystemNet.announce(HAConfig.PublicAddress(address: address, prefix: 32, interface: interface), count: count)
            if rc < 0 { fail(AdminError(problem: "gratuitous ARP on \(interface) failed: \(String(cString: strerror(-rc)))", fix: "check the interface name; run as root")) }
        }
    }

    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Exit 0 if nobody answers ARP for the address, 1 if someone does.")
        @Option var interface: String
        @Option var address: String
        @Option(name: .customLong("timeout-ms")) var timeoutMs: Int = 200
        func run() throws {
            let rc = SystemNet.probe(interface: interface, address: address, timeoutMs: timeoutMs)
            if rc < 0 { fail(AdminError(problem: "ARP probe on \(interface) failed: \(String(cString: strerror(-rc)))", fix: "check the interface name; run as root")) }
            throw ExitCode(rc)
        }
    }
}

HA.main()
