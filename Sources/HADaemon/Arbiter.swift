/// Who should hold the public addresses, decided the same way on both nodes from what each
/// knows. Pure logic (no sockets, no clock of its own): unit-tested case by case.
///
/// Rules:
/// - **Connected** (a valid beat within the dead interval): the holder keeps the addresses while
///   healthy; the preferred node takes them back only after being healthy and caught up with
///   its peer (`healthyFor` > 0: its monitor said so) for the failback delay; with no healthy
///   holder, the preferred node if healthy, else the other. A node takes only when both
///   nodes' choices name it and the peer says it holds nothing, so two connected nodes never
///   both take.
/// - **Peer silent**: with a witness, a node holds only while it holds the witness's lease
///   (the other node cannot get the lease meanwhile). With or without one, a node takes only
///   once an ARP probe finds the address unused: a silent peer's kernel may still answer for it
///   (a live but cut-off holder; a daemon killed or stopped whose fence has not dropped it
///   yet), and two kernels must never hold it. Only a peer that said it leaves and holds
///   nothing (a clean stop, after its releaseip) is taken over without a probe.
/// - **After a dispute** (both claimed the addresses), the node that keeps them announces them
///   again once the other let go: clients may have followed the other node's ARP.
public struct Arbiter: Sendable {
    public struct Peer: Sendable, Equatable {
        public var alive: Bool
        /// The peer's host answered that no daemon listens: the daemon is gone, not cut off.
        public var daemonGone: Bool
        public var healthy: Bool
        public var holds: Bool
        public var leaving: Bool
        public var choice: String
        public var healthyFor: Double
        public init(alive: Bool, daemonGone: Bool = false, healthy: Bool = false, holds: Bool = false, leaving: Bool = false,
                    choice: String = "", healthyFor: Double = 0) {
            self.alive = alive; self.daemonGone = daemonGone; self.healthy = healthy; self.holds = holds
            self.leaving = leaving; self.choice = choice; self.healthyFor = healthyFor
        }
    }

    public enum Action: Sendable, Equatable {
        case none
        case take
        /// Take once an ARP probe finds the address unused (no witness, peer silent).
        case takeIfUnused
        case release(String)
    }

    public var me: String
    public var peerName: String
    public var preferred: String
    public var failbackDelay: Double
    public var hasWitness: Bool

    public init(me: String, peer: String, preferred: String, failbackDelay: Double, hasWitness: Bool) {
        self.me = me; peerName = peer; self.preferred = preferred; self.failbackDelay = failbackDelay; self.hasWitness = hasWitness
    }

    /// The node that should hold the addresses, as this node sees it ("" = none).
    public func choice(healthy: Bool, healthyFor: Double, holding: Bool, peer: Peer) -> String {
        let peerUp = peer.alive && !peer.leaving
        if !peerUp { return healthy ? me : "" }
        func isHealthy(_ n: String) -> Bool { n == me ? healthy : peer.healthy }
        func upFor(_ n: String) -> Double { n == me ? healthyFor : peer.healthyFor }
        // Both holding (a daemon restarted and found the address still configured): the
        // preferred node keeps it, on both sides' reckoning.
        let holder = holding && peer.holds ? preferred : (holding ? me : (peer.holds ? peerName : ""))
        if !holder.isEmpty, isHealthy(holder) {
            if holder != preferred, isHealthy(preferred), upFor(preferred) > 0, upFor(preferred) >= failbackDelay { return preferred }
            return holder
        }
        if isHealthy(preferred) { return preferred }
        let other = preferred == me ? peerName : me
        return isHealthy(other) ? other : ""
    }

    /// What to do now. `leaseValid`: this node holds the witness's lease (ignored without one).
    public func decide(healthy: Bool, healthyFor: Double, holding: Bool, peer: Peer, leaseValid: Bool) -> Action {
        let mine = choice(healthy: healthy, healthyFor: healthyFor, holding: holding, peer: peer)
        let peerUp = peer.alive && !peer.leaving
        if holding {
            if mine != me { return .release(healthy ? "the preferred node \(mine) takes the addresses back" : "this node is unhealthy") }
            if !peerUp && hasWitness && !leaseValid { return .release("peer unreachable and the witness lease is lost") }
            return .none
        }
        guard mine == me else { return .none }
        if peerUp {
            return peer.choice == me && !peer.holds ? .take : .none
        }
        if hasWitness && !leaseValid { return .none }
        if peer.alive && peer.leaving && !peer.holds { return .take }
        return .takeIfUnused
    }

    /// Whether both nodes claimed the addresses since the last announcement.
    public enum Claim: Sendable, Equatable {
        case undisputed
        case disputed
    }

    /// The claim after this beat, and whether this node must announce the addresses now (it
    /// kept them through a dispute and the peer has let go, or fell silent).
    public func nextClaim(_ claim: Claim, holding: Bool, peer: Peer) -> (claim: Claim, announce: Bool) {
        let both = holding && peer.alive && peer.holds
        switch claim {
        case .undisputed: return (both ? .disputed : .undisputed, false)
        case .disputed:
            if both { return (.disputed, false) }
            return (.undisputed, holding)
        }
    }

    /// With a witness, whether this node should be asking for (or renewing) the lease now.
    public func wantsLease(healthy: Bool, healthyFor: Double, holding: Bool, peer: Peer) -> Bool {
        hasWitness && (holding || choice(healthy: healthy, healthyFor: healthyFor, holding: holding, peer: peer) == me)
    }
}
