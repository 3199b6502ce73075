import Glibc

/// What the peer's refusal of a change means for the pair (pure; unit-tested).
///
/// A refusal is either about the peer's disk or about the data. A full, read-only or failing
/// brick refuses every change alike, and says nothing about whether the two namespaces agree:
/// the change stays owed and is replayed once the disk takes changes again. Anything else
/// means the peer holds something different under that name, which only an admin may settle.
public enum PeerRefusal: Sendable, Equatable {
    /// The peer's disk cannot take changes now (full, over quota, read-only, I/O error, out
    /// of descriptors or memory): owed, retried, never a split brain.
    case storageFault
    /// The peer's namespace or copy differs from this node's.
    case conflict

    public init(errno e: Int32) {
        switch e {
        case ENOSPC, EDQUOT, EROFS, EIO, ENOMEM, EMFILE, ENFILE: self = .storageFault
        default: self = .conflict
        }
    }

    /// One line for the admin about a storage fault on the peer.
    public static func describe(_ e: Int32, _ what: String) -> String {
        let hint: String
        switch e {
        case ENOSPC, EDQUOT: hint = "the peer's brick is full; free space there"
        case EROFS: hint = "the peer's brick is read-only (remounted after an error?); check its disk and remount it read-write"
        default: hint = "check the peer's disk and its log"
        }
        return "the peer could not \(what): \(String(cString: strerror(e))); this node keeps serving and owes the change until the peer's disk takes it (\(hint))"
    }
}
