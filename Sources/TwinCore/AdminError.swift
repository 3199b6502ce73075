import Glibc
/// An error an administrator reads: one line naming the problem and the fix.
/// Maps to a process exit status only in `main` (2 = bad input / refused, 3 = node not running).
public struct AdminError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Bad config, wrong brick, busy mount point...: refused, nothing changed. Exit 2.
        case refused
        /// The node asked for is not running. Exit 3.
        case notRunning
        /// A check found a problem (verify). Exit 1.
        case problemFound
    }

    public let kind: Kind
    public let problem: String
    public let fix: String

    public init(_ kind: Kind = .refused, problem: String, fix: String) {
        self.kind = kind
        self.problem = problem
        self.fix = fix
    }

    public var description: String { fix.isEmpty ? problem : "\(problem); fix: \(fix)" }

    public var exitCode: Int32 {
        switch kind {
        case .refused: return 2
        case .notRunning: return 3
        case .problemFound: return 1
        }
    }
}

extension AdminError {
    /// Prints "TOOL: problem; fix: ..." on stderr as one line and exits with the error's status
    /// (the CLIs' shared way out).
    public func exit(tool: String) -> Never {
        let line = "\(tool): \(description)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        Glibc.exit(exitCode)
    }
}
