import ArgumentParser
import ControlSocket
import Fixity
import Foundation
import Glibc
import Healer
import Journal
import TwinConfig
import TwinCore
import TwinNode

/// Sends one heal/scrub command to the running node; exits with a one-line error otherwise.
func control(_ cfg: NodeConfig, _ command: String, _ args: [String: String] = [:], timeout: Int64 = 60) -> String {
    let resp: ControlResponse
    do {
        resp = try ControlServer.request(path: cfg.controlSocket, ControlRequest(command: command, arguments: args),
                                         timeout: .seconds(timeout))
    } catch { exitWith(error) }
    guard resp.ok, let body = resp.body else {
        exitWith(AdminError(problem: resp.error ?? "the node answered with an error", fix: "check the node's log (journalctl -u twinfs-node@...)"))
    }
    return body
}

func decode<T: Decodable>(_ type: T.Type, _ body: String) -> T {
    guard let v = try? JSONDecoder().decode(T.self, from: Data(body.utf8)) else {
        exitWith(AdminError(problem: "the node's answer could not be read", fix: "check that twinfs and the node are the same version"))
    }
    return v
}

/// A subcommand that sends one control command and prints one line (heal start/pause/resume,
/// scrub start/pause).
protocol ControlAction: ParsableCommand {
    static var command: String { get }
    static var done: String { get }
    var options: ConfigOption { get }
}

extension ControlAction {
    func run() throws {
        _ = control(loadConfig(options.config), Self.command)
        out(Self.done)
    }
}

func humanBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var v = Double(n)
    var i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
}

func humanSeconds(_ s: Int64) -> String {
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)m \(s % 60)s" }
    if s < 86400 { return "\(s / 3600)h \(s % 3600 / 60)m" }
    return "\(s / 86400)d \(s % 86400 / 3600)h"
}

struct HealCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heal", abstract: "See and steer self-heal: pending entries, rebuild, full heal, split brain, quarantine.",
        subcommands: [Info.self, Start.self, Full.self, Pause.self, Resume.self, SplitBrainCommand.self, QuarantineCommand.self])

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per node: pending entries, split brain, files healing now, bytes left, rate and ETA.",
            discussion: "Works on a stopped node too (from its journal, this node only). The --json shape is documented in README.md.")
        @OptionGroup var options: ConfigOption
        @Flag(help: "Counts only, no entry list.") var summary = false
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let cfg = loadConfig(options.config)
            let doc: HealInfoDocument
            if FileManager.default.fileExists(atPath: cfg.controlSocket),
               let r = try? ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "heal-info", arguments: ["summary": summary ? "1" : "0"]),
                                                  timeout: .seconds(30)), r.ok, let body = r.body {
                doc = decode(HealInfoDocument.self, body)
            } else {
                // The node is not running: what its journal says.
                let j: Journal
                do { j = try Journal(readOnlyPath: cfg.journal) } catch { exitWith(error.adminError) }
                var info: NodeHealInfo
                do { info = try NodeHealInfo.fromJournal(j, node: cfg.node, summary: summary) } catch { exitWith(error.adminError) }
                info.reachable = false
                if info.state == "HEALTHY" { info.state = "STOPPED" } else { info.state += " (STOPPED)" }
                doc = HealInfoDocument(volume: cfg.volume, nodes: [info])
            }
            if json {
                out(String(decoding: NodeHealInfo.encode(doc, pretty: true), as: UTF8.self))
                return
            }
            out("Volume \(doc.volume)")
            for (i, n) in doc.nodes.enumerated() {
                out("Node \(n.node)\(i == 0 ? " (this node)" : ""): \(n.state)")
                guard n.reachable || i == 0 else { out("  not reachable: its heal state is unknown from here"); continue }
                out("  pending entries  \(n.pendingEntries)  (\(n.changesToPeer) changes and \(n.filesToPeer) files to send, \(n.filesAwaited) files to receive)")
                out("  split brain      \(n.splitBrain)")
                var rate = "rate \(humanBytes(Int64(n.rateBytesPerSecond)))/s, \(String(format: "%.1f", n.rateFilesPerSecond)) files/s"
                if let eta = n.etaSeconds { rate += ", ETA \(humanSeconds(eta))" } else if n.bytesLeft > 0 { rate += ", ETA unknown (nothing moving)" }
                out("  bytes left       \(humanBytes(n.bytesLeft))  \(rate)")
                if n.crawl.kind != "none" {
                    out("  \(n.crawl.kind == "rebuild" ? "rebuild   " : "full heal ")       \(n.crawl.state): \(n.crawl.directories) directories, \(n.crawl.entries) entries walked, \(n.crawl.filesHealed) files (\(humanBytes(n.crawl.bytesHealed))) healed\(n.crawl.problems > 0 ? ", \(n.crawl.problems) problems (last: \(n.crawl.lastProblem ?? ""))" : "")")
                }
                if n.paused { out("  PAUSED           `twinfs heal resume` continues") }
                if !n.healingNow.isEmpty { out("  healing now      \(n.healingNow.prefix(5).joined(separator: ", "))\(n.healingNow.count > 5 ? ", ..." : "")") }
                if let e = n.entries, !e.isEmpty {
                    out("  entries:")
                    for x in e { out("    \(x.why.padding(toLength: 15, withPad: " ", startingAt: 0)) \(x.path)") }
                    if n.entriesNotListed > 0 { out("    ... and \(n.entriesNotListed) more") }
                }
            }
        }
    }

    struct Start: ControlAction {
        static let configuration = CommandConfiguration(abstract: "Heal pending entries now (retrying any that waited).")
        static let command = "heal-start"
        static let done = "heal started: pending entries are being healed; watch with `twinfs heal info`"
        @OptionGroup var options: ConfigOption
    }

    struct Full: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Walk both namespaces and repair whatever differs from the good side (never deletes).",
            discussion: "With --wait: a progress bar on a terminal, progress lines otherwise; exits 0 when the walk is done and nothing is pending, 1 if problems were found.")
        @OptionGroup var options: ConfigOption
        @Flag(help: "Wait until the full heal is done.") var wait = false

        func run() throws {
            let cfg = loadConfig(options.config)
            let started = Date()
            _ = control(cfg, "heal-full")
            guard wait else {
                out("full heal started; watch with `twinfs heal info` (or run with --wait)")
                return
            }
            let tty = isatty(1) == 1
            var lastLine = Date.distantPast
            while true {
                usleep(500_000)
                let doc = decode(HealInfoDocument.self, control(cfg, "heal-info", ["summary": "1"]))
                guard let me = doc.nodes.first else { continue }
                let st = me.crawl
                let finished = st.kind == "full" && st.state == "done" && (st.finished.flatMap { ISO8601DateFormatter().date(from: $0) } ?? .distantPast) >= started.addingTimeInterval(-1)
                let pending = doc.nodes.reduce(Int64(0)) { $0 + $1.pendingEntries }
                let text = "\(st.state): \(st.directories) directories, \(st.entries) entries, \(st.filesHealed) files healed (\(humanBytes(st.bytesHealed))), \(pending) pending"
                if tty {
                    let width = 30
                    let frac = finished && pending == 0 ? 1.0 : min(0.99, Double(st.entries) / Double(max(1, st.entries + pending + 1)))
                    let filled = Int(frac * Double(width))
                    let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
                    let line = "\r[\(bar)] \(Int(frac * 100))% \(text)"
                    _ = line.withCString { write(1, $0, strlen($0)) }
                } else if Date().timeIntervalSince(lastLine) >= 2 || finished {
                    out("heal full: \(text)")
                    lastLine = Date()
                }
                if finished && pending == 0 {
                    if tty { out("") }
                    out("full heal done: \(st.filesHealed) files (\(humanBytes(st.bytesHealed))) healed, \(st.problems) problems")
                    if st.problems > 0 { throw ExitCode(1) }
                    return
                }
            }
        }
    }

    struct Pause: ControlAction {
        static let configuration = CommandConfiguration(abstract: "Pause healing (pending entries stay recorded).")
        static let command = "heal-pause"
        static let done = "healing paused; `twinfs heal resume` continues where it stopped"
        @OptionGroup var options: ConfigOption
    }

    struct Resume: ControlAction {
        static let configuration = CommandConfiguration(abstract: "Resume healing.")
        static let command = "heal-resume"
        static let done = "healing resumed"
        @OptionGroup var options: ConfigOption
    }

    struct SplitBrainCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "split-brain", abstract: "List and resolve split brain.",
                                                        subcommands: [List.self, Resolve.self])

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Entries changed on both nodes while they were apart.")
            @OptionGroup var options: ConfigOption
            @Flag(help: "Print JSON.") var json = false
            func run() throws {
                let body = control(loadConfig(options.config), "split-brain-list")
                if json { out(body); return }
                let rows = decode([SplitBrainListing].self, body)
                if rows.isEmpty { out("no split brain"); return }
                for r in rows { out("\(r.path)  (id \(r.id), detected \(r.detected)): \(r.reason)") }
                out("\(rows.count) entries; resolve with `twinfs heal split-brain resolve PATH --source NODE | --latest-mtime | --bigger-file`")
            }
        }

        struct Resolve: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Resolve one entry (PATH) or all (--all): the losing copy is kept in quarantine, never deleted.",
                discussion: "Exit status 0 when every entry was resolved, 1 otherwise.")
            @OptionGroup var options: ConfigOption
            @Argument(help: "The entry's path in the volume (as `split-brain list` shows it).") var path: String?
            @Flag(help: "Resolve every entry.") var all = false
            @Option(help: "The node whose copy wins.") var source: String?
            @Flag(help: "The copy modified last wins.") var latestMtime = false
            @Flag(help: "The bigger copy wins.") var biggerFile = false
            @Flag(help: "Print JSON.") var json = false

            func validate() throws {
                guard (path != nil) != all else { throw ValidationError("give one PATH or --all") }
                guard [source != nil, latestMtime, biggerFile].filter({ $0 }).count == 1 else {
                    throw ValidationError("choose exactly one of --source NODE, --latest-mtime, --bigger-file")
                }
            }

            func run() throws {
                let policy = source != nil ? "source" : latestMtime ? "latest-mtime" : "bigger-file"
                var args = ["policy": policy]
                if let s = source { args["source"] = s }
                if let p = path { args["path"] = p }
                let body = control(loadConfig(options.config), "split-brain-resolve", args, timeout: 3600)
                let results = decode([SplitResolution].self, body)
                if json { out(body) } else {
                    if results.isEmpty { out(path.map { "no split brain at \($0)" } ?? "no split brain") }
                    for r in results { out("\(r.ok ? "resolved" : "NOT resolved")  \(r.path): \(r.message)") }
                }
                if results.isEmpty || results.contains(where: { !$0.ok }) { throw ExitCode(1) }
            }
        }
    }

    struct QuarantineCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "quarantine", abstract: "Copies set aside by heal (never deleted).",
                                                        subcommands: [List.self, Restore.self])

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List this node's quarantined copies.")
            @OptionGroup var options: ConfigOption
            @Flag(help: "Print JSON.") var json = false
            func run() throws {
                let body = control(loadConfig(options.config), "quarantine-list")
                if json { out(body); return }
                let rows = decode([QuarantineListing].self, body)
                if rows.isEmpty { out("quarantine is empty") }
                for r in rows { out("\(r.qid)  \(r.path)  \(humanBytes(r.size))  \(r.created)  \(r.reason)\n      kept at \(r.stored)") }
            }
        }

        struct Restore: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Copy a quarantined version back into the volume (through the mount, so both nodes get it).",
                discussion: "The copy goes to --to PATH (relative to the volume) or next to the original as NAME.quarantined-QID; an existing file is never overwritten. The copy is checked against the quarantined XXH3-128.")
            @OptionGroup var options: ConfigOption
            @Argument(help: "The number `quarantine list` shows.") var qid: Int64
            @Option(help: "Where in the volume to put it.") var to: String?

            func run() throws {
                let cfg = loadConfig(options.config)
                let rows = decode([QuarantineListing].self, control(cfg, "quarantine-list"))
                guard let r = rows.first(where: { $0.qid == qid }) else {
                    exitWith(AdminError(.refused, problem: "no quarantined copy number \(qid)", fix: "see `twinfs heal quarantine list`"))
                }
                let rel = to.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 } ?? "\(r.path).quarantined-\(r.qid)"
                guard !rel.isEmpty, !rel.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                    exitWith(AdminError(.refused, problem: "--to \(rel) is not a path inside the volume", fix: "give a path relative to the volume's root, without '..'"))
                }
                let dest = cfg.mountpoint + "/" + rel
                let src = open(r.stored, O_RDONLY | O_CLOEXEC)
                guard src >= 0 else {
                    exitWith(AdminError(problem: "cannot read \(r.stored): \(String(cString: strerror(errno)))", fix: "check the brick"))
                }
                defer { close(src) }
                let dst = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
                guard dst >= 0 else {
                    exitWith(AdminError(.refused, problem: "cannot create \(dest): \(String(cString: strerror(errno)))",
                                        fix: "choose a new name with --to PATH (an existing file is never overwritten)"))
                }
                var buf = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = read(src, &buf, buf.count)
                    if n < 0 { if errno == EINTR { continue }; exitWith(AdminError(problem: "read failed: \(String(cString: strerror(errno)))", fix: "check the brick")) }
                    if n == 0 { break }
                    var off = 0
                    while off < n {
                        let w = buf.withUnsafeBytes { write(dst, $0.baseAddress! + off, n - off) }
                        guard w > 0 else { exitWith(AdminError(problem: "write to \(dest) failed: \(String(cString: strerror(errno)))", fix: "check the node and free space")) }
                        off += w
                    }
                }
                guard fsync(dst) == 0, close(dst) == 0 else {
                    exitWith(AdminError(problem: "could not make \(dest) durable: \(String(cString: strerror(errno)))", fix: "check the node's log"))
                }
                let check = open(dest, O_RDONLY | O_CLOEXEC)
                let got = check >= 0 ? (try? XXH128Hasher.hash(fd: check))?.0.hex : nil
                if check >= 0 { close(check) }
                guard got == r.xxh128 else {
                    exitWith(AdminError(problem: "the restored copy at \(dest) does not hash to the quarantined XXH3-128", fix: "check the node's log; the quarantined copy is untouched"))
                }
                out("restored quarantined copy \(qid) of \(r.path) as \(rel) (\(humanBytes(r.size)), xxh128 \(r.xxh128) verified)")
            }
        }
    }
}

struct ScrubCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scrub", abstract: "Bit-rot scrub: re-read and re-hash every file; repair from the peer's verified copy.",
        subcommands: [Start.self, Pause.self, Status.self])

    struct Start: ControlAction {
        static let configuration = CommandConfiguration(abstract: "Start (or resume) a scrub of this node's brick.")
        static let command = "scrub-start"
        static let done = "scrub started; watch with `twinfs scrub status`"
        @OptionGroup var options: ConfigOption
    }

    struct Pause: ControlAction {
        static let configuration = CommandConfiguration(abstract: "Pause the scrub (it resumes where it stopped).")
        static let command = "scrub-pause"
        static let done = "scrub paused"
        @OptionGroup var options: ConfigOption
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Progress, findings, next scheduled scrub.")
        @OptionGroup var options: ConfigOption
        @Flag(help: "Print JSON.") var json = false
        func run() throws {
            let body = control(loadConfig(options.config), "scrub-status")
            if json { out(body); return }
            let s = decode(Scrubber.Status.self, body)
            let pct = s.bytesTotal > 0 ? min(100, Int(Double(s.bytesChecked) / Double(s.bytesTotal) * 100)) : 0
            out("scrub \(s.state): \(s.filesChecked) of \(s.filesTotal) files (\(humanBytes(s.bytesChecked)) of \(humanBytes(s.bytesTotal)), \(pct)%) at up to \(humanBytes(s.rateBytesPerSecond))/s")
            out("  started \(s.started ?? "never"), finished \(s.finished ?? "-"), next scheduled \(s.nextScheduled ?? "off")")
            out("  corrupt found \(s.corruptFound), repaired \(s.repaired)")
            for f in s.findings { out("  \(f.state.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0)) \(f.path): \(f.detail) (\(f.found))") }
        }
    }
}
