import Prometheus

/// The gauges a scrape refreshes from the node's state (what is owed, heal, scrub, the link).
public final class NodeGauges: Sendable {
    public struct Values: Sendable {
        public var state: String = "HEALTHY"
        public var peerLinkUp: Bool?
        public var pendingChanges: Int64 = 0
        public var pendingFiles: Int64 = 0
        public var pendingBytes: Int64 = 0
        public var filesAwaited: Int64 = 0
        public var bytesAwaited: Int64 = 0
        public var splitBrain: Int64 = 0
        public var healRateBytes: Double = 0
        public var scrubRunning: Bool = false
        public var scrubFilesChecked: Int64 = 0
        public var scrubCorruptFound: Int64 = 0
        public var corruptUnrepaired: Int64 = 0
        public var brickFreeBytes: Int64 = 0
        public var files: Int64 = 0
        public var bytes: Int64 = 0
        public init() {}
    }

    static let states = ["HEALTHY", "DEGRADED", "HEALING", "SPLIT-BRAIN", "JOURNAL-FAILED"]
    let state: [(String, Gauge)]
    let link, changes, files, bytes, awaitedFiles, awaitedBytes, split, rate, scrubRunning, scrubChecked, scrubFound, corrupt, free, volFiles, volBytes: Gauge

    public init(registry: PrometheusCollectorRegistry) {
        func g(_ name: String, _ unit: String, _ help: String, _ labels: [(String, String)] = []) -> Gauge {
            registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "twinfs", metricName: name, unitName: unit, helpText: help), labels: labels)
        }
        state = Self.states.map { ($0, g("state", "", "1 for the node's current state (twinfs status)", [("state", $0)])) }
        link = g("peer_link_up", "", "1 while the link to the peer is up")
        changes = g("pending_changes", "", "Namespace changes the peer has not received yet")
        files = g("pending_files", "", "Files the peer must still receive whole")
        bytes = g("pending", "bytes", "Bytes of the files the peer must still receive")
        awaitedFiles = g("heal_awaited_files", "", "Files this node must still receive (rebuild, repair)")
        awaitedBytes = g("heal_awaited", "bytes", "Bytes this node must still receive")
        split = g("split_brain_entries", "", "Entries changed on both nodes while apart")
        rate = g("heal_rate", "bytes_per_second", "Bytes healed per second over the last 20 s")
        scrubRunning = g("scrub_running", "", "1 while a scrub runs")
        scrubChecked = g("scrub_files_checked", "", "Files re-hashed by the current or last scrub")
        scrubFound = g("scrub_corrupt_found", "", "Files the current or last scrub found corrupt")
        corrupt = g("corrupt_unrepaired", "", "Files found corrupt and not repaired (bad on both nodes, or awaiting the peer)")
        free = g("brick_free", "bytes", "Free space on the brick's file system")
        volFiles = g("files", "", "Files in the volume (journal)")
        volBytes = g("volume", "bytes", "Bytes in the volume's files (journal)")
    }

    public func set(_ v: Values) {
        for (name, gauge) in state { gauge.set(to: name == v.state ? 1.0 : 0.0) }
        link.set(to: v.peerLinkUp == true ? 1.0 : 0.0)
        changes.set(to: Double(v.pendingChanges)); files.set(to: Double(v.pendingFiles)); bytes.set(to: Double(v.pendingBytes))
        awaitedFiles.set(to: Double(v.filesAwaited)); awaitedBytes.set(to: Double(v.bytesAwaited)); split.set(to: Double(v.splitBrain))
        rate.set(to: v.healRateBytes); scrubRunning.set(to: v.scrubRunning ? 1.0 : 0.0); scrubChecked.set(to: Double(v.scrubFilesChecked))
        scrubFound.set(to: Double(v.scrubCorruptFound)); corrupt.set(to: Double(v.corruptUnrepaired)); free.set(to: Double(v.brickFreeBytes))
        volFiles.set(to: Double(v.files)); volBytes.set(to: Double(v.bytes))
    }
}
