import Glibc
import TwinCore

/// `tier.bandwidth_mb` for every upload of the node at once: each part waits its turn here
/// before it is sent.
public actor BandwidthLimiter {
    private var bucket: TokenBucket

    public init(bytesPerSecond: Int64) {
        bucket = TokenBucket(bytesPerSecond: bytesPerSecond)
    }

    public func pace(_ bytes: Int) async {
        let wait = bucket.take(bytes, now: Self.monotonicSeconds())
        if wait > 0 { try? await Task.sleep(nanoseconds: UInt64(wait * 1e9)) }
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
