import Glibc

/// A filesystem error carried as an errno value; the FUSE adapter replies with it as is.
public struct FSError: Error, Sendable, Equatable, CustomStringConvertible {
    public let errno: Int32
    public init(_ errno: Int32) { self.errno = errno }

    /// The errno left by the last failed libc call.
    public static var last: FSError { FSError(Glibc.errno) }

    public var description: String { String(cString: strerror(errno)) }

    public static let notFound = FSError(ENOENT)
    public static let exists = FSError(EEXIST)
    public static let invalid = FSError(EINVAL)
    public static let io = FSError(EIO)
    public static let permission = FSError(EPERM)
    public static let notSupported = FSError(EOPNOTSUPP)
    public static let badHandle = FSError(EBADF)
    public static let noData = FSError(ENODATA)
}

/// Runs a libc call that returns -1 on failure, retrying EINTR.
@inline(__always)
public func sys<T: BinaryInteger>(_ body: () -> T) throws(FSError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw FSError(e)
    }
}
