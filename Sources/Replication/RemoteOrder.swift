import TwinCore

/// Orders changes' peer steps behind the removals and renames whose peer step is under way
/// (see `ReplicatedVolume.changeInTwoSteps`): those hold it exclusively from their local step
/// to their peer's answer, every other namespace change holds it shared across both steps.
/// Writer-preferring, so a stream of changes cannot starve a rename. A pthread rwlock: the
/// thread that locks it unlocks it (the FUSE adapter runs both steps on one thread).
/// Lock order: outermost of the replicated volume's (before the gate and the name locks);
/// taken inside the FUSE adapter's namespace lock.
typealias RemoteOrder = WriterPreferringLock
