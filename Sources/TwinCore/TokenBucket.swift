/// A token bucket over bytes: `rate` bytes a second, up to `burst` saved while idle. Taking more
/// than there is goes into debt and answers how long to wait, so a request bigger than the
/// burst still goes, and the average stays at the rate. Pure: the caller passes the time.
/// Behind the healer's and scrubber's `Throttle` and the tier's `BandwidthLimiter`.
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
