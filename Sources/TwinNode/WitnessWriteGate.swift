import Foundation
import HADaemon
import Logging
import PeerProtocol
import Replication
import TwinCore

/// The witness mode of writes (see `WriteGate`): with `ha_config` naming a twinfs-ha config that
/// has a [witness], a node cut off from its peer acknowledges changes only while it holds the
/// witness's lease, the same lease its twinfs-ha holds for the public addresses (it asks as
/// "<ha node>/fs"; the witness counts both askers as one holder, see `LeaseTable`).
final class WitnessWriteGate: WriteGate {
    let lease: WriteLease

    init(lease: WriteLease) { self.lease = lease }

    /// The gate `haConfig` asks for; nil without `ha_config` or without a witness there.
    static func make(haConfig: String?, log: Logger) throws(AdminError) -> WitnessWriteGate? {
        guard let path = haConfig else { return nil }
        let ha = try HAConfig.load(path: path)
        guard let w = ha.witness else { return nil }
        let secret = try SecretFile.load(path: ha.secretFile)
        let transport = try UDPWitnessTransport(address: w.address, secret: secret)
        let lease = WriteLease(asker: ha.node + "/fs", witness: w.address, lease: .milliseconds(Int64(w.lease * 1000)),
                               transport: transport, logger: log)
        log.notice("witness mode: while cut off from its peer this node accepts writes only holding the lease of the witness at \(w.address) (as \(ha.node))")
        return WitnessWriteGate(lease: lease)
    }

    func permitApart() throws(FSError) {
        guard lease.permit() else { throw FSError(EROFS) }
    }

    /// Renews the lease while the volume is cut off from its peer and serves. An OUTDATED node
    /// takes no writes anyway: it must not hold the lease the serving node needs.
    func start(volume: ReplicatedVolume) {
        lease.start { [weak volume] in
            guard let v = volume else { return false }
            return v.mode == .degraded && v.currencyState != .outdated
        }
    }

    /// Why writes are refused now (the volume is cut off and the lease is not held), or nil.
    func refusal(volume: ReplicatedVolume) -> String? {
        volume.mode == .degraded ? lease.refusal() : nil
    }
}
