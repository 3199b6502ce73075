import Glibc

/// A token bucket over bytes: `rate` bytes a second, up to `burst` saved while idle. Taking more
/// than there is goes into debt and answers how long to wait, so a part bigger than the burst
/// still goes, and the average stays at the rate. Pure: the caller passes the time.
public struct TokenBucket: Sendable, Equatable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var last: Double?

    public init(bytesPerSecond rate: Int64, burst: Int64? = nil) {
        self.rate = Double(max(1, rate))
        self.burst = Double(burst ?? max(1, rate))
        self.tokens = self.burst
    }

    /// Seconds to wait before sending `bytes` at time `now` (seconds on a monotonic clock).
    public mutating func take(_ bytes: Int, now: Double) -> Double {
        if let last { tokens = min(burst, tokens + max(0, now - last) * rate) }
        last = now
        tokens -= Double(bytes)
        return tokens >= 0 ? 0 : -tokens / rate
    }
}

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
