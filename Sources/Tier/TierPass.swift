import Fixity
import Foundation
import Journal
import ObjectStore
import TwinCore
import Volume

/// What happened to one candidate of a pass.
public enum TierOutcome: Sendable, Equatable {
    case tiered(ManifestEntry)
    /// Left hot this pass (changed, open for writing, not as journaled): tried again later.
    case stayedHot(id: UInt64, reason: String)
    /// The store failed: the file is untouched.
    case failed(id: UInt64, reason: String)
}

public struct TierPassReport: Sendable, Equatable {
    public var outcomes: [TierOutcome] = []
    /// Manifest segments written, one per batch that tiered a file.
    public var manifests: [String] = []
    /// Manifest segments the store refused (the files are tiered; their lines are missing from
    /// the bucket's manifest until a later segment repeats them): one line each for the admin.
    public var manifestErrors: [String] = []
    public var tiered: Int { outcomes.filter { if case .tiered = $0 { return true } else { return false } }.count }
}

/// One pass of the tier over one node's volume: picks candidates from the journal's rows
/// (`CandidatePolicy`), uploads and proves each (`Archiver`), replaces the brick file by its
/// stub only if it did not change meanwhile, and writes a manifest segment after each batch.
/// Nothing leaves the brick before the store's proof.
public struct TierPass: Sendable {
    public let volume: LocalVolume
    public let archiver: Archiver
    public let policy: CandidatePolicy
    /// This node's name, in manifest segment names.
    public let node: String
    public let batchSize: Int

    public init(volume: LocalVolume, archiver: Archiver, policy: CandidatePolicy, node: String, batchSize: Int = 100) {
        self.volume = volume
        self.archiver = archiver
        self.policy = policy
        self.node = node
        self.batchSize = max(1, batchSize)
    }

    /// Tiers up to `limit` candidates, in batches.
    public func run(limit: Int, now: UTCTime) async throws(JournalError) -> TierPassReport {
        var report = TierPassReport()
        let picked = try candidates(limit: limit, nowNs: now.seconds * 1_000_000_000)
        var batchNumber = Int(try volume.journal.meta(Self.batchMeta) ?? "") ?? 0
        for start in stride(from: 0, to: picked.count, by: batchSize) {
            var entries: [ManifestEntry] = []
            for (record, key, path) in picked[start..<min(start + batchSize, picked.count)] {
                let outcome = await tierOne(record, key: key, path: path, now: now)
                if case .tiered(let e) = outcome { entries.append(e) }
                report.outcomes.append(outcome)
            }
            guard !entries.isEmpty else { continue }
            // Numbered on from the last pass's: two segments of one second never share a name
            // (a second would replace the first and lose its lines from the bucket's manifest).
            batchNumber += 1
            try volume.journal.submit([.setMeta(key: Self.batchMeta, value: String(batchNumber))], wait: .durable)
            switch await writeManifest(entries, batch: batchNumber) {
            case .success(let key): report.manifests.append(key)
            case .failure(let e): report.manifestErrors.append(e.description)
            }
        }
        return report
    }

    /// The qualifying files, from a scan of the journal's clean file rows in id order.
    func candidates(limit: Int, nowNs: Int64) throws(JournalError) -> [(InodeRecord, ObjectKey, String)] {
        var out: [(InodeRecord, ObjectKey, String)] = []
        var after: UInt64 = 0
        while out.count < limit {
            let page = try volume.journal.tierScan(after: after, limit: 1000)
            guard let last = page.last else { break }
            after = last.record.id
            for (r, residence) in page where out.count < limit {
                guard let path = try volume.journal.path(of: r.id) else { continue }
                let facts = FileFacts(path: Array(path.utf8), kind: r.kind, size: r.size, mtimeNs: r.mtimeNs, ctimeNs: r.ctimeNs,
                                      nlink: Int(r.nlink), isOpen: volume.openHandle(for: r.id) != nil,
                                      residence: residence.map(Self.residence) ?? .hot)
                if case .qualifies(let key) = policy.verdict(facts, nowNs: nowNs) { out.append((r, key, path)) }
            }
        }
        return out
    }

    /// The journal's meta key of the last manifest segment number this node used.
    static let batchMeta = "tier_manifest_batch"

    static func residence(_ r: TierResidence) -> Residence { r == .tiered ? .tiered : .recalled }

    /// Uploads one file, proves it, and swaps in its stub if the file is unchanged.
    public func tierOne(_ r: InodeRecord, key: ObjectKey, path: String, now: UTCTime) async -> TierOutcome {
        guard let hash = r.hash else { return .stayedHot(id: r.id, reason: "\(path) has no hash in the journal") }
        let request = ArchiveRequest(path: path, key: key, localFile: volume.brick.absolute(path), size: r.size,
                                     xxh3: XXH128Digest(bytes: hash), mtimeNs: r.mtimeNs, mode: r.mode, uid: r.uid, gid: r.gid)
        let archived: Archived
        do {
            archived = try await archiver.archive(request, now: now)
        } catch {
            if case .store = error { return .failed(id: r.id, reason: error.description) }
            return .stayedHot(id: r.id, reason: error.description)
        }
        let row = TierRow(id: r.id, residence: .tiered, bucket: archiver.bucket, key: key.key, versionId: archived.stub.versionId,
                          size: r.size, xxh3: hash, retainUntil: archiver.lockFor(now)?.until.seconds)
        let expect = TierExpectation(size: r.size, hash: hash, mtimeNs: r.mtimeNs)
        do {
            switch try volume.replaceWithStub(id: r.id, expect: expect, row: row, stubContent: archived.stub.content,
                                              stubXattr: archived.stub.xattrValue) {
            case .swapped: return .tiered(archived.manifest)
            case .writerOpen: return .stayedHot(id: r.id, reason: "\(path) is open for writing")
            case .changed(let why): return .stayedHot(id: r.id, reason: "\(path) stays hot: \(why)")
            }
        } catch {
            return .failed(id: r.id, reason: "\(path): the stub could not replace the file in the brick: \(error)")
        }
    }

    /// The batch's manifest segment, keys sorted; its key, or the store's error.
    func writeManifest(_ entries: [ManifestEntry], batch: Int) async -> Result<String, ObjectStoreError> {
        let key = TierLayout.manifestKey(prefix: policy.prefix, node: node, batch: batch, at: UTCTime.now().amzDate)
        do {
            _ = try await archiver.store.put(key, body: Manifest.encode(entries.sorted { $0.key < $1.key }), options: PutOptions())
            return .success(key)
        } catch {
            return .failure(error)
        }
    }
}
