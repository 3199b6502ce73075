import Foundation

/// A token bucket on bytes per second shared by the heal workers (and, separately, the
/// scrubber), so that healing never takes the disk from PACS ingest beyond what the admin
/// allowed. A rate of 0 means unlimited.
public final class Throttle: @unchecked Sendable {
    private let lock = NSLock()
    private var rate: Double
    private var tokens: Double
    private var last: ContinuousClock.Instant
    /// At most one second of credit builds up while idle.
    private var burst: Double { max(rate, 1_048_576) }

    public init(bytesPerSecond: Int64) {
        rate = Double(bytesPerSecond)
        tokens = Double(bytesPerSecond)
        last = .now
    }

    public var bytesPerSecond: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return Int64(rate)
    }

    public func setRate(_ bytesPerSecond: Int64) {
        lock.lock()
        rate = Double(bytesPerSecond)
        tokens = min(tokens, burst)
        lock.unlock()
    }

    /// How long a caller must wait before spending `bytes` (it is charged now).
    public func reserve(_ bytes: Int64, now: ContinuousClock.Instant = .now) -> Duration {
        lock.lock()
        defer { lock.unlock() }
        guard rate > 0 else { return .zero }
        let elapsed = now - last
        last = now
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(burst, tokens + secs * rate)
        tokens -= Double(bytes)
        return tokens >= 0 ? .zero : .milliseconds(Int64(-tokens / rate * 1000))
    }

    /// Blocks until `bytes` may be spent.
    public func acquire(_ bytes: Int64) {
        let wait = reserve(bytes)
        if wait > .zero {
            let ms = wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
            usleep(useconds_t(min(ms, 10_000) * 1000))
        }
    }
}
