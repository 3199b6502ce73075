import Foundation
import Glibc
import Journal
import Logging
import TwinCore
import Volume

/// Whether this node may serve: a node that starts without reaching its peer cannot show that
/// it has every change a client was told is stored, unless it owes the peer changes itself
/// (then it was the one serving alone, and the peer has nothing newer), or it never had a
/// peer. Like DRBD's Outdated disk state: such a node serves nothing until it reaches its
/// peer, or until an admin accepts the risk (`twinfs promote --force`).
public enum DataCurrency: Sendable, Equatable {
    case current
    /// May lack changes the peer acknowledged while this node was down.
    case outdated
    /// Outdated at start, served anyway on an admin's word.
    case forced

    /// The state of a node that starts and does not reach its peer (pure).
    /// - `peerSeen`: this journal was ever in contact with a peer (or holds its entries).
    /// - `owesPeer`: changes or files are owed to the peer (this node served alone last).
    /// - `rebuilding`: this brick is being filled from the peer (a replaced disk whose old
    ///   journal showed a peer).
    public static func atLonelyStart(peerSeen: Bool, owesPeer: Bool, rebuilding: Bool) -> DataCurrency {
        rebuilding || (peerSeen && !owesPeer) ? .outdated : .current
    }

    public var serves: Bool { self != .outdated }
}

extension ReplicatedVolume {
    static let peerSeenKey = "peer_seen"

    /// Whether this journal ever met the peer: its mark, or entries the peer made.
    func journalMetPeer() -> Bool {
        if ((try? journal.meta(Self.peerSeenKey)) ?? nil) == "1" { return true }
        let peerOrdinal: UInt8 = ordinal == 1 ? 2 : 1
        return ((try? journal.highestCounter(ordinal: peerOrdinal)) ?? 0) > 0
    }

    /// The peer spoke to this node: remembered (so a later lonely start knows there is a peer
    /// that may be ahead), and an outdated node is current again (what it misses now comes
    /// through catch-up and pulls, as for any node that was down).
    func notePeerReached() {
        let first = currency.with { c -> (wasOutdated: Bool, seen: Bool) in
            defer { c.seen = true; if c.state == .outdated { c.state = .current } }
            return (c.state == .outdated, c.seen)
        }
        if !first.seen, !journalMetPeer() { try? journal.submit([.setMeta(key: Self.peerSeenKey, value: "1")], wait: .written) }
        if first.wasOutdated { log.notice("peer reached: this node is no longer OUTDATED; it serves what it has verified as current while the peer catches it up") }
    }

    /// The start did not reach the peer within its timeout: decides whether this node serves.
    public func startedAlone() -> DataCurrency {
        var owes = false
        if let b = try? journal.peerBacklog() { owes = b.ops + b.files > 0 }
        // A replaced brick whose old journal was kept aside had a peer that holds the data; a
        // brand-new pair (both bricks empty, both "rebuilding" from each other) has nothing.
        let rebuilding = ((try? journal.meta("rebuild")) ?? nil) == "pending" && ((try? journal.meta("rebuild_strict")) ?? nil) == "1"
        let c = DataCurrency.atLonelyStart(peerSeen: journalMetPeer(), owesPeer: owes, rebuilding: rebuilding)
        currency.with { if !$0.seen { $0.state = c } }
        return currencyState
    }

    public var currencyState: DataCurrency { currency.with { $0.state } }

    /// `twinfs promote --force`: an admin accepts that this outdated node serves what it has.
    public func forceCurrent() -> Bool {
        let was = currency.with { c -> Bool in
            defer { if c.state == .outdated { c.state = .forced } }
            return c.state == .outdated
        }
        if was {
            log.warning("FORCED to serve while OUTDATED (admin): changes the peer acknowledged while this node was down are missing here until the peer returns; where both nodes then changed a file, it becomes a split brain")
        }
        return was
    }

    /// Every client request passes here: an outdated node answers EIO (one log line a minute).
    func checkCurrent() throws(FSError) {
        guard currency.with({ $0.state == .outdated }) else { return }
        let now = ContinuousClock.now
        let tell = currency.with { c -> Bool in
            if let l = c.lastTold, now - l < .seconds(60) { return false }
            c.lastTold = now
            return true
        }
        if tell {
            log.error("OUTDATED: this node started without reaching its peer and may lack changes the peer acknowledged meanwhile; it answers EIO until the peer is reachable; fix: start the peer, or accept the risk with `twinfs promote --force`")
        }
        throw FSError.io
    }
}

/// Guarded by its `Locked` in `ReplicatedVolume.currency` (no other lock taken inside).
struct CurrencyState: Sendable {
    var state: DataCurrency = .current
    /// The peer spoke to this node since it started.
    var seen = false
    var lastTold: ContinuousClock.Instant?
}
