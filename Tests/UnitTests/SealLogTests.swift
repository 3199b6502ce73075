import BrickStore
import Foundation
@testable import Volume
import XCTest

/// When a sealed content commit makes the journal durable for the commits before it.
final class SealLogTests: XCTestCase {
    func testAFlushEveryBatchOrOnceTheOldestMarkerIsAnIntervalOld() throws {
        let dir = try tempDir(self)
        let log = SealLog(brick: try Brick(path: dir), batch: 3, interval: .seconds(1))
        let t0 = ContinuousClock.now
        let names = (1...4).map { log.newName(for: UInt64($0)) }
        XCTAssertEqual(Set(names).count, 4, "every commit gets its own marker name")
        XCTAssertTrue(names[0].hasPrefix("1-"), "the name starts with the file id")
        XCTAssertEqual(log.written(names[0], now: t0), .wait)
        XCTAssertEqual(log.written(names[1], now: t0 + .milliseconds(10)), .wait)
        XCTAssertEqual(log.written(names[2], now: t0 + .milliseconds(20)), .flush(Array(names[0...2])))
        XCTAssertEqual(log.written(names[3], now: t0 + .seconds(5)), .wait, "the age counts from the oldest pending")
        XCTAssertEqual(log.written("x", now: t0 + .seconds(6)), .flush([names[3], "x"]))
        XCTAssertEqual(log.takeAll(), [])
        XCTAssertEqual(log.written("y", now: t0 + .seconds(7)), .wait)
        XCTAssertEqual(log.takeAll(), ["y"])
    }
}
