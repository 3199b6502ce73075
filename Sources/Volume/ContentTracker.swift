import Fixity
import Glibc
import TwinCore

/// What TwinFS knows about the content of one file while it is open for writing: a streaming
/// XXH3-128 over sequential writes, and whether the journal already marks it dirty.
/// Shared by every writable handle of the inode; all fields are guarded by `lock`.
final class ContentState: @unchecked Sendable {
    let id: UInt64
    /// Guards every field below (`lock()`/`unlock()`). Held across the file's pwrite, fsync and
    /// the journal's commit of its content: after the tracker's table, before the journal.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    let hasher = XXH128Hasher()
    /// Bytes [0, nextOffset) have been fed to `hasher` in order.
    var nextOffset: Int64 = 0
    /// False once a write was not contiguous: the hash is recomputed from the brick at commit.
    var sequential = false
    /// The journal row says dirty=1 (committed before any byte reached the brick).
    var journalDirty = false
    /// Bytes changed since the last content commit.
    var unsynced = false
    /// Open writable handles.
    var writers = 0

    init(id: UInt64) {
        self.id = id
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Restart streaming from an empty file (create, O_TRUNC, truncate to 0).
    func restartEmpty() {
        hasher.reset()
        nextOffset = 0
        sequential = true
    }

    /// Feeds a completed write at `offset`. Caller holds the lock.
    func record(offset: Int64, _ data: UnsafeRawBufferPointer) {
        if sequential && offset == nextOffset {
            hasher.update(data)
            nextOffset += Int64(data.count)
        } else {
            sequential = false
        }
        unsynced = true
    }
}

/// The per-inode content states of files open for writing.
final class ContentTracker: Sendable {
    /// Guards the table (and each state's `writers`). Leaf, except in `whileNoWriter`, whose
    /// body takes the journal's locks; never taken while a ContentState's mutex is held.
    private let states = Locked<[UInt64: ContentState]>([:])

    /// The state of `id`, created for the first writer. `fresh` is called once on creation.
    func acquire(_ id: UInt64, fresh: (ContentState) -> Void) -> ContentState {
        states.with { m in
            if let s = m[id] {
                s.writers += 1
                return s
            }
            let s = ContentState(id: id)
            s.writers = 1
            fresh(s)
            m[id] = s
            return s
        }
    }

    func existing(_ id: UInt64) -> ContentState? { states.with { $0[id] } }

    /// Runs `body` while no handle of this node writes file `id`, with new writers held off
    /// until it returns (a writer acquires its state before it opens the file by name); nil if
    /// one writes now.
    func whileNoWriter<R>(_ id: UInt64, _ body: () throws(FSError) -> R) throws(FSError) -> R? {
        try states.with { (m: inout [UInt64: ContentState]) throws(FSError) -> R? in
            guard m[id] == nil else { return nil }
            return try body()
        }
    }

    /// Drops one writer; forgets the state with the last one.
    func releaseWriter(_ s: ContentState) {
        states.with { m in
            s.writers -= 1
            if s.writers <= 0 { m[s.id] = nil }
        }
    }
}
