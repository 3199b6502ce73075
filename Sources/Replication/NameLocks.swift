import Foundation
import TwinCore

/// Cluster-wide name locks, served by the node with ordinal 1. A namespace change takes the
/// keys of the names it touches ("<parent id>/<name>", "c/<id>" for a file's content) before
/// it changes the local brick and holds them until the peer applied it, so two racing
/// changes of one name (mkdir of one name on both nodes, two renames into one target) are
/// applied in the same order on both bricks. A lock held for the peer lapses after its lease,
/// so a peer that dies holding one cannot block this node.
public final class NameLocks: @unchecked Sendable {
    private struct Holder {
        var token: UInt64
        var expires: ContinuousClock.Instant
    }

    /// Guards `held`, `tokens` and `nextToken`. Leaf: a caller waits on it holding nothing else
    /// (a name lock itself is logical and is held across the change, not this mutex).
    private let cond = MonotonicCondition()
    private var held: [String: Holder] = [:]
    private var tokens: [UInt64: [String]] = [:]
    private var nextToken: UInt64 = 1 << 63

    public init() {}

    /// A token for a local holder (remote holders bring their own, below 2^63).
    public func newToken() -> UInt64 {
        cond.lock()
        defer { cond.unlock() }
        nextToken += 1
        return nextToken
    }

    /// Takes every key for `token` (all or none), waiting at most `wait`. False on timeout.
    public func acquire(_ keys: [String], token: UInt64, lease: Duration, wait: Duration) -> Bool {
        let deadline = ContinuousClock.now + wait
        cond.lock()
        defer { cond.unlock() }
        while true {
            let now = ContinuousClock.now
            var free = true
            for k in keys {
                if let h = held[k], h.token != token {
                    if h.expires <= now {
                        drop(h.token)
                    } else {
                        free = false
                        break
                    }
                }
            }
            if free {
                for k in keys { held[k] = Holder(token: token, expires: now + lease) }
                tokens[token, default: []].append(contentsOf: keys)
                return true
            }
            if now >= deadline { return false }
            _ = cond.wait(for: .milliseconds(2))
        }
    }

    public func release(_ token: UInt64) {
        cond.lock()
        drop(token)
        cond.broadcast()
        cond.unlock()
    }

    private func drop(_ token: UInt64) {
        for k in tokens.removeValue(forKey: token) ?? [] where held[k]?.token == token {
            held[k] = nil
        }
    }

    public var heldCount: Int {
        cond.lock()
        defer { cond.unlock() }
        return held.count
    }
}
