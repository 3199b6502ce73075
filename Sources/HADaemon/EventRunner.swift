import Foundation
import Glibc

/// Runs the event scripts as CTDB does: every executable `NN.name` of the events directory, in
/// name order, as `SCRIPT EVENT [ARGS]`. Each run has a timeout; a script that hangs is killed
/// with its whole process group and counts as a failure, so it never blocks the daemon.
public struct EventRunner: Sendable {
    public struct Outcome: Sendable, Equatable {
        public var ok: Bool
        /// "NN.name: exit 3", "NN.name: timed out after 5 s (killed)", ...
        public var failures: [String]
        /// `monitor` only: scripts that exited with `notCurrentExit` (healthy, but still
        /// catching up: no failback to this node yet).
        public var notCurrent: [String] = []
    }

    /// A `monitor` script's "this node serves, but is not caught up with its peer" (EX_TEMPFAIL).
    public static let notCurrentExit: Int32 = 75

    public let dir: String
    public let timeout: Double
    public let environment: [String: String]
    /// Script output goes here (appended).
    public let logPath: String

    public init(dir: String, timeout: Double, environment: [String: String], logPath: String) {
        self.dir = dir
        self.timeout = timeout
        self.environment = environment
        self.logPath = logPath
    }

    /// The scripts that take part, in order.
    public func scripts() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { n in
            let u = Array(n.utf8)
            guard u.count > 3, (0x30...0x39).contains(u[0]), (0x30...0x39).contains(u[1]), u[2] == UInt8(ascii: ".") else { return false }
            var st = stat()
            return stat(dir + "/" + n, &st) == 0 && st.st_mode & S_IFMT == S_IFREG && access(dir + "/" + n, X_OK) == 0
        }.sorted()
    }

    public func run(_ event: String, _ args: [String] = [], extraEnv: [String: String] = [:]) -> Outcome {
        var failures: [String] = [], notCurrent: [String] = []
        for s in scripts() {
            guard let f = runOne(dir + "/" + s, [event] + args, extraEnv: extraEnv) else { continue }
            if event == "monitor" && f == Self.exitText(Self.notCurrentExit) { notCurrent.append(s) } else { failures.append("\(s): \(f)") }
        }
        return Outcome(ok: failures.isEmpty, failures: failures, notCurrent: notCurrent)
    }

    /// nil on success, else why it failed.
    func runOne(_ path: String, _ args: [String], extraEnv: [String: String]) -> String? {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Its own process group, so a timeout kills whatever it started too; default signals.
        var sigs = sigset_t()
        sigemptyset(&sigs)
        posix_spawnattr_setsigmask(&attr, &sigs)
        var dfl = sigset_t()
        sigfillset(&dfl)
        posix_spawnattr_setsigdefault(&attr, &dfl)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        for (k, v) in extraEnv { env[k] = v }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                posix_spawn(&pid, path, &actions, &attr, UnsafeMutablePointer(mutating: a.baseAddress!),
                            UnsafeMutablePointer(mutating: e.baseAddress!))
            }
        }
        guard rc == 0 else { return "cannot start: \(String(cString: strerror(rc)))" }
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { return "wait failed: \(String(cString: strerror(errno)))" }
            if ContinuousClock.now >= deadline {
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return "timed out after \(timeout) s (killed)"
            }
            usleep(2_000)
        }
        let code = (status >> 8) & 0xFF, sig = status & 0x7F
        if sig != 0 { return "killed by signal \(sig)" }
        return code == 0 ? nil : Self.exitText(code)
    }

    static func exitText(_ code: Int32) -> String { "exit \(code)" }
}
