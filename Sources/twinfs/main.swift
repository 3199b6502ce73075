import ArgumentParser
import CTwinShims
import BrickStore
import ControlSocket
import Foundation
import Glibc
import HADaemon
import Healer
import Journal
import Logging
import TwinConfig
import TwinCore
import TwinNode
import Volume

/// Prints an admin error as one line and exits with its status (2 refused, 3 not running, 1 problem).
func exitWith(_ e: AdminError) -> Never { e.exit(tool: "twinfs") }

func out(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

func loadConfig(_ path: String) -> NodeConfig {
    do { return try NodeConfig.load(path: path) } catch { exitWith(error) }
}

struct TwinFS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twinfs",
        abstract: "TwinFS: a two-node replicated file service for PACS image archives.",
        version: twinfsVersion,
        subcommands: [NodeCommand.self, Status.self, Promote.self, HealCommand.self, ScrubCommand.self, Verify.self, JournalCommand.self, Demo.self])
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The node's TOML config file.")
    var config: String
}

struct NodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "node", abstract: "Run a node: mount the volume and serve it until SIGTERM.")
    @OptionGroup var options: ConfigOption
    @Option(help: "Mount here instead of the config's mountpoint (used by mount.twinfs).")
    var mountpoint: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    func run() throws {
        // Started from mount(8) or a script, the node must not keep their descriptors open
        // (a caller waiting for EOF on a pipe would wait for the node's whole lifetime).
        _ = twin_close_from(3)
        Node.blockStopSignals()
        var cfg = loadConfig(options.config)
        if let mp = mountpoint {
            cfg.mountpoint = URL(fileURLWithPath: mp).standardizedFileURL.path
            do { try cfg.checkLayout() } catch { exitWith(error) }
        }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let log = Logger(label: "twinfs.\(cfg.volume).\(cfg.node)")
        do {
            let rc = try Node(config: cfg, logger: log).run()
            throw ExitCode(rc)
        } catch let e as AdminError {
            exitWith(e)
        }
    }
}

struct Promote: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Let an OUTDATED node serve without its peer (it may lack changes the peer acknowledged).",
        discussion: "A node that started without reaching its peer, and owes it nothing, may be missing changes the peer stored while this node was down: it serves nothing (EIO) until the peer is reachable. --force makes it serve what it has; files changed on both nodes then become split brains when the peer returns.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Accept the risk: serve this node's data as it is.")
    var force = false

    func run() throws {
        let cfg = loadConfig(options.config)
        guard force else {
            exitWith(AdminError(problem: "promoting an OUTDATED node serves data that may lack changes its peer acknowledged",
                                fix: "start the peer if you can; otherwise run `twinfs promote --force --config \(options.config)`"))
        }
        let body = control(cfg, "promote", ["force": "1"])
        out(body.contains("true") ? "promoted: this node serves its data without its peer (it was OUTDATED)"
                                  : "nothing to do: this node was not OUTDATED")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the running node how it is.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print the status as JSON (shape documented in README.md).")
    var json = false
    @Flag(help: "With --json: add the peer's own report as \"peer_view\" (asked over the peer link).")
    var cluster = false

    func run() throws {
        let cfg = loadConfig(options.config)
        let resp: ControlResponse
        do { resp = try ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "status")) } catch { exitWith(error) }
        guard resp.ok, let body = resp.body else {
            exitWith(AdminError(problem: "the node answered with an error: \(resp.error ?? "unknown")", fix: "check the node's log"))
        }
        let ha = cfg.haConfig.flatMap(haStatus)
        // The peer as it reports itself over the link: the pair on one screen. Not in plain
        // `--json` (the HA monitor's 2 s probe must not wait on the peer): add `--cluster`.
        let peerView = cfg.peer == nil || (json && !cluster) ? nil : peerStatus(cfg)
        if json {
            // The HA daemon's view rides along as "ha" (absent without ha_config), the peer's as "peer_view".
            guard ha != nil || peerView != nil, var doc = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] else {
                out(body)
                return
            }
            if let ha, let haDoc = try? JSONSerialization.jsonObject(with: Data(ha.utf8)) { doc["ha"] = haDoc }
            if let pv = peerView, let pvDoc = try? JSONSerialization.jsonObject(with: Data(NodeHealInfo.encode(pv))) { doc["peer_view"] = pvDoc }
            let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data(body.utf8)
            out(String(decoding: data, as: UTF8.self))
            return
        }
        guard let s = try? JSONDecoder().decode(NodeStatus.self, from: Data(body.utf8)) else { out(body); return }
        out("Volume \(s.volume)  node \(s.node)  state \(s.state)")
        if s.state == "OUTDATED" {
            out("  OUTDATED    started without reaching its peer; it may lack changes the peer acknowledged meanwhile, so it serves nothing (EIO)")
            out("              way out: start the peer (this node then catches up and serves), or accept the risk: twinfs promote --force --config \(options.config)")
        }
        out("  mount       \(s.mountpoint)")
        out("  brick       \(s.brick)  (\(humanBytes(s.brickFreeBytes)) free of \(humanBytes(s.brickTotalBytes)))")
        if s.brickTotalBytes > 0 && s.brickFreeBytes < max(64 << 20, s.brickTotalBytes / 100) {
            out("  WARNING     the brick is full or nearly (\(humanBytes(s.brickFreeBytes)) free): writes fail with 'no space left'; fix: free space on the brick's disk or grow it")
        }
        if let qf = s.quarantineFiles, qf > 0 {
            out("  quarantine  \(qf) copies set aside (\(humanBytes(s.quarantineBytes ?? 0))) in \(s.brick)/.twinfs/quarantine; list: twinfs heal quarantine list")
        }
        out("  files       \(s.files) (\(humanBytes(s.bytes))), directories \(s.directories), symlinks \(s.symlinks), being written \(s.dirtyFiles)")
        out("  journal     \(s.journalPath) (\(humanBytes(s.journalBytes)))")
        out("  uptime      \(duration(s.uptimeSeconds)), pid \(s.pid), last stop \(s.lastShutdown)")
        if s.recoveredIntents + s.recoveredFiles > 0 {
            out("  recovery    \(s.recoveredIntents) unfinished changes re-read, \(s.recoveredFiles) files re-hashed at start")
        }
        if let r = s.replication {
            out("  peer        \(r.peerNode) at \(r.peerAddress): link \(r.link), replication \(r.mode)")
            out("  owed peer   \(r.pendingChanges) changes, \(r.pendingFiles) files (\(humanBytes(r.pendingBytes)))")
            if r.peerPendingChanges + r.peerPendingFiles > 0 {
                out("  peer owes   \(r.peerPendingChanges) changes, \(r.peerPendingFiles) files to this node")
            }
            if !r.lastLinkError.isEmpty && r.mode != "live" { out("  last error  \(r.lastLinkError)") }
            if let why = r.writesRefused {
                out("  WRITES REFUSED (EROFS): \(why); reads are still served")
                out("              way out: reconnect the peer (writes resume at once), or stop the node holding the lease (this node gets it when it runs out)")
            } else if let w = r.witness {
                out("  writes      witness mode (\(w)): \(r.mode == "degraded" ? "accepted, this node holds the witness's lease" : "while cut off from the peer, only with the witness's lease")")
            }
            if r.splitBrainCount > 0 {
                out("  SPLIT BRAIN \(r.splitBrainCount) entries changed on both nodes while apart (both copies kept):")
                for e in r.splitBrain { out("              \(e.path)  (id \(e.id), \(e.detected)): \(e.reason)") }
            }
        } else {
            out("  peer        none configured")
        }
        if let h = s.heal {
            var line = h.rebuilding ? "REBUILDING this brick from the peer; " : ""
            line += "\(h.filesAwaited) files (\(humanBytes(h.bytesAwaited))) to receive, walk \(h.crawl)\(h.paused ? " (PAUSED)" : "")"
            out("  heal        \(line)")
            out("  scrub       \(h.scrub), last finished \(h.lastScrub ?? "never")\(h.corruptFound > 0 ? ", \(h.corruptFound) files corrupt and not repaired (see `twinfs scrub status`)" : "")")
        }
        if let p = peerView {
            out("Node \(p.node) (peer)  state \(p.state)")
            if let free = p.brickFreeBytes, let total = p.brickTotalBytes {
                out("  brick       \(p.brickPath.map { $0 + "  " } ?? "")(\(humanBytes(free)) free of \(humanBytes(total)))")
            }
            if let f = p.files, let b = p.bytes { out("  files       \(f) (\(humanBytes(b)))") }
            if let j = p.journalPath { out("  journal     \(j)\(p.journalBytes.map { " (\(humanBytes($0)))" } ?? "")") }
            out("  owed peer   \(p.changesToPeer) changes, \(p.filesToPeer) files (\(humanBytes(p.bytesToPeer))); awaiting \(p.filesAwaited) files")
            out("  heal        \(p.crawl.kind == "none" ? "idle" : "\(p.crawl.kind) \(p.crawl.state)"), split brain \(p.splitBrain), last scrub \(p.lastScrub ?? "never")")
        } else if cfg.peer != nil {
            out("Node \(cfg.peer!.node) (peer)  not reachable from this node")
        }
        if let path = cfg.haConfig {
            if let ha, let h = try? JSONDecoder().decode(HADaemon.Status.self, from: Data(ha.utf8)) {
                out("  address     \(h.holds.isEmpty ? "held by the peer or nobody" : "held here: " + h.holds.joined(separator: ", ")) (twinfs-ha \(h.state), peer \(h.peerAlive ? "heard" : "NOT HEARD")\(h.peerHolds ? ", peer holds it" : ""))")
            } else {
                out("  address     twinfs-ha not answering (config \(path))")
            }
        }
    }

    /// The peer's own report (asked over the peer link by this node), or nil.
    func peerStatus(_ cfg: NodeConfig) -> NodeHealInfo? {
        guard let r = try? ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "heal-info", arguments: ["summary": "1"]),
                                                 timeout: .seconds(5)),
              r.ok, let body = r.body, let doc = try? JSONDecoder().decode(HealInfoDocument.self, from: Data(body.utf8)),
              doc.nodes.count > 1, doc.nodes[1].reachable else { return nil }
        return doc.nodes[1]
    }

    /// The HA daemon's status JSON, or nil if it does not answer.
    func haStatus(_ path: String) -> String? {
        guard let c = try? HAConfig.load(path: path),
              let r = try? ControlServer.request(path: c.controlSocket, ControlRequest(command: "status"), timeout: .seconds(2)),
              r.ok else { return nil }
        return r.body
    }

    func duration(_ s: Int) -> String {
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m \(s % 60)s" }
        return "\(s / 3600)h \(s % 3600 / 60)m"
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read every file of the brick and compare it with the journal's XXH3-128.",
        discussion: "Exit status: 0 when brick and journal agree, 1 when a problem was found, 2 on bad input.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() throws {
        let cfg = loadConfig(options.config)
        // A running node group-commits namespace changes a moment after they happen: have it
        // commit everything first, so that verify compares against the journal as of now.
        if FileManager.default.fileExists(atPath: cfg.controlSocket) {
            _ = try? ControlServer.request(path: cfg.controlSocket, ControlRequest(command: "sync"), timeout: .seconds(60))
        }
        let journal: Journal
        do {
            journal = try Journal(readOnlyPath: cfg.journal)
        } catch {
            exitWith(error.adminError)
        }
        guard journal.identity == cfg.identity else {
            exitWith(JournalError.foreign(path: cfg.journal, found: journal.identity, expected: cfg.identity).adminError)
        }
        let brick: Brick
        do { brick = try Brick(path: cfg.brick) } catch { exitWith(error) }
        let report: VerifyReport
        do {
            report = try Verifier(brick: brick, journal: journal).run { p in
                if !json { out("\(p.kind.rawValue)  \(p.path)  \(p.detail)") }
            }
        } catch {
            exitWith(error.adminError)
        }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            out(String(decoding: (try? enc.encode(report)) ?? Data(), as: UTF8.self))
        } else {
            out("verified \(report.filesChecked) files and \(report.directoriesChecked) directories, \(report.bytesHashed) bytes hashed; \(report.inProgress) being written; \(report.problems.count) problems")
        }
        if !report.problems.isEmpty { throw ExitCode(1) }
    }
}

struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "journal", abstract: "Journal maintenance.",
                                                    subcommands: [Rebuild.self])

    struct Rebuild: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rebuild the journal from the brick (node stopped). The old journal is kept as a backup.")
        @OptionGroup var options: ConfigOption

        func run() throws {
            let cfg = loadConfig(options.config)
            do {
                let r = try JournalRebuilder(brickPath: cfg.brick, journalPath: cfg.journal, identity: cfg.identity,
                                             nodeOrdinal: cfg.nodeOrdinal).run()
                out("journal \(cfg.journal) rebuilt from \(cfg.brick): \(r.files) files (\(r.bytes) bytes), \(r.directories) directories, \(r.symlinks) symlinks, \(r.idsAssigned) new ids")
                if let b = r.backup { out("the previous journal is kept as \(b)") }
            } catch {
                exitWith(error)
            }
        }
    }
}

TwinFS.main()
