import Glibc

/// A moment in whole seconds since the epoch, with the three spellings S3 needs. Formatting
/// goes through gmtime_r, not a shared formatter object, so it is pure and thread-safe.
public struct UTCTime: Sendable, Equatable, Comparable, Hashable {
    public let seconds: Int64

    public init(seconds: Int64) { self.seconds = seconds }

    public static func now() -> UTCTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UTCTime(seconds: Int64(ts.tv_sec))
    }

    public static func < (a: UTCTime, b: UTCTime) -> Bool { a.seconds < b.seconds }

    public func adding(seconds delta: Int64) -> UTCTime { UTCTime(seconds: seconds + delta) }

    /// Whole calendar years later, clamped to the month's last day (29 Feb + 1 year -> 28 Feb),
    /// so a retention of N years never ends a day early.
    public func addingYears(_ years: Int) -> UTCTime {
        var t = fields
        t.tm_year += Int32(years)
        let day = t.tm_mday
        t.tm_mday = 1
        var first = t
        let start = timegm(&first)
        var probe = t
        probe.tm_mon += 1
        let nextMonth = timegm(&probe)
        let daysInMonth = Int32((nextMonth - start) / 86400)
        t.tm_mday = min(day, daysInMonth)
        return UTCTime(seconds: Int64(timegm(&t)))
    }

    private var fields: tm {
        var t = time_t(seconds)
        var out = tm()
        gmtime_r(&t, &out)
        return out
    }

    private func format(_ pattern: String) -> String {
        var t = fields
        var buf = [Int8](repeating: 0, count: 64)
        let n = strftime(&buf, buf.count, pattern, &t)
        return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// "20150830T123600Z" (x-amz-date).
    public var amzDate: String { format("%Y%m%dT%H%M%SZ") }
    /// "20150830" (the scope's day).
    public var day: String { format("%Y%m%d") }
    /// "2015-08-30T12:36:00Z" (Object Lock's retain-until date, the manifest).
    public var iso8601: String { format("%Y-%m-%dT%H:%M:%SZ") }

    /// Reads "2015-08-30T12:36:00Z" or with fractional seconds "…:00.000Z" (S3 answers both).
    public static func parseISO8601(_ s: String) -> UTCTime? {
        let bytes = Array(s.utf8)
        guard bytes.count >= 20, bytes.last == UInt8(ascii: "Z") else { return nil }
        func num(_ r: Range<Int>) -> Int32? { Int32(String(decoding: bytes[r], as: UTF8.self)) }
        guard bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
              bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"),
              let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10),
              let h = num(11..<13), let mi = num(14..<16), let sec = num(17..<19),
              (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, sec < 61 else { return nil }
        let rest = bytes[19..<(bytes.count - 1)]
        guard rest.isEmpty || (rest.first == UInt8(ascii: ".") && rest.dropFirst().allSatisfy { $0 >= 48 && $0 <= 57 }) else {
            return nil
        }
        var t = tm()
        t.tm_year = y - 1900
        t.tm_mon = mo - 1
        t.tm_mday = d
        t.tm_hour = h
        t.tm_min = mi
        t.tm_sec = sec
        return UTCTime(seconds: Int64(timegm(&t)))
    }

    /// Reads an HTTP date, "Mon, 07 Dec 2026 17:04:00 GMT" (Last-Modified).
    public static func parseHTTPDate(_ s: String) -> UTCTime? {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let f = s.split(separator: " ")
        guard f.count == 6, f[0].hasSuffix(","), f[5] == "GMT", let day = Int32(f[1]), let month = months.firstIndex(of: String(f[2])),
              let year = Int32(f[3]) else { return nil }
        let hms = f[4].split(separator: ":").compactMap { Int32($0) }
        guard hms.count == 3, (1...31).contains(day), hms[0] < 24, hms[1] < 60, hms[2] < 61 else { return nil }
        var t = tm()
        t.tm_year = year - 1900
        t.tm_mon = Int32(month)
        t.tm_mday = day
        t.tm_hour = hms[0]
        t.tm_min = hms[1]
        t.tm_sec = hms[2]
        return UTCTime(seconds: Int64(timegm(&t)))
    }
}
