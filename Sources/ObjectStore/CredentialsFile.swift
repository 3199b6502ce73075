import TwinCore

/// The tier's S3 keys (config `tier.credentials_file`), in AWS's shared-credentials format so the
/// same file works with `aws` and boto3 (AWS_SHARED_CREDENTIALS_FILE) when restoring without TwinFS:
///
///     [default]
///     aws_access_key_id = AKIA...
///     aws_secret_access_key = ...
///
/// Read with the same rules as the cluster secret (`PrivateFile`): 0600, regular, small.
public enum CredentialsFile {
    public static let maximumBytes = 64 * 1024

    public static func load(path: String) throws(AdminError) -> S3Credentials {
        let bytes = try PrivateFile.read(path: path, what: "tier credentials file", key: "tier.credentials_file",
                                         create: createHint(path), renew: "ask the store's admin for new keys",
                                         maximumBytes: maximumBytes)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw AdminError(problem: "tier credentials file \(path) is not UTF-8 text", fix: createHint(path))
        }
        return try parse(text, path: path)
    }

    static func createHint(_ path: String) -> String {
        "write `[default]`, `aws_access_key_id = KEY` and `aws_secret_access_key = SECRET` on three lines to \(path) and run `chmod 600 \(path)`"
    }

    /// The `[default]` profile, or the only one; keys outside a section count as `[default]`.
    public static func parse(_ text: String, path: String = "<string>") throws(AdminError) -> S3Credentials {
        var profiles: [String: [String: String]] = [:]
        var order: [String] = []
        var section = "default"
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else {
                    throw AdminError(problem: "tier credentials file \(path) line \(n + 1) is not a [profile] header", fix: createHint(path))
                }
                section = String(line.dropFirst().dropLast()).trimmingSpaces
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw AdminError(problem: "tier credentials file \(path) line \(n + 1) is not `name = value`", fix: createHint(path))
            }
            if profiles[section] == nil { order.append(section) }
            profiles[section, default: [:]][String(line[..<eq]).trimmingSpaces.lowercased()] = String(line[line.index(after: eq)...]).trimmingSpaces
        }
        let chosen = profiles["default"] != nil ? "default" : (order.count == 1 ? order[0] : nil)
        guard let name = chosen, let profile = profiles[name] else {
            throw AdminError(problem: order.isEmpty ? "tier credentials file \(path) holds no keys"
                                                    : "tier credentials file \(path) has profiles \(order.joined(separator: ", ")) but no [default]",
                             fix: createHint(path))
        }
        guard let ak = profile["aws_access_key_id"], !ak.isEmpty, let sk = profile["aws_secret_access_key"], !sk.isEmpty else {
            throw AdminError(problem: "tier credentials file \(path) lacks aws_access_key_id or aws_secret_access_key in [\(name)]",
                             fix: createHint(path))
        }
        return S3Credentials(accessKey: ak, secretKey: sk)
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
