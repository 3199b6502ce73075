import Glibc

/// A mutex and condition variable whose timed waits run on CLOCK_MONOTONIC.
///
/// Why: `NSCondition.wait(until: Date)` sleeps until a wall-clock time; when the clock is
/// stepped back (NTP, an admin, a VM restore) the wait lasts that much longer, and a thread
/// that polls with it stalls. Deadlines here are `ContinuousClock` instants, converted to a
/// CLOCK_MONOTONIC time for pthread_cond_timedwait (the condition is created with that clock).
///
/// Use it like NSCondition: `lock()`, test the predicate in a loop around `wait`, `unlock()`;
/// or `withLock`. The mutex and condition are heap-allocated (never `&storedProperty`).
public final class MonotonicCondition: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    /// `priorityInheritance`: a thread holding the mutex runs at the priority of the highest
    /// one waiting for it (a real-time thread must not wait behind a preempted normal one).
    public init(priorityInheritance: Bool = false) {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        var mattr = pthread_mutexattr_t()
        pthread_mutexattr_init(&mattr)
        if priorityInheritance { pthread_mutexattr_setprotocol(&mattr, Int32(PTHREAD_PRIO_INHERIT)) }
        pthread_mutex_init(mutex, &mattr)
        pthread_mutexattr_destroy(&mattr)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    public func signal() { pthread_cond_signal(cond) }
    public func broadcast() { pthread_cond_broadcast(cond) }

    /// Waits (the caller holds the lock) until signalled or `deadline` passes. Returns false
    /// when the deadline has passed. Wakeups may be spurious: re-check the predicate.
    @discardableResult
    public func wait(until deadline: ContinuousClock.Instant) -> Bool {
        let left = deadline - ContinuousClock.now
        guard left > .zero else { return false }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let (s, atto) = left.components
        var sec = Int(ts.tv_sec) + Int(s)
        var nsec = Int(ts.tv_nsec) + Int(atto / 1_000_000_000)
        if nsec >= 1_000_000_000 { sec += 1; nsec -= 1_000_000_000 }
        ts.tv_sec = sec
        ts.tv_nsec = nsec
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    /// Waits (the caller holds the lock) for at most `timeout`.
    @discardableResult
    public func wait(for timeout: Duration) -> Bool { wait(until: ContinuousClock.now + timeout) }

    /// Waits (the caller holds the lock) until signalled; no timeout.
    public func wait() { pthread_cond_wait(cond, mutex) }
}
