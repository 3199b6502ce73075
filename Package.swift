// swift-tools-version:6.0
// TwinFS: a two-node replicated file service for PACS archives.
// The target list is the architecture: each module has one job (see docs/ARCHITECTURE.md).
import PackageDescription

let package = Package(
    name: "TwinFS",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "twinfs", targets: ["twinfs"]),
        .executable(name: "twinfs-ha", targets: ["twinfs-ha"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // System libraries the user fixed: libfuse3, libsqlite3, libxxhash.
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // Constants and macro wrappers Swift's Glibc module does not expose (_GNU_SOURCE).
        .target(name: "CTwinShims", cSettings: [.define("_GNU_SOURCE")]),

        // Value types shared by every layer: errors an admin can read, ids, file kinds.
        .target(name: "TwinCore"),
        // The node's TOML configuration and its validation.
        .target(name: "TwinConfig", dependencies: ["TwinCore", .product(name: "TOMLKit", package: "TOMLKit")]),
        // XXH3-128 content hashing (streaming and whole-file).
        .target(name: "Fixity", dependencies: ["CXXHash", "TwinCore"]),
        // The brick: a plain directory tree, its marker and TwinFS's private area.
        .target(name: "BrickStore", dependencies: ["TwinCore", "CTwinShims", "Fixity"]),
        // The SQLite journal: one row per inode and per name, group-committed.
        .target(name: "Journal", dependencies: ["TwinCore", "CSQLite"]),
        // The operations interface and the local volume (brick + journal); replication plugs in here.
        .target(name: "Volume", dependencies: ["TwinCore", "BrickStore", "Journal", "Fixity", "CTwinShims",
                                               .product(name: "Logging", package: "swift-log")]),
        // The libfuse low-level adapter: kernel requests -> Volume calls -> exactly one reply.
        .target(name: "FuseAdapter", dependencies: ["CFuse3", "CTwinShims", "TwinCore", "Volume",
                                                    .product(name: "Logging", package: "swift-log")]),
        // The root-only local control socket (status, verify) and its client.
        .target(name: "ControlSocket", dependencies: ["TwinCore",
                                                      .product(name: "NIOCore", package: "swift-nio"),
                                                      .product(name: "NIOPosix", package: "swift-nio"),
                                                      .product(name: "Logging", package: "swift-log")]),
        // The peer link's wire format: versioned binary frames, authentication, bounds-checked decoding.
        .target(name: "PeerProtocol", dependencies: ["TwinCore",
                                                     .product(name: "NIOCore", package: "swift-nio"),
                                                     .product(name: "Crypto", package: "swift-crypto")]),
        // The authenticated, pipelined TCP link between the two nodes (SwiftNIO).
        .target(name: "PeerLink", dependencies: ["PeerProtocol", "TwinCore",
                                                 .product(name: "NIOCore", package: "swift-nio"),
                                                 .product(name: "NIOPosix", package: "swift-nio"),
                                                 .product(name: "Logging", package: "swift-log")]),
        // The receiving side of replication: applies the peer's messages to this node's brick and journal.
        .target(name: "Replication", dependencies: ["TwinCore", "Volume", "Journal", "BrickStore", "Fixity", "PeerProtocol", "PeerLink",
                                                    .product(name: "Logging", package: "swift-log"),
                                                    .product(name: "NIOCore", package: "swift-nio")]),
        // An in-process peer link with seeded faults, for testing replication without sockets (as NIOEmbedded).
        .target(name: "ReplicationTesting", dependencies: ["Replication", "PeerProtocol", "TwinCore"]),
        // The self-heal daemon: rebuild of a replaced brick, full heal, scrub, split-brain resolution.
        .target(name: "Healer", dependencies: ["TwinCore", "Volume", "Journal", "BrickStore", "Fixity", "PeerProtocol", "Replication",
                                               .product(name: "Logging", package: "swift-log"),
                                               .product(name: "NIOCore", package: "swift-nio")]),
        // Prometheus: the io-stats translator (counts and times every operation) and the endpoint.
        .target(name: "NodeMetrics", dependencies: ["TwinCore", "Volume",
                                                    .product(name: "Prometheus", package: "swift-prometheus"),
                                                    .product(name: "NIOCore", package: "swift-nio"),
                                                    .product(name: "NIOPosix", package: "swift-nio"),
                                                    .product(name: "NIOHTTP1", package: "swift-nio")]),
        // A node: validates config, opens brick and journal, recovers, mounts, serves control.
        .target(name: "TwinNode", dependencies: ["TwinCore", "TwinConfig", "BrickStore", "Journal", "Volume",
                                                 "FuseAdapter", "ControlSocket", "Fixity", "Replication", "PeerLink", "PeerProtocol", "Healer", "NodeMetrics", "HADaemon", "ObjectStore",
                                                 .product(name: "Prometheus", package: "swift-prometheus"),
                                                 .product(name: "Logging", package: "swift-log")]),
        // Raw-packet helpers of the HA daemon: gratuitous ARP, ARP probe, tickle ACK.
        .target(name: "CHAShims"),
        // An S3 client for the archive tier: SigV4 signing, object operations over AsyncHTTPClient,
        // typed errors, and an in-memory store with injectable faults for the layers above.
        .target(name: "ObjectStore", dependencies: ["TwinCore",
                                                    .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                    .product(name: "NIOCore", package: "swift-nio"),
                                                    .product(name: "NIOHTTP1", package: "swift-nio"),
                                                    .product(name: "Crypto", package: "swift-crypto")]),
        // The archive tier's pure logic: which files qualify, object keys, the manifest, the stub in the brick.
        .target(name: "Tier", dependencies: ["TwinCore", "TwinConfig", "ObjectStore", "Fixity", "Journal", "Volume"]),
        // The CTDB-like heartbeat daemon: owns the floating address, event scripts, witness.
        .target(name: "HADaemon", dependencies: ["TwinCore", "TwinConfig", "ControlSocket", "PeerProtocol", "CHAShims",
                                                 .product(name: "Crypto", package: "swift-crypto"),
                                                 .product(name: "TOMLKit", package: "TOMLKit"),
                                                 .product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "twinfs-ha", dependencies: ["HADaemon", "TwinCore", "ControlSocket", "PeerProtocol",
                                                            .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                            .product(name: "Logging", package: "swift-log")]),
        // The `twinfs` command: node, status, verify, journal rebuild, demo.
        .executableTarget(name: "twinfs", dependencies: ["TwinNode", "TwinConfig", "ControlSocket", "TwinCore", "CTwinShims", "HADaemon", "Healer", "Journal",
                                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                         .product(name: "Logging", package: "swift-log")]),

        .testTarget(name: "UnitTests", dependencies: ["TwinCore", "TwinConfig", "Fixity", "BrickStore", "Journal", "Volume"]),
        .testTarget(name: "PeerProtocolTests", dependencies: ["PeerProtocol", "TwinCore",
                                                              .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "PeerLinkTests", dependencies: ["PeerLink", "PeerProtocol", "TwinCore",
                                                          .product(name: "NIOCore", package: "swift-nio"),
                                                          .product(name: "NIOPosix", package: "swift-nio")]),
        // Replica applier: mirrored volumes compared entry by entry, refusals, and over a real peer link (needs root).
        .testTarget(name: "ReplicationTests", dependencies: ["Replication", "ReplicationTesting", "Volume", "Journal", "BrickStore", "Fixity", "PeerProtocol",
                                                             "PeerLink", "TwinCore", "Healer",
                                                             .product(name: "Logging", package: "swift-log"),
                                                             .product(name: "NIOCore", package: "swift-nio"),
                                                             .product(name: "NIOPosix", package: "swift-nio")]),
        // Real mounts and real node processes: needs root and /dev/fuse (skipped otherwise).
        // twinfs-ha in network namespaces (root): failover, partitions, witness, tickle ACK.
        .testTarget(name: "HATests", dependencies: ["TestSupport", "TwinCore"], exclude: ["probe.py", "smb_session.py"]),
        // Child processes shared by the integration and HA tests.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // The healer's decisions: which copy a heal trusts, split-brain policies, the throttle.
        .testTarget(name: "HealerTests", dependencies: ["Healer", "PeerProtocol"]),
        // The tier: SigV4 against AWS's vectors, the S3 client against a private Ceph RGW (.ci/rgw.sh; skipped without ceph), config, policy.
        .testTarget(name: "TierTests", dependencies: ["ObjectStore", "Tier", "TwinConfig", "TwinCore", "Fixity", "Journal", "Volume", "BrickStore", "CTwinShims",
                                                      .product(name: "Logging", package: "swift-log"),
                                                      .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "HADaemonTests", dependencies: ["HADaemon", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "IntegrationTests", dependencies: ["TestSupport", "TwinCore", "TwinConfig", "Fixity", "Journal", "CTwinShims",
                                                           "PeerLink", "PeerProtocol",
                                                           .product(name: "NIOCore", package: "swift-nio")],
                    exclude: ["pacs"]),
    ],
    swiftLanguageModes: [.v6]
)
