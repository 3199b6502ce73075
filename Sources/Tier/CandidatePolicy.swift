import TwinConfig
import TwinCore

/// Where a file's bytes are, as far as the tier is concerned.
public enum Residence: Sendable, Equatable {
    /// Only on the bricks.
    case hot
    /// Uploaded and verified; the bricks hold a stub.
    case tiered
    /// Recalled: bytes on the bricks again, the object still in the store.
    case recalled
}

/// What the tier needs to know about one file to decide; read from the journal, never the brick,
/// so a pass over ten million files is a scan of rows, not of inodes.
public struct FileFacts: Sendable, Equatable {
    public var path: [UInt8]
    public var kind: EntryKind
    public var size: Int64
    /// Last change of content (mtime) and of anything (ctime), nanoseconds since the epoch.
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    public var nlink: Int
    /// An open handle anywhere (this node or the peer): the file is not closed.
    public var isOpen: Bool
    public var residence: Residence

    public init(path: [UInt8], kind: EntryKind = .file, size: Int64, mtimeNs: Int64, ctimeNs: Int64, nlink: Int = 1,
                isOpen: Bool = false, residence: Residence = .hot) {
        self.path = path
        self.kind = kind
        self.size = size
        self.mtimeNs = mtimeNs
        self.ctimeNs = ctimeNs
        self.nlink = nlink
        self.isOpen = isOpen
        self.residence = residence
    }
}

/// Why a file stays hot this pass (shown by `tier status` and counted in the gauges).
public enum SkipReason: Sendable, Equatable {
    case notRegularFile
    case empty
    case alreadyTiered
    case open
    /// Changed too recently: it qualifies at `qualifiesAtNs` if left alone.
    case changedRecently(qualifiesAtNs: Int64)
    case notInPaths
    /// Several names share the inode: one object per name would store it twice and a recall
    /// through one name would not restore the others.
    case hardLinked(nlink: Int)
    case unsupportedName(ObjectKey.Refusal)
}

public enum Verdict: Sendable, Equatable {
    case qualifies(ObjectKey)
    case skip(SkipReason)
}

/// Which files go to the tier: regular, non-empty, closed, unchanged for the configured days,
/// matching a path pattern (if any), single-named, with a name S3 can hold. A pure function of
/// the facts and the time, so it is tested without a journal and runs as a row scan.
public struct CandidatePolicy: Sendable {
    public let prefix: String
    public let qualifyAfterNs: Int64
    public let paths: [PathGlob]

    public init(prefix: String, qualifyAfterDays: Double, paths: [PathGlob]) {
        self.prefix = prefix
        self.qualifyAfterNs = Int64(qualifyAfterDays * 86_400 * 1e9)
        self.paths = paths
    }

    public init(_ config: TierConfig) {
        self.init(prefix: config.prefix, qualifyAfterDays: config.qualifyAfterDays, paths: config.paths)
    }

    /// The cheap checks first: most files of a pass are rejected by kind, residence or age.
    public func verdict(_ f: FileFacts, nowNs: Int64) -> Verdict {
        guard f.kind == .file else { return .skip(.notRegularFile) }
        guard f.residence == .hot else { return .skip(.alreadyTiered) }
        guard f.size > 0 else { return .skip(.empty) }
        let lastChange = max(f.mtimeNs, f.ctimeNs)
        let (due, overflow) = lastChange.addingReportingOverflow(qualifyAfterNs)
        guard !overflow, due <= nowNs else { return .skip(.changedRecently(qualifiesAtNs: overflow ? .max : due)) }
        guard !f.isOpen else { return .skip(.open) }
        guard f.nlink == 1 else { return .skip(.hardLinked(nlink: f.nlink)) }
        if !paths.isEmpty {
            guard paths.contains(where: { $0.matches(bytes: f.path) }) else { return .skip(.notInPaths) }
        }
        do {
            return .qualifies(try ObjectKey(prefix: prefix, path: f.path))
        } catch {
            return .skip(.unsupportedName(error))
        }
    }

    /// The files that qualify, in the order given, lazily (a pass can stop at its batch size).
    public func candidates<S: Sequence>(_ files: S, nowNs: Int64) -> some Sequence<(FileFacts, ObjectKey)> where S.Element == FileFacts {
        files.lazy.compactMap { f -> (FileFacts, ObjectKey)? in
            if case .qualifies(let key) = verdict(f, nowNs: nowNs) { return (f, key) }
            return nil
        }
    }
}
