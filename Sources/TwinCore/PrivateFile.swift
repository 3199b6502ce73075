import Glibc

/// A file holding a key (the cluster secret, the tier's S3 keys). Whoever can read it holds the
/// key, so a file others can read or write is refused rather than used; so is anything that is
/// not a regular file or is too big to be a key file. One reader, so every key file follows the
/// same rules and gives the same messages.
public enum PrivateFile {
    /// The file's bytes. `what` names it in messages ("secret file", "tier credentials file"),
    /// `key` is its config key, `create` says how to make a good one, `renew` what to do if
    /// others may have read it.
    public static func read(path: String, what: String, key: String, create: String, renew: String,
                            maximumBytes: Int) throws(AdminError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AdminError(problem: "cannot read \(what) \(path): \(String(cString: strerror(errno)))", fix: create)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw AdminError(problem: "\(what) \(path) is not a regular file", fix: "point \(key) at a file; " + create)
        }
        let mode = String(st.st_mode & 0o7777, radix: 8)
        guard st.st_mode & (S_IROTH | S_IWOTH) == 0 else {
            throw AdminError(problem: "\(what) \(path) is readable or writable by every user (mode \(mode))",
                             fix: "run `chmod 600 \(path)` (and \(renew) if others may have read it)")
        }
        guard st.st_size <= maximumBytes else {
            throw AdminError(problem: "\(what) \(path) is \(st.st_size) bytes, more than a key file (\(maximumBytes) at most)",
                             fix: "check that \(key) names the right file; " + create)
        }
        return try readAll(fd, path: path, what: what, key: key, create: create, maximumBytes: maximumBytes)
    }

    private static func readAll(_ fd: Int32, path: String, what: String, key: String, create: String,
                                maximumBytes: Int) throws(AdminError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximumBytes + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buf in Glibc.read(fd, buf.baseAddress! + count, buf.count - count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminError(problem: "cannot read \(what) \(path): \(String(cString: strerror(errno)))", fix: create)
            }
            count += n
        }
        guard count <= maximumBytes else {
            throw AdminError(problem: "\(what) \(path) grew past \(maximumBytes) bytes while being read",
                             fix: "check that \(key) names the right file; " + create)
        }
        bytes.removeSubrange(count...)
        return bytes
    }
}
