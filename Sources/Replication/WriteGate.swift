import TwinCore

/// Whether this node may acknowledge a change its peer cannot be told of now. With a witness
/// (`WitnessWriteGate` in TwinNode) only the node holding the witness's lease may: the other
/// side of a partition answers EROFS, as GlusterFS does without quorum, and reads go on.
/// Without a gate (no witness): always (active-active, split brains detected per file).
public protocol WriteGate: Sendable {
    /// Returns if such a change may be acknowledged now; else throws EROFS (the gate logs why).
    func permitApart() throws(FSError)
}

extension ReplicatedVolume {
    /// Set once at start (nil: no witness).
    public var writeGate: (any WriteGate)? {
        get { writeGateBox.with { $0 } }
        set { writeGateBox.with { $0 = newValue } }
    }

    /// A change is (or is about to be) acknowledged without the peer: the gate must allow it.
    /// `cutOff` says the peer could not be told; nil: the mode says (degraded = out of reach,
    /// or its disk refuses changes: catching up means the peer is reachable and is told later).
    func permitApart(cutOff: Bool? = nil) throws(FSError) {
        guard let g = writeGate, cutOff ?? (gate.mode == .degraded) else { return }
        try g.permitApart()
    }
}
