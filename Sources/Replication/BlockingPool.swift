import Foundation
import TwinCore

/// Threads for peer requests that block (fsync, lock waits, whole-file heal sends). Dispatch's
/// concurrent queues run only a handful of blocked items at once on a small machine (five on
/// two cores), so a few long heal sends would starve lock and listing requests until the
/// peer's timeout took the link down. This pool starts a thread whenever none is idle, up to
/// `limit`, and keeps idle ones for a while.
final class BlockingPool: @unchecked Sendable {
    /// Guards `jobs`, `idle` and `threads`. Leaf: a job runs after it is released.
    private let cond = MonotonicCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var idle = 0
    private var threads = 0
    private let limit: Int
    private let name: String

    init(name: String, limit: Int = 256) {
        self.name = name
        self.limit = limit
    }

    func run(_ job: @escaping @Sendable () -> Void) {
        cond.lock()
        jobs.append(job)
        // Every queued job needs a thread of its own: an idle one that was signalled may not
        // have woken yet when the next job arrives.
        if jobs.count > idle && threads < limit {
            threads += 1
            let t = Thread { [self] in loop() }
            t.name = name
            t.start()
        } else {
            cond.signal()
        }
        cond.unlock()
    }

    private func loop() {
        cond.lock()
        while true {
            if let job = jobs.first {
                jobs.removeFirst()
                cond.unlock()
                job()
                cond.lock()
                continue
            }
            idle += 1
            let woke = cond.wait(for: .milliseconds(30000))
            idle -= 1
            if !woke && jobs.isEmpty && threads > 4 {
                threads -= 1
                cond.unlock()
                return
            }
        }
    }
}
