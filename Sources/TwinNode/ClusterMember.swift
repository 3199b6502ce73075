import Dispatch
import FuseAdapter
import Healer
import Journal
import Logging
import PeerLink
import PeerProtocol
import Replication
import TwinConfig
import TwinCore
import Volume

/// This node's side of the pair: the link to the peer (client + listener), the replicating
/// volume the FUSE adapter serves, the receiving service and the catch-up thread.
final class ClusterMember: @unchecked Sendable {
    let client: PeerClient
    let listener: PeerListener
    let volume: ReplicatedVolume
    let service: PeerService
    let catchUp: CatchUp
    let healer: Healer
    /// The witness mode of writes (nil: no witness, active-active).
    let writeGate: WitnessWriteGate?
    private let fuse = Locked<(FuseSession, FuseAdapter)?>(nil)
    private let invalidations = DispatchQueue(label: "twinfs.invalidate")

    init(cfg: NodeConfig, peer: NodeConfig.Peer, local: LocalVolume, ordinal: UInt8, log: Logger) throws(AdminError) {
        let secret = try SecretFile.load(path: peer.secretFile)
        let identity = PeerLinkIdentity(node: cfg.node, volume: cfg.volume, secret: secret, peerNode: peer.node)
        let timeout = Duration.milliseconds(Int64(peer.timeout * 1000))
        let (peerHost, peerPort) = try Self.split(peer.address, "peer.address")
        var cc = PeerClient.Configuration(identity: identity, host: peerHost, port: peerPort)
        cc.requestTimeout = timeout
        cc.peerTimeout = timeout
        cc.keepaliveInterval = min(.milliseconds(500), timeout / 4)
        cc.backoff = ReconnectBackoff(initial: .milliseconds(100), maximum: .seconds(1))
        client = PeerClient(configuration: cc, logger: log)
        let channel = PeerChannel(client: client, timeout: timeout)
        do { writeGate = try WitnessWriteGate.make(haConfig: cfg.haConfig, log: log) } catch {
            Self.shutdown(client)
            throw error
        }
        do {
            volume = try ReplicatedVolume(local: local, channel: channel, ordinal: ordinal, logger: log)
        } catch {
            Self.shutdown(client)
            throw AdminError(problem: "cannot read what this node owes its peer from the journal: \(error)",
                             fix: "check the journal's disk; `twinfs journal rebuild` rebuilds it from the brick")
        }
        let fuse = self.fuse
        let queue = invalidations
        service = PeerService(volume: volume, logger: log) { change in
            queue.async {
                guard let (session, adapter) = fuse.with({ $0 }) else { return }
                switch change {
                case let .entry(parent, name):
                    session.invalidateEntry(parent: parent, name: name)
                case let .removed(parent, name):
                    adapter.peerRemovedName(parent: parent, name: name)
                    session.invalidateEntry(parent: parent, name: name)
                case let .renamed(parent, name, newParent, newName, exchange):
                    adapter.peerRenamed(parent: parent, name: name, newParent: newParent, newName: newName, exchange: exchange)
                    session.invalidateEntry(parent: parent, name: name)
                    session.invalidateEntry(parent: newParent, name: newName)
                case let .content(id):
                    session.invalidateInode(id)
                }
            }
        }
        // Before the listener: a create from the peer may need a local entry to give up its name.
        volume.localApply = { [service] m in service.applyHealed(m) }
        let (host, port) = try Self.split(cfg.listen, "listen")
        let lc = PeerListener.Configuration(identity: identity, host: host, port: port)
        let result = Locked<Result<PeerListener, PeerLinkError>?>(nil)
        let sem = DispatchSemaphore(value: 0)
        let service = self.service
        Task {
            do throws(PeerLinkError) {
                let l = try await PeerListener(configuration: lc, logger: log, disconnected: { service.peerDisconnected() }) { m, id, reply in
                    service.handle(m, requestID: id, reply: reply)
                }
                result.with { $0 = .success(l) }
            } catch {
                result.with { $0 = .failure(error) }
            }
            sem.signal()
        }
        sem.wait()
        switch result.with({ $0 })! {
        case .success(let l): listener = l
        case .failure(let e):
            Self.shutdown(client)
            throw AdminError(problem: "cannot listen for the peer on \(cfg.listen): \(e)",
                             fix: "check `listen` in the config and that no other process uses that port")
        }
        catchUp = CatchUp(volume: volume, logger: log)
        do {
            healer = try Healer(volume: volume, service: service, node: cfg.node, peer: peer.node,
                                settings: HealSettings(rateBytesPerSecond: cfg.healRate, concurrency: cfg.healConcurrency,
                                                       scrubBytesPerSecond: cfg.scrubRate, scrubInterval: cfg.scrubInterval),
                                logger: log)
        } catch {
            let (l, c) = (listener, client)
            let sem = DispatchSemaphore(value: 0)
            Task { await l.close(); await c.shutdown(); sem.signal() }
            sem.wait()
            throw AdminError(problem: "cannot read the heal state from the journal: \(error)",
                             fix: "check the journal's disk; `twinfs journal rebuild` rebuilds it from the brick")
        }
        volume.healHooks = healer
        volume.writeGate = writeGate
        writeGate?.start(volume: volume)
        catchUp.start()
        healer.start()
    }

    /// Before mounting: give the peer a moment to tell what it owes us, so a node that was
    /// down does not serve stale files in its first seconds.
    func awaitPeer(timeout: Duration, log: Logger) {
        if volume.waitForPeerState(timeout: timeout) {
            log.notice("peer connected; replication \(volume.mode.rawValue)")
        } else if volume.startedAlone() == .outdated {
            log.error("peer not reachable within \(timeout), and this node may lack changes the peer acknowledged while it was down: OUTDATED, serving nothing until the peer is reachable; to serve anyway (risk: those changes are missing here, and files changed on both nodes become split brains): `twinfs promote --force`")
        } else {
            log.warning("peer not reachable within \(timeout); serving alone (DEGRADED) and recording what it must receive")
        }
    }

    func attach(session: FuseSession, adapter: FuseAdapter) {
        fuse.with { $0 = (session, adapter) }
    }

    func stop() {
        fuse.with { $0 = nil }
        writeGate?.lease.stop()
        healer.requestStop()
        catchUp.stop()
        let sem = DispatchSemaphore(value: 0)
        let l = listener
        let c = client
        Task {
            await l.close()
            await c.shutdown()
            sem.signal()
        }
        sem.wait()
        // Requests in flight failed with the link: the healer's threads end now.
        healer.stop()
        // Files the peer was sending when the link closed stay incomplete replicas (fetched
        // whole at the next start), never recorded as clean copies.
        service.applier.releaseAll()
        invalidations.sync {}
    }

    private static func shutdown(_ c: PeerClient) {
        let sem = DispatchSemaphore(value: 0)
        Task { await c.shutdown(); sem.signal() }
        sem.wait()
    }

    static func split(_ hostPort: String, _ key: String) throws(AdminError) -> (String, Int) {
        guard let i = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: i)...]) else {
            throw AdminError(problem: "\(key) '\(hostPort)' is not host:port", fix: "write it as 192.0.2.10:7790")
        }
        var host = String(hostPort[..<i])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }
}
