/// How long the client waits between connection attempts: `initial`, doubling on each failed
/// attempt up to `maximum`, each delay shortened by a random part of up to `jitter` so two
/// nodes restarting together do not retry in lockstep. A successful handshake starts over.
public struct ReconnectBackoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double
    /// 0 ... 1: the largest fraction taken off a delay at random.
    public var jitter: Double

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5),
                multiplier: Double = 2, jitter: Double = 0.25) {
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.multiplier = max(multiplier, 1)
        self.jitter = min(max(jitter, 0), 1)
    }

    /// The delay before attempt `attempt + 1` (attempt 0 is the first retry).
    public func delay(attempt: Int, using rng: inout some RandomNumberGenerator) -> Duration {
        let cap = maximum / initial
        var factor = 1.0
        for _ in 0..<min(max(attempt, 0), 64) where factor < cap {
            factor *= multiplier
        }
        let full = factor >= cap ? maximum : initial * factor
        let cut = jitter > 0 ? Double.random(in: 0...jitter, using: &rng) : 0
        return full * (1 - cut)
    }
}
