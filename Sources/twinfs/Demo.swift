import ArgumentParser
import Foundation
import Glibc
import TwinConfig
import TwinNode

/// `twinfs demo`: a working volume on this one machine, mounted and usable, torn down on Ctrl-C.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a demo volume on this machine (configs, bricks and mounts under --dir); Ctrl-C stops it.")
    @Option(help: "Working directory for configs, bricks, journals and mount points.")
    var dir: String = "/tmp/twinfs-demo"

    func run() throws {
        Node.blockStopSignals()
        let base = URL(fileURLWithPath: dir).standardizedFileURL.path
        let nodes = ["a", "b"]
        var children: [(String, Process)] = []
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        // The cluster secret both nodes share (kept, so a restarted demo pairs again).
        let secret = "\(base)/cluster.secret"
        if !FileManager.default.fileExists(atPath: secret) {
            var key = [UInt8](repeating: 0, count: 32)
            for i in key.indices { key[i] = UInt8.random(in: 0...255) }
            let hex = key.map { String(format: "%02x", $0) }.joined() + "\n"
            guard FileManager.default.createFile(atPath: secret, contents: Data(hex.utf8), attributes: [.posixPermissions: 0o600]) else {
                out("cannot write \(secret)")
                throw ExitCode(2)
            }
        }
        let ports = ["a": 7780, "b": 7781]
        // Both nodes start together: each waits up to its peer timeout for the other before mounting.
        for n in nodes {
            let root = "\(base)/\(n)"
            for d in ["\(root)/brick", "\(root)/mnt", "\(root)/state"] {
                try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            }
            let cfgPath = "\(base)/\(n).toml"
            let text = NodeConfig.render(volume: "demo", node: n, brick: "\(root)/brick", journal: "\(root)/state/journal.db",
                                         mountpoint: "\(root)/mnt", controlSocket: "\(root)/state/control.sock",
                                         listen: "127.0.0.1:\(ports[n]!)",
                                         peer: NodeConfig.Peer(node: n == "a" ? "b" : "a",
                                                               address: "127.0.0.1:\(ports[n == "a" ? "b" : "a"]!)",
                                                               secretFile: secret))
            try text.write(toFile: cfgPath, atomically: true, encoding: .utf8)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = ["node", "--config", cfgPath]
            let logURL = URL(fileURLWithPath: "\(root)/state/node.log")
            _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
            let logHandle = try FileHandle(forWritingTo: logURL)
            p.standardOutput = logHandle
            p.standardError = logHandle
            try p.run()
            children.append((n, p))
        }
        for (n, p) in children {
            let root = "\(base)/\(n)"
            let logURL = URL(fileURLWithPath: "\(root)/state/node.log")
            let mp = "\(root)/mnt"
            let deadline = Date().addingTimeInterval(30)
            while !Preflight.mountPoints().contains(mp) {
                if !p.isRunning || Date() > deadline {
                    let log = (try? String(contentsOfFile: logURL.path, encoding: .utf8)) ?? ""
                    out("node \(n) did not mount; its log:\n\(log)")
                    stop(children)
                    throw ExitCode(2)
                }
                usleep(50_000)
            }
        }
        out("""
        TwinFS demo volume 'demo' is up: two nodes replicating over 127.0.0.1:7780/7781.
          node a: mounted at \(base)/a/mnt over brick \(base)/a/brick
          node b: mounted at \(base)/b/mnt over brick \(base)/b/brick
        Try:
          cp -r /usr/share/doc/fuse3 \(base)/a/mnt/
          ls -l \(base)/b/mnt/fuse3                                   # written on a, read on b
          ls -l \(base)/a/brick/fuse3 \(base)/b/brick/fuse3           # both bricks: plain directories
          \(exe) status --config \(base)/a.toml
          \(exe) verify --config \(base)/b.toml
          kill -STOP $(pgrep -f 'node --config \(base)/b.toml')       # freeze b: a goes DEGRADED after 2.5 s
        Logs: \(base)/a/state/node.log, \(base)/b/state/node.log.  Press Ctrl-C to stop and unmount.
        """)
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        // Also end when a node dies on its own.
        let pids = children.map { $0.1.processIdentifier }
        let watcher = Thread {
            while pids.allSatisfy({ kill($0, 0) == 0 && !Demo.isZombie($0) }) { usleep(200_000) }
            kill(getpid(), SIGTERM)
        }
        watcher.start()
        var sig: Int32 = 0
        sigwait(&set, &sig)
        out("stopping the demo…")
        stop(children)
        out("demo stopped; data kept in \(base) (start again to reuse it)")
    }

    static func isZombie(_ pid: pid_t) -> Bool {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return true }
        return s[s.index(close, offsetBy: 2)] == "Z"
    }

    func stop(_ children: [(String, Process)]) {
        for (_, p) in children where p.isRunning { p.terminate() }
        for (_, p) in children {
            let deadline = Date().addingTimeInterval(30)
            while p.isRunning && Date() < deadline { usleep(50_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
    }
}
