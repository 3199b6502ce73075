import Glibc

/// Orders changes' peer steps behind the removals and renames whose peer step is under way
/// (see `ReplicatedVolume.changeInTwoSteps`): those hold it exclusively from their local step
/// to their peer's answer, every other namespace change holds it shared across both steps.
/// Writer-preferring, so a stream of changes cannot starve a rename. A pthread rwlock: the
/// thread that locks it unlocks it (the FUSE adapter runs both steps on one thread).
/// Lock order: outermost of the replicated volume's (before the gate and the name locks);
/// taken inside the FUSE adapter's namespace lock.
final class RemoteOrder: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    init() {
        var attr = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attr)
        pthread_rwlockattr_destroy(&attr)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func shared<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func lockExclusive() { pthread_rwlock_wrlock(lock) }
    func unlock() { pthread_rwlock_unlock(lock) }
}
