import Dispatch
import Fixity
import Journal
import ObjectStore
import TwinCore
import Volume

/// The volume's recall hook over a `Recaller`: fetches the version the journal's row names and
/// proves size and XXH3-128 before the volume may serve a byte. The volume calls it on a FUSE
/// thread (never a thread of Swift's concurrency pool), which waits for the fetch.
public struct StoreRecallSource: TierContentSource {
    public let recaller: Recaller

    public init(recaller: Recaller) { self.recaller = recaller }

    public func fetch(_ row: TierRow, to path: String) throws(TierFetchFailure) {
        let stub = TierStub(bucket: row.bucket, key: row.key, versionId: row.versionId, size: row.size,
                            xxh3: XXH128Digest(bytes: row.xxh3), retainUntil: nil)
        let result = Locked<Result<Void, RecallError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let recaller = self.recaller
        Task {
            do throws(RecallError) {
                try await recaller.recall(stub, to: path)
                result.with { $0 = .success(()) }
            } catch {
                result.with { $0 = .failure(error) }
            }
            done.signal()
        }
        done.wait()
        guard case .failure(let error)? = result.with({ $0 }) else { return }
        throw Self.failure(error)
    }

    /// A store that did not answer can answer later; anything else will not get better.
    static func failure(_ error: RecallError) -> TierFetchFailure {
        if case .store(let e) = error, e.isRetryable { return .unavailable(e.description) }
        return .failed(error.description)
    }
}
