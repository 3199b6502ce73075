import TwinCore

/// The cluster secret both nodes share (config `secret_file`). Whoever can read it can join the
/// volume as a node, so a file others can read or write is refused rather than used.
public enum SecretFile {
    public static let minimumBytes = 16
    /// A key file, not a document: anything bigger is the wrong file.
    public static let maximumBytes = 64 * 1024

    /// The secret's bytes. A trailing newline (from `echo` or an editor) is dropped, so a text
    /// secret written slightly differently on the two nodes still matches.
    public static func load(path: String) throws(AdminError) -> [UInt8] {
        let create = "create one with `head -c 32 /dev/urandom > \(path) && chmod 600 \(path)` and copy it to both nodes"
        var bytes = try PrivateFile.read(path: path, what: "secret file", key: "secret_file", create: create,
                                         renew: "give the two nodes a new secret", maximumBytes: maximumBytes)
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }

        guard bytes.count >= minimumBytes else {
            throw AdminError(problem: "secret file \(path) holds \(bytes.count) bytes, at least \(minimumBytes) are needed",
                             fix: create)
        }
        return bytes
    }
}
