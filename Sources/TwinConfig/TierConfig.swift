import TOMLKit
import TwinCore

/// The `[tier]` table: where closed studies go (an S3 bucket), which files qualify, how long the
/// bucket must keep them (S3 Object Lock) and how fast the tier may upload. See
/// docs/twinfs.example.toml. The credentials file is only named here; its 0600 rules are checked
/// when it is read (`CredentialsFile.load`), as for `peer.secret_file`.
public struct TierConfig: Sendable, Equatable {
    public enum RetentionMode: String, Sendable, Equatable {
        case compliance, governance
    }

    /// Object Lock on every uploaded object, or none.
    public enum Retention: Sendable, Equatable {
        case off
        case locked(mode: RetentionMode, years: Int)
    }

    /// "http://127.0.0.1:7480": scheme, host and port only.
    public var endpoint: String
    public var bucket: String
    /// Key prefix: "" or ends with "/" ("pacs/"); every object key is prefix + the file's path.
    public var prefix: String
    public var region: String
    public var credentialsFile: String
    /// A file qualifies once closed and unchanged for this many days.
    public var qualifyAfterDays: Double
    /// Only files matching one of these qualify; empty: every file.
    public var paths: [PathGlob]
    public var retention: Retention
    /// Upload bytes per second; 0: no limit.
    public var bandwidth: Int64

    public static let keys: Set<String> = ["endpoint", "bucket", "prefix", "region", "credentials_file", "qualify_after_days",
                                           "paths", "retention_mode", "retention_years", "bandwidth_mb"]

    public init(endpoint: String, bucket: String, prefix: String, region: String = "us-east-1", credentialsFile: String,
                qualifyAfterDays: Double, paths: [PathGlob] = [], retention: Retention = .off, bandwidth: Int64 = 0) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.credentialsFile = credentialsFile
        self.qualifyAfterDays = qualifyAfterDays
        self.paths = paths
        self.retention = retention
        self.bandwidth = bandwidth
    }

    static func parse(_ value: any TOMLValueConvertible, path: String, volume: String) throws(AdminError) -> TierConfig {
        let r = try ConfigReader.section(value, "tier", keys: keys, path: path)
        var t = TierConfig(endpoint: try endpoint(r), bucket: try bucket(r), prefix: try prefix(r, volume: volume),
                           credentialsFile: try r.absolutePath("credentials_file"),
                           qualifyAfterDays: try required(r, "qualify_after_days", range: 0...36_500, example: "90"))
        if r.table["region"] != nil { t.region = try r.name("region") }
        t.paths = try globs(r)
        t.retention = try retention(r)
        if let mb = try r.number("bandwidth_mb", range: 0...100_000) { t.bandwidth = Int64(mb * 1_000_000) }
        return t
    }

    private static func fail(_ r: ConfigReader, _ problem: String, fix: String) -> AdminError {
        AdminError(problem: "config \(r.path): \(problem)", fix: fix)
    }

    private static func required(_ r: ConfigReader, _ key: String, range: ClosedRange<Double>, example: String) throws(AdminError) -> Double {
        guard let v = try r.number(key, range: range) else {
            throw fail(r, "required key 'tier.\(key)' is missing", fix: "add \(key) = \(example) under [tier]")
        }
        return v
    }

    /// http(s)://host:port with nothing after it: the client adds /bucket/key itself.
    static func endpoint(_ r: ConfigReader) throws(AdminError) -> String {
        let s = try r.string("endpoint")
        let fix = "write it as \"http://HOST:PORT\" or \"https://HOST:PORT\", e.g. \"http://127.0.0.1:7480\" (the bucket goes in tier.bucket)"
        var rest = Substring(s)
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) } else if rest.hasPrefix("https://") { rest = rest.dropFirst(8) } else {
            throw fail(r, "tier.endpoint = '\(s)' does not start with http:// or https://", fix: fix)
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/"), !rest.contains("?"), !rest.contains("@"), !rest.isEmpty,
              rest.contains(":") ? NodeConfig.parseHostPort(String(rest)) != nil : true else {
            throw fail(r, "tier.endpoint = '\(s)' is not a scheme, host and port only", fix: fix)
        }
        return String(s.hasSuffix("/") ? s.dropLast() : Substring(s))
    }

    /// S3's bucket naming rules: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
    static func bucket(_ r: ConfigReader) throws(AdminError) -> String {
        let s = try r.string("bucket")
        let bytes = Array(s.utf8)
        func alnum(_ b: UInt8) -> Bool { (97...122).contains(b) || (48...57).contains(b) }
        let ok = (3...63).contains(bytes.count) && bytes.allSatisfy { alnum($0) || $0 == 46 || $0 == 45 }
            && alnum(bytes.first!) && alnum(bytes.last!) && !s.contains("..")
        guard ok else {
            throw fail(r, "tier.bucket = '\(s)' is not a valid S3 bucket name",
                       fix: "use 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit")
        }
        return s
    }

    /// Relative, clean components, normalised to end with "/". Default: the volume's name + "/",
    /// so two volumes can share a bucket.
    static func prefix(_ r: ConfigReader, volume: String) throws(AdminError) -> String {
        guard r.table["prefix"] != nil else { return volume + "/" }
        guard let s = r.table["prefix"]?.string else {
            throw fail(r, "'tier.prefix' must be a string", fix: "write it in double quotes, e.g. prefix = \"pacs/\"")
        }
        if s.isEmpty { return "" }
        let trimmed = s.hasSuffix("/") ? String(s.dropLast()) : s
        let parts = trimmed.split(separator: "/", omittingEmptySubsequences: false)
        guard !s.hasPrefix("/"), s.utf8.count <= 512, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }),
              !s.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else {
            throw fail(r, "tier.prefix = '\(s)' is not a clean relative key prefix",
                       fix: "use names separated by single slashes, without a leading /, . or .., e.g. \"pacs/\" (or \"\" for none)")
        }
        return trimmed + "/"
    }

    static func globs(_ r: ConfigReader) throws(AdminError) -> [PathGlob] {
        guard let v = r.table["paths"] else { return [] }
        let fix = "write it as paths = [\"STUDIES/**\", \"*/*.dcm\"] (see docs/twinfs.example.toml)"
        guard let array = v.array else { throw fail(r, "'tier.paths' must be a list of patterns", fix: fix) }
        var out: [PathGlob] = []
        for (i, element) in array.enumerated() {
            guard let s = element.string else { throw fail(r, "tier.paths[\(i)] is not a string", fix: fix) }
            do {
                out.append(try PathGlob(s))
            } catch {
                throw fail(r, "tier.paths[\(i)] = '\(s)' \(error)", fix: fix)
            }
        }
        return out
    }

    static func retention(_ r: ConfigReader) throws(AdminError) -> Retention {
        let years = try r.number("retention_years", range: 1...100)
        let mode = r.table["retention_mode"] != nil ? try r.string("retention_mode") : nil
        switch (mode, years) {
        case (nil, nil), ("off", nil):
            return .off
        case ("off", _):
            throw fail(r, "tier.retention_years is set but tier.retention_mode is \"off\"",
                       fix: "remove retention_years, or set retention_mode = \"compliance\"")
        case (nil, _):
            throw fail(r, "tier.retention_years is set without tier.retention_mode",
                       fix: "add retention_mode = \"compliance\" (or \"governance\") under [tier]")
        case (let m?, let y):
            guard let parsed = RetentionMode(rawValue: m) else {
                throw fail(r, "tier.retention_mode = '\(m)' is not a retention mode",
                           fix: "use \"compliance\" (no one can delete before the date), \"governance\" or \"off\"")
            }
            guard let y else {
                throw fail(r, "tier.retention_mode = \"\(m)\" needs tier.retention_years",
                           fix: "add retention_years = 30 (whole years, 1 to 100) under [tier]")
            }
            guard y == y.rounded() else {
                throw fail(r, "tier.retention_years = \(y) is not a whole number of years", fix: "e.g. retention_years = 30")
            }
            return .locked(mode: parsed, years: Int(y))
        }
    }
}
