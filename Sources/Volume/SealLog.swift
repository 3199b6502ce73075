import BrickStore
import Foundation
import TwinCore

/// The seal markers (`SealMarkers`) of content commits whose journal rows were written but not
/// yet made durable, and when to make them durable: a content commit costs one flush (the
/// brick file's fsync, which carries the seal and the marker), and one durable journal commit
/// once `batch` markers are pending (a new file's create makes one too) or the oldest is
/// `interval` old, checked as each marker is added, covers all of them and lets them go.
final class SealLog: Sendable {
    enum Decision: Equatable {
        /// Leave the markers for a later commit.
        case wait
        /// Make the journal durable, then remove these markers (taken out of the log).
        case flush([String])
    }

    struct State {
        var pending: [String] = []
        var oldest: ContinuousClock.Instant?
        var next: UInt64 = 0
    }

    let markers: SealMarkers
    let batch: Int
    let interval: Duration
    /// A tag per process start, so marker names never repeat those a crash left behind.
    let runTag: String
    /// Guards `State` (the pending markers and the name counter). Leaf: held for the list
    /// operation only, never across I/O.
    private let state = Locked(State())

    init(brick: Brick, batch: Int = 64, interval: Duration = .seconds(1)) {
        self.markers = SealMarkers(brick: brick)
        self.batch = batch
        self.interval = interval
        self.runTag = String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }

    /// A marker name for file `id` that no other commit uses.
    func newName(for id: UInt64) -> String {
        let n = state.with { s -> UInt64 in
            s.next += 1
            return s.next
        }
        return "\(id)-\(runTag)-\(n)"
    }

    /// Records a marker whose row is now in the WAL; says whether this commit should flush.
    func written(_ name: String, now: ContinuousClock.Instant = .now) -> Decision {
        state.with { s -> Decision in
            s.pending.append(name)
            if s.oldest == nil { s.oldest = now }
            guard s.pending.count >= batch || now - (s.oldest ?? now) >= interval else { return .wait }
            let taken = s.pending
            s.pending = []
            s.oldest = nil
            return .flush(taken)
        }
    }

    /// Takes every pending marker (for a durable commit made for another reason).
    func takeAll() -> [String] {
        state.with { s -> [String] in
            let taken = s.pending
            s.pending = []
            s.oldest = nil
            return taken
        }
    }
}
