import Glibc
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
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AdminError(problem: "cannot read secret file \(path): \(String(cString: strerror(errno)))", fix: create)
        }
        defer { close(fd) }

        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw AdminError(problem: "secret file \(path) is not a regular file", fix: "point secret_file at a file; " + create)
        }
        let mode = String(st.st_mode & 0o7777, radix: 8)
        guard st.st_mode & (S_IROTH | S_IWOTH) == 0 else {
            throw AdminError(problem: "secret file \(path) is readable or writable by every user (mode \(mode))",
                             fix: "run `chmod 600 \(path)` (and give the two nodes a new secret if others may have read it)")
        }
        guard st.st_size <= maximumBytes else {
            throw AdminError(problem: "secret file \(path) is \(st.st_size) bytes, more than a key file (\(maximumBytes) at most)",
                             fix: "check that secret_file names the secret; " + create)
        }

        var bytes = [UInt8](repeating: 0, count: maximumBytes + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buf in read(fd, buf.baseAddress! + count, buf.count - count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminError(problem: "cannot read secret file \(path): \(String(cString: strerror(errno)))", fix: create)
            }
            count += n
        }
        guard count <= maximumBytes else {
            throw AdminError(problem: "secret file \(path) grew past \(maximumBytes) bytes while being read",
                             fix: "check that secret_file names the secret; " + create)
        }
        bytes.removeSubrange(count...)
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }

        guard bytes.count >= minimumBytes else {
            throw AdminError(problem: "secret file \(path) holds \(bytes.count) bytes, at least \(minimumBytes) are needed",
                             fix: create)
        }
        return bytes
    }
}
