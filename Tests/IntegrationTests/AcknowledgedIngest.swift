import Foundation
import Glibc
import Journal
import TestSupport
import XCTest

/// Writers that log every file whose close returned (its path under the writer's root and
/// the SHA-256 of its bytes), and the checks that each such file survived a crash intact:
/// shared by the crash and power-loss tests.
enum AcknowledgedIngest {
    /// The PACS ingest: 512 KiB files in Study/Series directories, each written, fsynced and
    /// closed, until the mount fails. argv: root, seed, log (appended, one line a file).
    static let pacsWriter = """
    import hashlib, os, random, sys
    root, seed, logp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    r = random.Random(seed)
    log = open(logp, 'a', buffering=1)
    i = 0
    try:
        while True:
            d = f'{root}/W{seed}/Study{i // 400:03d}/Series{(i // 100) % 4:02d}'
            os.makedirs(d, exist_ok=True)
            p = f'{d}/IM{i:05d}.dcm'
            data = r.randbytes(524288)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            log.write(f'{p[len(root) + 1:]} {hashlib.sha256(data).hexdigest()}\\n')
            i += 1
    except OSError:
        pass
    """

    /// One writer process a seed, each running `script` (argv: root, seed, log).
    static func start(_ script: String = pacsWriter, root: String, seeds: [Int], log: String) throws -> [Child] {
        try seeds.map { s in
            try Child(["/usr/bin/python3", "-c", script, root, "\(s)", log], stdout: "/dev/null", stderr: "/dev/null")
        }
    }

    /// After a crash the writers' calls fail and they end; one still running after 20 s is killed.
    static func reap(_ writers: [Child]) {
        for p in writers {
            let deadline = Date().addingTimeInterval(20)
            while p.isRunning && Date() < deadline { usleep(20_000) }
            if p.isRunning { kill(p.pid, SIGKILL) }
            p.wait()
        }
    }

    /// The acknowledged files (log lines) whose bytes under `dir` are missing or differ,
    /// one line each ("LOST path" or "BAD path"); empty when every one is intact.
    static func damaged(log: String, under dir: String) -> [String] {
        let check = runCommand(["python3", "-c", """
        import hashlib, sys
        for line in open(sys.argv[1]):
            p, h = line.split()
            try:
                if hashlib.sha256(open(sys.argv[2] + '/' + p, 'rb').read()).hexdigest() != h: print('BAD', p)
            except OSError as e:
                print('LOST', p, e)
        print('checked')
        """, log, dir], timeout: 600)
        guard check.stdout.hasSuffix("checked\n") else { return ["the check failed: " + check.stderr] }
        return check.stdout.split(separator: "\n").dropLast().map(String.init)
    }

    /// The acknowledged files (log lines) without a clean row in the journal holding the
    /// XXH3-128 of their bytes in `brick`.
    static func withoutCleanRow(_ lines: [Substring], journal path: String, brick: String) throws -> [String] {
        let j = try Journal(readOnlyPath: path)
        defer { j.close(cleanShutdown: false) }
        return try lines.map { String($0.split(separator: " ")[0]) }.filter { rel in
            guard let id = try j.id(atPath: rel), let row = try j.inode(id), !row.dirty else { return true }
            return row.hash != (try? xxh128(path: brick + "/" + rel))?.bytes
        }
    }

    /// The log's lines (one a file whose close returned).
    static func lines(_ log: String) throws -> [Substring] {
        try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
    }
}
