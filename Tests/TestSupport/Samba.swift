import Foundation

/// The share settings a test smbd serves with.
public enum SambaShareProfile: String, Sendable, CaseIterable {
    /// The shipped `ctdb-like/smb.conf.example`'s share section, verbatim.
    case recommended
    /// A share as an admin who never read the example sets one up (issue 15): ACLs and
    /// streams in xattrs, DOS attributes, strict sync, POSIX locks, no kernel share modes or
    /// oplocks; clients log on as the unprivileged `nobody`.
    case generic

    /// The SMB (and Unix) user smbtorture and smbclient log on as.
    public var user: String { self == .generic ? "nobody" : "root" }

    static let genericSettings = [
        "read only = no", "vfs objects = acl_xattr streams_xattr", "store dos attributes = yes",
        "ea support = yes", "strict sync = yes", "posix locking = yes", "kernel share modes = no",
        "kernel oplocks = no",
    ]
}

/// smb.conf for a test smbd: private directories under `dir` (nothing of the machine's Samba is
/// used), and for every share the share settings of the shipped `ctdb-like/smb.conf.example`,
/// verbatim, so the tests test what hospitals are told to deploy.
public enum SambaConfig {
    /// `interfaces`: nil listens on loopback only; else e.g. "eth0 lo" inside a namespace.
    /// `smb1`: also speak SMB1 (smbtorture's base.* suites need it).
    public static func render(dir: String, port: Int, shares: [(String, String)], repoRoot: String,
                              interfaces: String? = nil, profile: SambaShareProfile = .recommended,
                              smb1: Bool = false) throws -> String {
        for d in ["private", "lock", "state", "cache", "pid", "ncalrpc", "log"] {
            try FileManager.default.createDirectory(atPath: dir + "/" + d, withIntermediateDirectories: true)
        }
        let shareSettings = profile == .generic ? SambaShareProfile.genericSettings : try exampleShareSettings(repoRoot)
        var text = """
        [global]
           server role = standalone server
           unix charset = UTF-8
           smb ports = \(port)
           \(interfaces == nil ? "interfaces = lo\n   bind interfaces only = yes" : "")
           private dir = \(dir)/private
           lock directory = \(dir)/lock
           state directory = \(dir)/state
           cache directory = \(dir)/cache
           pid directory = \(dir)/pid
           ncalrpc dir = \(dir)/ncalrpc
           passdb backend = tdbsam:\(dir)/private/passdb.tdb
           log file = \(dir)/log/log.%m
           load printers = no
           disable spoolss = yes
           \(smb1 ? "server min protocol = NT1" : "")

        """
        for (name, path) in shares {
            text += "[\(name)]\n   path = \(path)\n" + shareSettings.map { "   " + $0 + "\n" }.joined() + "\n"
        }
        return text
    }

    static func exampleShareSettings(_ repoRoot: String) throws -> [String] {
        let example = try String(contentsOfFile: repoRoot + "/ctdb-like/smb.conf.example", encoding: .utf8)
        return example.components(separatedBy: "[pacs]")[1].split(separator: "\n")
            .map { String($0).trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") && !$0.hasPrefix("path") }
    }
}
