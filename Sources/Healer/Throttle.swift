import Foundation
import TwinCore

/// Bytes per second shared by the heal workers (and, separately, the scrubber), so that healing
/// never takes the disk from PACS ingest beyond what the admin allowed: a `TokenBucket` with at
/// most one second (at least 1 MiB) of credit saved while idle. A rate of 0 means unlimited.
public final class Throttle: @unchecked Sendable {
    public let bytesPerSecond: Int64
    /// The bucket (nil: unlimited), guarded by its own lock. Leaf.
    private let bucket: Locked<TokenBucket>?
    /// The bucket's clock starts here.
    private let origin = ContinuousClock.now

    public init(bytesPerSecond: Int64) {
        self.bytesPerSecond = bytesPerSecond
        bucket = bytesPerSecond > 0
            ? Locked(TokenBucket(bytesPerSecond: bytesPerSecond, burst: max(bytesPerSecond, 1_048_576))) : nil
    }

    /// How long a caller must wait before spending `bytes` (it is charged now).
    public func reserve(_ bytes: Int64, now: ContinuousClock.Instant = .now) -> Duration {
        guard let bucket else { return .zero }
        let t = now - origin
        let secs = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
        let wait = bucket.with { $0.take(Int(bytes), now: secs) }
        return .milliseconds(Int64(wait * 1000))
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
