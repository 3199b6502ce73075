/// The client's view of the link, as the node shows it (`twinfs status`) and acts on it
/// (replicate while `.up`, mark changes for heal while `.down`).
public enum PeerLinkState: Sendable, Equatable, CustomStringConvertible {
    /// Opening the connection and authenticating (first attempt or a reconnect).
    case connecting
    /// Authenticated; requests flow.
    case up
    /// Not connected, and why. The client keeps retrying (with backoff) until it is shut down.
    case down(PeerLinkError)

    public var isUp: Bool { self == .up }

    public var description: String {
        switch self {
        case .connecting: return "connecting"
        case .up: return "up"
        case .down(let why): return "down: \(why)"
        }
    }
}
