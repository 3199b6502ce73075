import NIOCore
import PeerProtocol
import XCTest

/// The heal replies come from the peer: decoded with the same bounds checks as messages.
final class HealWireTests: XCTestCase {
    let hash = [UInt8](repeating: 0xAB, count: 16)

    func testListingsRoundTrip() throws {
        let l = DirListing(entries: [
            ListedEntry(name: "Röntgen 🩻.dcm", id: 0x0100_0000_0000_0002, kind: .file, mode: 0o100644, uid: 1, gid: 2,
                        size: 524_288, mtimeNs: -5, hash: hash, busy: true),
            ListedEntry(name: "series-1", id: 0x0200_0000_0000_0009, kind: .directory, mode: 0o40750, uid: 0, gid: 0,
                        size: 0, mtimeNs: 7, hash: []),
            ListedEntry(name: "latest", id: 77, kind: .symlink, mode: 0o120777, uid: 0, gid: 0, size: 9, mtimeNs: 0,
                        hash: hash, target: "../series"),
        ], more: true)
        XCTAssertEqual(try DirListing.decode(l.encode()), l)
        let f = FileStateReport(exists: true, size: 3, mtimeNs: 4, journalHash: hash, bytesHash: [], busy: false, splitBrain: true)
        XCTAssertEqual(try FileStateReport.decode(f.encode()), f)
        let v = VolumeInfo(highestCounter: 1 << 40, files: 5, bytes: 6, rootMode: 0o755, rootUid: 0, rootGid: 10)
        XCTAssertEqual(try VolumeInfo.decode(v.encode()), v)
    }

    /// One listing entry written field by field, so that each field can be made hostile.
    func entry(name: String = "a.dcm", id: UInt64 = 5, kind: UInt8 = 1, hash: [UInt8]? = nil, target: String = "") -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt8(0)); b.writeInteger(UInt32(1))
        b.writeInteger(UInt32(name.utf8.count)); b.writeString(name)
        b.writeInteger(id); b.writeInteger(kind); b.writeInteger(UInt32(0o100644)); b.writeInteger(UInt32(0)); b.writeInteger(UInt32(0))
        b.writeInteger(Int64(1)); b.writeInteger(Int64(0))
        let h = hash ?? self.hash
        b.writeInteger(UInt32(h.count)); b.writeBytes(h)
        b.writeInteger(UInt32(target.utf8.count)); b.writeString(target)
        b.writeInteger(UInt8(0))
        return b
    }

    func testHostileListingsAreRefused() {
        XCTAssertNoThrow(try DirListing.decode(entry()))
        for (what, b) in [("dot-dot", entry(name: "..")), ("slash", entry(name: "a/b")), ("empty", entry(name: "")),
                          ("nul", entry(name: "a\u{0}b")), ("root id", entry(id: 1)), ("kind", entry(kind: 9)),
                          ("short hash", entry(hash: [1, 2, 3])), ("symlink without target", entry(kind: 3)),
                          ("file with target", entry(target: "/etc/passwd"))] {
            XCTAssertThrowsError(try DirListing.decode(b), what)
        }
        var trailing = entry()
        trailing.writeInteger(UInt8(0))
        XCTAssertThrowsError(try DirListing.decode(trailing), "trailing bytes")
        var tooMany = ByteBuffer()
        tooMany.writeInteger(UInt8(0)); tooMany.writeInteger(UInt32(DirListing.maxEntries + 1))
        XCTAssertThrowsError(try DirListing.decode(tooMany), "count over the limit")
        var truncated = entry()
        truncated.moveWriterIndex(to: truncated.writerIndex - 3)
        XCTAssertThrowsError(try DirListing.decode(truncated), "truncated")
    }
}
