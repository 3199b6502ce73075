import NIOCore
import Synchronization

/// The client's window of unacknowledged requests: at most `maxRequests` requests and
/// `maxBytes` frame bytes in flight. `acquire` suspends (first come, first served) while the
/// window is full, so a fast writer waits for the peer instead of queueing memory.
/// One request larger than `maxBytes` is admitted alone, when nothing else is in flight.
final class InFlightWindow: Sendable {
    struct Snapshot: Sendable, Equatable {
        var requests: Int
        var bytes: Int
        /// High-water marks since the window was made.
        var peakRequests: Int
        var peakBytes: Int
        var waiting: Int
    }

    let maxRequests: Int
    let maxBytes: Int

    private struct Waiter {
        let id: UInt64
        let cost: Int
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var requests = 0
        var bytes = 0
        var peakRequests = 0
        var peakBytes = 0
        var nextWaiter: UInt64 = 0
        var waiters = CircularBuffer<Waiter>()

        func fits(_ cost: Int, maxRequests: Int, maxBytes: Int) -> Bool {
            requests == 0 || (requests < maxRequests && bytes + cost <= maxBytes)
        }

        mutating func admit(_ cost: Int) {
            requests += 1
            bytes += cost
            peakRequests = max(peakRequests, requests)
            peakBytes = max(peakBytes, bytes)
        }
    }

    private let state = Mutex(State())

    init(maxRequests: Int, maxBytes: Int) {
        precondition(maxRequests > 0 && maxBytes > 0, "the in-flight window needs room for one request")
        self.maxRequests = maxRequests
        self.maxBytes = maxBytes
    }

    var snapshot: Snapshot {
        state.withLock { s in
            Snapshot(requests: s.requests, bytes: s.bytes, peakRequests: s.peakRequests, peakBytes: s.peakBytes,
                     waiting: s.waiters.count)
        }
    }

    /// Waits for room for one request of `cost` bytes. Every successful acquire needs one `release`.
    func acquire(_ cost: Int) async throws(CancellationError) {
        let id = state.withLock { s in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        do {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    let admitted: Bool? = state.withLock { s in
                        // Checked under the lock: a cancellation either sees the waiter below or sets
                        // the flag before this check (the flag is set before the handler runs).
                        if Task.isCancelled { return nil }
                        if s.waiters.isEmpty && s.fits(cost, maxRequests: maxRequests, maxBytes: maxBytes) {
                            s.admit(cost)
                            return true
                        }
                        s.waiters.append(Waiter(id: id, cost: cost, continuation: continuation))
                        return false
                    }
                    switch admitted {
                    case true?: continuation.resume()
                    case nil: continuation.resume(throwing: CancellationError())
                    case false?: break
                    }
                }
            } onCancel: {
                let waiter: Waiter? = state.withLock { s in
                    guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return s.waiters.remove(at: i)
                }
                waiter?.continuation.resume(throwing: CancellationError())
                // A cancelled head may have blocked smaller waiters behind it.
                self.wakeAdmissible()
            }
        } catch {
            throw CancellationError()
        }
    }

    /// Admits a request of `cost` bytes at once if it fits and nobody waits (first come, first
    /// served); false otherwise, and nothing changed.
    func tryAcquire(_ cost: Int) -> Bool {
        state.withLock { s in
            guard s.waiters.isEmpty, s.fits(cost, maxRequests: maxRequests, maxBytes: maxBytes) else { return false }
            s.admit(cost)
            return true
        }
    }

    func release(_ cost: Int) {
        state.withLock { s in
            s.requests -= 1
            s.bytes -= cost
            assert(s.requests >= 0 && s.bytes >= 0, "in-flight window released more than acquired")
        }
        wakeAdmissible()
    }

    private func wakeAdmissible() {
        let ready: [Waiter] = state.withLock { s in
            var ready: [Waiter] = []
            while let w = s.waiters.first, s.fits(w.cost, maxRequests: maxRequests, maxBytes: maxBytes) {
                s.waiters.removeFirst()
                s.admit(w.cost)
                ready.append(w)
            }
            return ready
        }
        for w in ready { w.continuation.resume() }
    }
}
