import Foundation
import Glibc

// Child processes for the integration and HA tests: posix_spawn and waitpid (Foundation's
// Process was seen to hang in waitUntilExit on this platform when children exit quickly).

public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var ok: Bool { status == 0 }
    public init(status: Int32, stdout: String, stderr: String) { self.status = status; self.stdout = stdout; self.stderr = stderr }
}

public struct SpawnError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// A child process started with posix_spawnp and reaped with waitpid.
public final class Child: @unchecked Sendable {
    public let pid: pid_t
    public let args: [String]
    private var exitStatus: Int32?
    private let lock = NSLock()

    /// Starts `args[0]` (a path, or a name looked up in PATH) with stdin from /dev/null and
    /// stdout/stderr appended to the given files.
    public init(_ args: [String], stdout: String, stderr: String, environment: [String: String]? = nil) throws {
        self.args = args
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        let env = (environment.map { ProcessInfo.processInfo.environment.merging($0) { $1 } }
            ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        let cenv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { (cargs + cenv).forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawnp(&p, args[0], &actions, nil, cargs, cenv)
        guard rc == 0 else { throw SpawnError(description: "cannot start \(args): \(String(cString: strerror(rc)))") }
        pid = p
    }

    /// Non-blocking: false once the child has exited (and was reaped).
    public var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        if exitStatus != nil { return false }
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid { exitStatus = Self.decode(st); return false }
        return r == 0
    }

    /// Blocks until the child exits; returns its exit status (128+signal when killed).
    @discardableResult
    public func wait() -> Int32 {
        lock.lock()
        defer { lock.unlock() }
        if let s = exitStatus { return s }
        var st: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &st, 0) } while r < 0 && errno == EINTR
        exitStatus = r == pid ? Self.decode(st) : -1
        return exitStatus!
    }

    /// Waits at most `timeout` seconds; nil if the child is still running.
    public func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning {
            if Date() > deadline { return nil }
            usleep(10_000)
        }
        return wait()
    }

    /// Sends `signal` unless the child was already reaped (its pid may be reused then).
    public func signal(_ sig: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if exitStatus == nil { _ = Glibc.kill(pid, sig) }
    }

    /// SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status.
    @discardableResult
    public func stop(signal sig: Int32 = SIGTERM, timeout: TimeInterval = 5) -> Int32 {
        signal(sig)
        if let s = wait(timeout: timeout) { return s }
        signal(SIGKILL)
        return wait()
    }

    public var terminationStatus: Int32 { lock.lock(); defer { lock.unlock() }; return exitStatus ?? -1 }

    public static func decode(_ st: Int32) -> Int32 {
        let sig = st & 0x7f
        return sig == 0 ? (st >> 8) & 0xff : 128 + sig
    }
}

/// Runs a command with a hard time limit (`timeout -k`, so a child stuck on a dead mount is
/// killed too) and returns its status and output.
@discardableResult
public func runCommand(_ args: [String], timeout: Int = 120, environment: [String: String]? = nil) -> CommandResult {
    let base = "/tmp/twinfs-test-cmd-\(UUID().uuidString)"
    defer { unlink(base + ".out"); unlink(base + ".err") }
    let argv = ["timeout", "-k", "5", "\(timeout)"] + args
    let c: Child
    do {
        c = try Child(argv, stdout: base + ".out", stderr: base + ".err", environment: environment)
    } catch {
        return CommandResult(status: -1, stdout: "", stderr: "\(error)")
    }
    let status = c.wait()
    let o = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
    let e = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
    return CommandResult(status: status, stdout: o, stderr: e)
}

