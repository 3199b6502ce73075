import Foundation
import TwinCore

/// Who may send live: every change enters the gate, which records the mode it saw; the switch
/// to live waits until no change is inside (writer-preferring) so nothing slips between the
/// last owed change and the first live one.
final class ModeGate: @unchecked Sendable {
    /// Guards `current`, `inside`, `switching` and `wakeups`. Outermost of the replicated
    /// volume's locks: `switchToLive`'s `ready` reads the journal under it; nothing else is
    /// taken inside.
    /// Monotonic: a wall-clock step must not stall the catch-up thread's timed wait.
    private let cond = MonotonicCondition()
    private var current: ReplicatedVolume.Mode = .degraded
    private var inside = 0
    private var switching = false
    private var wakeups = 0

    var mode: ReplicatedVolume.Mode {
        cond.lock()
        defer { cond.unlock() }
        return current
    }

    func enter() -> ReplicatedVolume.Mode {
        cond.lock()
        defer { cond.unlock() }
        while switching { cond.wait() }
        inside += 1
        return current
    }

    func leave() {
        cond.lock()
        inside -= 1
        if inside == 0 { cond.broadcast() }
        cond.unlock()
    }

    /// True if this changed the mode.
    @discardableResult
    func setDegraded() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let changed = current != .degraded
        current = .degraded
        cond.broadcast()
        return changed
    }

    func setCatchingUp() {
        cond.lock()
        if current == .degraded { current = .catchingUp }
        cond.unlock()
    }

    /// Switches to live if `ready()` holds once no change is in flight.
    func switchToLive(_ ready: () -> Bool) -> Bool {
        cond.lock()
        while switching { cond.wait() }
        switching = true
        while inside > 0 { cond.wait() }
        let ok = current != .degraded && ready()
        if ok { current = .live }
        switching = false
        cond.broadcast()
        cond.unlock()
        return ok
    }

    func wakeCatchUp() {
        cond.lock()
        wakeups += 1
        cond.broadcast()
        cond.unlock()
    }

    /// Waits for a wake-up or `seconds`.
    func waitForWork(seconds: Double) {
        cond.lock()
        let seen = wakeups
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while wakeups == seen && cond.wait(until: deadline) {}
        cond.unlock()
    }
}
