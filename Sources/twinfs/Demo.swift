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
        let nodes = ["a"]
        var children: [(String, Process)] = []
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        for n in nodes {
            let root = "\(base)/\(n)"
            for d in ["\(root)/brick", "\(root)/mnt", "\(root)/state"] {
                try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            }
            let cfgPath = "\(base)/\(n).toml"
            let text = NodeConfig.render(volume: "demo", node: n, brick: "\(root)/brick", journal: "\(root)/state/journal.db",
                                         mountpoint: "\(root)/mnt", controlSocket: "\(root)/state/control.sock",
                                         listen: "127.0.0.1:\(7780 + children.count)")
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
        TwinFS demo volume 'demo' is up.
          node a: mounted at \(base)/a/mnt over brick \(base)/a/brick
        Try:
          cp -r /usr/share/doc/fuse3 \(base)/a/mnt/
          ls -l \(base)/a/mnt/fuse3; ls -l \(base)/a/brick/fuse3     # the brick is a plain directory
          \(exe) status --config \(base)/a.toml
          \(exe) verify --config \(base)/a.toml
        Logs: \(base)/a/state/node.log.  Press Ctrl-C to stop and unmount.
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
