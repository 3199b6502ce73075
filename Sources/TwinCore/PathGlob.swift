/// A path pattern over volume-relative paths ("STUDIES/2019/x.dcm"), matched byte by byte:
/// `*` any run of bytes within one component, `**` as a whole component any number of
/// components (none included), `?` one byte other than "/", `[abc]`/`[a-z]`/`[!a]` one byte of
/// a set. No other byte is special. Checked when it is made, so a config with a broken pattern is
/// refused at start, not silently matching nothing.
public struct PathGlob: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    private let components: [Component]

    enum Component: Sendable, Equatable {
        /// "**": zero or more whole components.
        case globstar
        case name([Token])
    }

    enum Token: Sendable, Equatable {
        case byte(UInt8)
        case anyByte
        case anyRun
        case set(negated: Bool, ranges: [ClosedRange<UInt8>])
    }

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case empty, absolute, dotComponent, unclosedSet, emptyComponent, doubleStarInComponent
        public var description: String {
            switch self {
            case .empty: return "is empty"
            case .absolute: return "starts with / (patterns are relative to the volume's root)"
            case .dotComponent: return "has a . or .. component"
            case .unclosedSet: return "has a [ without its ]"
            case .emptyComponent: return "has an empty component (// or a trailing /)"
            case .doubleStarInComponent: return "uses ** inside a name (** stands alone between slashes)"
            }
        }
    }

    public var description: String { pattern }

    public init(_ pattern: String) throws(Problem) {
        guard !pattern.isEmpty else { throw .empty }
        guard !pattern.hasPrefix("/") else { throw .absolute }
        var comps: [Component] = []
        for part in pattern.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let bytes = Array(part)
            guard !bytes.isEmpty else { throw .emptyComponent }
            guard bytes != [46], bytes != [46, 46] else { throw .dotComponent }
            comps.append(bytes == Array("**".utf8) ? .globstar : .name(try Self.tokens(bytes)))
        }
        self.pattern = pattern
        self.components = comps
    }

    private static func tokens(_ bytes: [UInt8]) throws(Problem) -> [Token] {
        var out: [Token] = []
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "*"):
                if i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "*") { throw .doubleStarInComponent }
                out.append(.anyRun)
            case UInt8(ascii: "?"):
                out.append(.anyByte)
            case UInt8(ascii: "["):
                let (token, next) = try set(bytes, from: i)
                out.append(token)
                i = next
                continue
            default:
                out.append(.byte(b))
            }
            i += 1
        }
        return out
    }

    /// `[...]` starting at `start`; returns the token and the index after `]`.
    private static func set(_ bytes: [UInt8], from start: Int) throws(Problem) -> (Token, Int) {
        var i = start + 1
        let negated = i < bytes.count && (bytes[i] == UInt8(ascii: "!") || bytes[i] == UInt8(ascii: "^"))
        if negated { i += 1 }
        var ranges: [ClosedRange<UInt8>] = []
        var first = true
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "]") && !first { return (.set(negated: negated, ranges: ranges), i + 1) }
            first = false
            if i + 2 < bytes.count, bytes[i + 1] == UInt8(ascii: "-"), bytes[i + 2] != UInt8(ascii: "]") {
                ranges.append(min(b, bytes[i + 2])...max(b, bytes[i + 2]))
                i += 3
            } else {
                ranges.append(b...b)
                i += 1
            }
        }
        throw .unclosedSet
    }

    /// True when the whole relative path matches.
    public func matches(_ path: String) -> Bool { matches(bytes: Array(path.utf8)) }

    /// The same for a path as raw bytes (a brick name need not be UTF-8).
    public func matches(bytes path: [UInt8]) -> Bool {
        match(0, path.split(separator: UInt8(ascii: "/"))[...])
    }

    private func match(_ c: Int, _ parts: ArraySlice<ArraySlice<UInt8>>) -> Bool {
        guard c < components.count else { return parts.isEmpty }
        switch components[c] {
        case .globstar:
            var rest = parts
            while true {
                if match(c + 1, rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        case .name(let tokens):
            guard let first = parts.first, Self.matchComponent(tokens[...], first) else { return false }
            return match(c + 1, parts.dropFirst())
        }
    }

    private static func matchComponent(_ tokens: ArraySlice<Token>, _ name: ArraySlice<UInt8>) -> Bool {
        guard let t = tokens.first else { return name.isEmpty }
        switch t {
        case .anyRun:
            var rest = name
            while true {
                if matchComponent(tokens.dropFirst(), rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        case .anyByte:
            return !name.isEmpty && matchComponent(tokens.dropFirst(), name.dropFirst())
        case .byte(let b):
            return name.first == b && matchComponent(tokens.dropFirst(), name.dropFirst())
        case .set(let negated, let ranges):
            guard let b = name.first else { return false }
            return ranges.contains { $0.contains(b) } != negated && matchComponent(tokens.dropFirst(), name.dropFirst())
        }
    }
}
