import ObjectStore

/// How long to wait before the next attempt of an upload or recall that failed: exponential from
/// `first` up to `cap`, with up to `jitter` of it taken off at random so that both nodes (and
/// many files) do not retry in step. Only errors that can clear by themselves are retried.
public struct RetrySchedule: Sendable, Equatable {
    public var first: Double
    public var cap: Double
    public var jitter: Double
    /// Attempts in all, the first included; nil: retry for as long as the error is retryable.
    public var maxAttempts: Int?

    public init(first: Double = 1, cap: Double = 300, jitter: Double = 0.2, maxAttempts: Int? = nil) {
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.maxAttempts = maxAttempts
    }

    public enum Decision: Sendable, Equatable {
        case retry(afterSeconds: Double)
        case giveUp
    }

    /// After `attempt` (1 = the first) failed with `error`; `random` in 0..<1.
    public func decide(after attempt: Int, error: ObjectStoreError, random: Double) -> Decision {
        guard error.isRetryable else { return .giveUp }
        if let maxAttempts, attempt >= maxAttempts { return .giveUp }
        let exponent = min(max(attempt - 1, 0), 30)  // 2^30 s is far past any cap
        let base = min(cap, first * Double(1 << exponent))
        return .retry(afterSeconds: base * (1 - jitter * min(max(random, 0), 1)))
    }
}
