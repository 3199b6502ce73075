import TwinCore

/// What the healer does on demand, called by the replicated volume before it serves a request
/// and by the peer service before it applies a peer's change. While a replaced disk is being
/// rebuilt, this is what lets the mount show the whole namespace and correct bytes from the
/// first minute: a directory is listed from the peer the first time it is used, and a file
/// still awaited is received before it is opened.
public protocol HealHooks: AnyObject, Sendable {
    /// Makes sure directory `path` (and its ancestors) hold every entry the peer has.
    func prepareDirectory(path: String) throws(FSError)
    /// If file `id` still awaits its content from the peer, receives it now (bounded wait).
    func prepareFile(id: UInt64) throws(FSError)
    /// The size a placeholder will have once healed; nil for every other file.
    func awaitedSize(id: UInt64) -> Int64?
    /// The peer committed file `id` whole and verified on this brick.
    func received(id: UInt64)
    /// The peer's send of file `id` broke off before its commit (already recorded in the
    /// journal as an incomplete replica): fetch it whole, and serve nothing of it until then.
    func awaitReplica(id: UInt64)
    /// A client here replaces file `id`'s whole content (an open with O_TRUNC, a truncate to
    /// zero): the bytes of an incomplete replica no longer matter, nothing is awaited for it.
    func replacedLocally(id: UInt64)
    /// A client wrote through this node's mount, or the peer sent a client's write (`id`, not
    /// a heal send): healing yields to ingest.
    func noteIngest(id: UInt64)
    /// This node's heal state as JSON (the peer's `twinfs heal info`).
    func infoJSON(summary: Bool) -> [UInt8]
}
