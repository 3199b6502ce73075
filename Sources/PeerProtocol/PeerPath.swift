/// Brick-relative paths and names received from the peer. The receiving node joins them to its
/// brick, so anything that could leave the brick ("..", "/abs"), reach TwinFS's private area
/// (".twinfs/...") or confuse libc (NUL) is refused here, before any file is touched.
/// Checks run on the raw bytes: Swift's `String ==` uses Unicode equivalence, the kernel does not.
public enum PeerPath {
    public static let maxPathBytes = 4096
    public static let maxNameBytes = 255
    /// The brick's private directory (BrickStore's `Brick.privateDir`; this module stays below it).
    public static let privateDirectory = ".twinfs"

    public enum Problem: Sendable, Equatable, CustomStringConvertible {
        case empty, absolute, emptyComponent, dotComponent, dotDotComponent, containsNUL, containsSlash
        case componentTooLong, tooLong, invalidUTF8, privateDirectory

        public var description: String {
            switch self {
            case .empty: return "empty name"
            case .absolute: return "absolute path"
            case .emptyComponent: return "empty component"
            case .dotComponent: return "'.' component"
            case .dotDotComponent: return "'..' component"
            case .containsNUL: return "NUL byte"
            case .containsSlash: return "'/' in a name"
            case .componentTooLong: return "component longer than \(PeerPath.maxNameBytes) bytes"
            case .tooLong: return "longer than \(PeerPath.maxPathBytes) bytes"
            case .invalidUTF8: return "not valid UTF-8"
            case .privateDirectory: return "inside TwinFS's private directory \(PeerPath.privateDirectory)"
            }
        }
    }

    /// Accepts a brick-relative path; "" is the brick root (as `NodeRef.root.path`) unless `allowRoot` is false.
    public static func validate(_ path: String, allowRoot: Bool = true) throws(PeerProtocolError) -> String {
        try validate(utf8: Array(path.utf8), allowRoot: allowRoot)
    }

    public static func validate(utf8 bytes: [UInt8], allowRoot: Bool = true) throws(PeerProtocolError) -> String {
        try checked(bytes, pathProblem(bytes, allowRoot: allowRoot))
    }

    /// Accepts one directory entry name.
    public static func validateName(_ name: String) throws(PeerProtocolError) -> String {
        try validateName(utf8: Array(name.utf8))
    }

    public static func validateName(utf8 bytes: [UInt8]) throws(PeerProtocolError) -> String {
        if bytes.isEmpty { throw .pathRejected(.empty, path: "\"\"") }
        if bytes.contains(slash) { throw .pathRejected(.containsSlash, path: display(bytes)) }
        return try checked(bytes, componentProblem(bytes[...]))
    }

    /// The path of `name` inside `parent`, refused if it would be the private directory or too long.
    public static func join(_ parent: String, _ name: String) throws(PeerProtocolError) -> String {
        let name = try validateName(name)
        return try validate(parent.isEmpty ? name : parent + "/" + name, allowRoot: false)
    }

    // MARK: - Checks

    private static let slash = UInt8(ascii: "/")
    private static let dot = UInt8(ascii: ".")

    private static func pathProblem(_ bytes: [UInt8], allowRoot: Bool) -> Problem? {
        if bytes.isEmpty { return allowRoot ? nil : .empty }
        if bytes.count > maxPathBytes { return .tooLong }
        if bytes[0] == slash { return .absolute }
        let components = bytes.split(separator: slash, omittingEmptySubsequences: false)
        if components[0].elementsEqual(privateDirectory.utf8) { return .privateDirectory }
        for c in components {
            if let p = componentProblem(c) { return p }
        }
        return nil
    }

    private static func componentProblem(_ c: ArraySlice<UInt8>) -> Problem? {
        if c.isEmpty { return .emptyComponent }
        if c.count == 1 && c.first == dot { return .dotComponent }
        if c.count == 2 && c.allSatisfy({ $0 == dot }) { return .dotDotComponent }
        if c.contains(0) { return .containsNUL }
        if c.count > maxNameBytes { return .componentTooLong }
        return nil
    }

    private static func checked(_ bytes: [UInt8], _ problem: Problem?) throws(PeerProtocolError) -> String {
        if let problem { throw .pathRejected(problem, path: display(bytes)) }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw .pathRejected(.invalidUTF8, path: display(bytes))
        }
        return s
    }

    private static func display(_ bytes: [UInt8]) -> String {
        PeerProtocolError.display(String(decoding: bytes.prefix(200), as: UTF8.self))
    }
}
