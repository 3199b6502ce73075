import Crypto

/// An S3 access key pair. `description` never shows the secret, so logging a value that holds
/// credentials cannot leak it.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible {
    public let accessKey: String
    public let secretKey: String

    public init(accessKey: String, secretKey: String) {
        self.accessKey = accessKey
        self.secretKey = secretKey
    }

    public var description: String { "S3Credentials(accessKey: \(accessKey), secretKey: <hidden>)" }
}

/// What the signature says about the body: its SHA-256, or nothing (`UNSIGNED-PAYLOAD`, which S3
/// accepts so that a large body need not be hashed twice; Content-MD5 then guards it).
public enum PayloadHash: Sendable, Equatable {
    case sha256(hex: String)
    case unsigned

    public static let emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public static func of(_ bytes: some Sequence<UInt8>) -> PayloadHash {
        var h = SHA256()
        h.update(data: Array(bytes))
        return .sha256(hex: Hex.encode(h.finalize()))
    }

    /// The value of `x-amz-content-sha256` and the last line of the canonical request.
    public var value: String {
        switch self {
        case .sha256(let hex): return hex
        case .unsigned: return "UNSIGNED-PAYLOAD"
        }
    }
}

/// One request as SigV4 sees it. `path` is the object path as it is, not yet percent-encoded
/// (S3 encodes each key byte once, and does not normalise "." or "//"); query items and
/// headers are raw too. `headers` are exactly the headers to sign, `host` and `x-amz-date`
/// included.
public struct SigV4Request: Sendable, Equatable {
    public var method: String
    public var path: String
    public var query: [(name: String, value: String)]
    public var headers: [(name: String, value: String)]
    public var payload: PayloadHash

    public init(method: String, path: String, query: [(name: String, value: String)] = [],
                headers: [(name: String, value: String)], payload: PayloadHash) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payload = payload
    }

    public static func == (a: SigV4Request, b: SigV4Request) -> Bool {
        a.method == b.method && a.path == b.path && a.payload == b.payload
            && a.query.elementsEqual(b.query, by: ==) && a.headers.elementsEqual(b.headers, by: ==)
    }
}

/// The credential scope: day, region, service.
public struct SigV4Scope: Sendable, Equatable {
    public var date: UTCTime
    public var region: String
    public var service: String

    public init(date: UTCTime, region: String, service: String = "s3") {
        self.date = date
        self.region = region
        self.service = service
    }

    public var string: String { "\(date.day)/\(region)/\(service)/aws4_request" }
}

/// The result of signing, with the intermediate strings so that a mismatch is easy to find.
public struct SigV4Signature: Sendable, Equatable {
    public let canonicalRequest: String
    public let stringToSign: String
    public let signedHeaders: String
    public let signature: String
    public let authorization: String
}

/// AWS Signature Version 4 as S3 uses it: pure functions of the request, the credentials and
/// the time, tested against AWS's published vectors.
public enum SigV4 {
    public static func sign(_ request: SigV4Request, credentials: S3Credentials, scope: SigV4Scope) -> SigV4Signature {
        let (headerBlock, signed) = canonicalHeaders(request.headers)
        let creq = [request.method, encodePath(request.path), canonicalQuery(request.query),
                    headerBlock, signed, request.payload.value].joined(separator: "\n")
        let sts = ["AWS4-HMAC-SHA256", scope.date.amzDate, scope.string, Hex.encode(SHA256.hash(data: Array(creq.utf8)))]
            .joined(separator: "\n")
        let key = signingKey(secret: credentials.secretKey, scope: scope)
        let signature = Hex.encode(HMAC<SHA256>.authenticationCode(for: Array(sts.utf8), using: key))
        let auth = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKey)/\(scope.string), SignedHeaders=\(signed), Signature=\(signature)"
        return SigV4Signature(canonicalRequest: creq, stringToSign: sts, signedHeaders: signed,
                              signature: signature, authorization: auth)
    }

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), "aws4_request").
    public static func signingKey(secret: String, scope: SigV4Scope) -> SymmetricKey {
        var key = SymmetricKey(data: Array("AWS4\(secret)".utf8))
        for part in [scope.date.day, scope.region, scope.service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        return key
    }

    /// Lowercased names sorted, values trimmed with inner runs of spaces collapsed, repeated
    /// names joined with commas in the order given.
    static func canonicalHeaders(_ headers: [(name: String, value: String)]) -> (block: String, signed: String) {
        var merged: [String: [String]] = [:]
        for h in headers { merged[h.name.lowercased(), default: []].append(collapseSpaces(h.value)) }
        let names = merged.keys.sorted()
        let block = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        return (block, names.joined(separator: ";"))
    }

    static func collapseSpaces(_ value: String) -> String {
        value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
    }

    /// Each name and value encoded (a "/" too), sorted by name then value, in byte order.
    public static func canonicalQuery(_ items: [(name: String, value: String)]) -> String {
        items.map { (encode($0.name, keepSlash: false), encode($0.value, keepSlash: false)) }
            .sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    /// The path as S3 wants it on the wire and in the canonical request: every byte outside
    /// A-Z a-z 0-9 - . _ ~ and / percent-encoded once.
    public static func encodePath(_ path: String) -> String { encode(path, keepSlash: true) }

    public static func encode(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            if isUnreserved(b) || (keepSlash && b == UInt8(ascii: "/")) {
                out.unicodeScalars.append(UnicodeScalar(b))
            } else {
                out += "%" + Hex.upperByte(b)
            }
        }
        return out
    }

    private static func isUnreserved(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}

/// Hex of digests and bytes.
public enum Hex {
    private static let lower = Array("0123456789abcdef".utf8)
    private static let upper = Array("0123456789ABCDEF".utf8)

    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out = [UInt8]()
        for b in bytes {
            out.append(lower[Int(b >> 4)])
            out.append(lower[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        let digits = Array(s.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let hi = value(digits[i]), let lo = value(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    static func upperByte(_ b: UInt8) -> String {
        String(decoding: [upper[Int(b >> 4)], upper[Int(b & 0xF)]], as: UTF8.self)
    }
}
