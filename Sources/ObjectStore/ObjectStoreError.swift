/// Why an object-store call failed, in words an administrator can act on. `isRetryable` tells
/// the layers above whether backing off and trying again can help.
public enum ObjectStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No TCP connection (refused, no route, DNS): the store or the network is down.
    case unreachable(endpoint: String, reason: String)
    /// Connected, but no answer in time.
    case timedOut(endpoint: String, seconds: Double)
    /// Wrong keys, or the user lacks the permission (HTTP 403 other than a lock refusal).
    case accessDenied(endpoint: String, code: String)
    /// The clocks differ by more than S3 allows (15 minutes).
    case clockSkew(endpoint: String)
    case noSuchBucket(bucket: String)
    case noSuchKey(key: String)
    /// A range outside the object (HTTP 416).
    case invalidRange(key: String, range: String)
    /// The store refused a delete or overwrite because Object Lock retains the object.
    case retained(key: String)
    /// What came back is not what was sent or promised (MD5, size, length).
    case integrity(key: String, detail: String)
    /// 5xx or SlowDown: the store is there but struggling.
    case server(endpoint: String, status: Int, code: String, message: String)
    /// Any other refusal (4xx) with S3's error code.
    case refused(endpoint: String, status: Int, code: String, message: String)
    /// The store answered something that is not S3 (malformed XML, missing header).
    case malformedResponse(endpoint: String, detail: String)
    /// The local file being uploaded could not be read.
    case localFile(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreachable(let e, let r): return "object store at \(e) unreachable: \(r)"
        case .timedOut(let e, let s): return "object store at \(e) did not answer within \(Self.seconds(s))"
        case .accessDenied(let e, let c): return "access denied by object store at \(e) (\(c)): check the tier credentials file and the user's permissions on the bucket"
        case .clockSkew(let e): return "object store at \(e) refused the request time (\"RequestTimeTooSkewed\"): set this node's clock with NTP"
        case .noSuchBucket(let b): return "bucket \(b) does not exist: create it with Object Lock enabled, or correct tier.bucket"
        case .noSuchKey(let k): return "object \(k) is not in the store"
        case .invalidRange(let k, let r): return "range \(r) lies outside object \(k)"
        case .retained(let k): return "object \(k) is under retention (S3 Object Lock): it cannot be deleted or overwritten before its retain-until date"
        case .integrity(let k, let d): return "object \(k) failed its integrity check: \(d)"
        case .server(let e, let s, let c, let m): return "object store at \(e) failed (HTTP \(s) \(c)\(m.isEmpty ? "" : ": \(m)"))"
        case .refused(let e, let s, let c, let m): return "object store at \(e) refused the request (HTTP \(s) \(c)\(m.isEmpty ? "" : ": \(m)"))"
        case .malformedResponse(let e, let d): return "object store at \(e) gave an answer that is not S3: \(d)"
        case .localFile(let p, let r): return "cannot read \(p) for upload: \(r)"
        }
    }

    /// True when the same request may succeed later without anyone changing anything.
    public var isRetryable: Bool {
        switch self {
        case .unreachable, .timedOut, .server, .integrity: return true
        case .accessDenied, .clockSkew, .noSuchBucket, .noSuchKey, .invalidRange, .retained, .refused, .malformedResponse, .localFile:
            return false
        }
    }

    private static func seconds(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
    }
}
