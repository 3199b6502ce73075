import Foundation

/// smb.conf for a test smbd: private directories under `dir` (nothing of the machine's Samba is
/// used), and for every share the share settings of the shipped `ctdb-like/smb.conf.example`,
/// verbatim, so the tests test what hospitals are told to deploy.
public enum SambaConfig {
    /// `interfaces`: nil listens on loopback only; else e.g. "eth0 lo" inside a namespace.
    public static func render(dir: String, port: Int, shares: [(String, String)], repoRoot: String,
                              interfaces: String? = nil) throws -> String {
        for d in ["private", "lock", "state", "cache", "pid", "ncalrpc", "log"] {
            try FileManager.default.createDirectory(atPath: dir + "/" + d, withIntermediateDirectories: true)
        }
        let example = try String(contentsOfFile: repoRoot + "/ctdb-like/smb.conf.example", encoding: .utf8)
        let shareSettings = example.components(separatedBy: "[pacs]")[1].split(separator: "\n")
            .map { String($0).trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") && !$0.hasPrefix("path") }
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

        """
        for (name, path) in shares {
            text += "[\(name)]\n   path = \(path)\n" + shareSettings.map { "   " + $0 + "\n" }.joined() + "\n"
        }
        return text
    }
}
