import NIOCore
import NIOPosix
import PeerProtocol
import TwinCore
import XCTest
@testable import PeerLink

final class LinkTests: XCTestCase {
    // 1. Handshake, then a ping and requests answered by the handler.
    func testHandshakeAndRoundTrip() async throws {
        try await withHarness { h in
            let recorder = Recorder()
            let listener = try await h.listener { message, id in
                recorder.begin(message, id)
                defer { recorder.end() }
                switch message {
                case .mkdir: return .reply(requestID: 0, errno: 0, payload: ByteBuffer(bytes: [1, 2, 3]))
                default: return .reply(requestID: 0, errno: 2 /* ENOENT */, payload: nil)
                }
            }
            let client = h.client(port: listener.port)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            XCTAssertEqual(client.state, .up)
            XCTAssertEqual(client.peerNode, "pacs-a")

            let pong = try await client.send(.ping)
            XCTAssertEqual(pong, .pong)

            let mkdir = Fixture.mkdir(1)
            guard case let .reply(requestID, errno, payload) = try await client.send(mkdir) else {
                return XCTFail("mkdir was not answered with a reply")
            }
            XCTAssertEqual(errno, 0)
            XCTAssertEqual(payload, ByteBuffer(bytes: [1, 2, 3]))
            let unlink = PeerMessage.unlink(parentPath: "studies", name: "gone.dcm")
            guard case let .reply(_, errno2, payload2) = try await client.send(unlink) else {
                return XCTFail("unlink was not answered with a reply")
            }
            XCTAssertEqual(errno2, 2)
            XCTAssertNil(payload2)

            // The handler saw exactly the two requests (not the ping), under the ids the replies name.
            let calls = recorder.calls
            XCTAssertEqual(calls.map(\.0), [mkdir, unlink])
            XCTAssertEqual(calls.first?.1, requestID)
            XCTAssertNotEqual(requestID, 0)

            let handled = await eventually { listener.statistics.requestsHandled == 2 }
            XCTAssertTrue(handled)
            let stats = listener.statistics
            XCTAssertEqual(stats.authenticatedConnections, 1)
            XCTAssertEqual(stats.activeConnections, 1)
            XCTAssertEqual(stats.refusedConnections, 0)
            XCTAssertEqual(stats.malformedFrames, 0)

            // Too big for one frame: refused before it takes any room in the window.
            do throws(PeerLinkError) {
                _ = try await client.send(.write(path: "a", stableID: 2, offset: 0,
                                                 data: ByteBuffer(repeating: 0, count: Frame.maxPayload)))
                XCTFail("an oversized write was sent")
            } catch {
                guard case .messageTooLarge = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(client.state, .up)

            // Misuse is refused before anything is sent.
            do throws(PeerLinkError) {
                _ = try await client.send(.reply(requestID: 1, errno: 0, payload: nil))
                XCTFail("a reply was accepted as a request")
            } catch {
                XCTAssertEqual(error, .notARequest("reply"))
            }
        }
    }

    /// The path the node's blocking threads use: `sendNow` from a plain thread, answered by a
    /// replying handler on a thread of its own; and the refusals that send the caller to `send`.
    func testSendNowToAReplyingHandlerAndItsRefusals() async throws {
        try await withHarness { h in
            let config = PeerListener.Configuration(identity: Fixture.serverIdentity(), host: "127.0.0.1", port: 0)
            let listener = try await PeerListener(configuration: config, group: h.group) { message, _, reply in
                // Answered later, from another thread, as PeerService does from its pool.
                Thread {
                    usleep(2000)
                    if case let .mkdir(_, _, _, _, _, id) = message {
                        reply(.reply(requestID: 0, errno: 0, payload: ByteBuffer(bytes: [UInt8(id & 0xff)])))
                    } else {
                        reply(.reply(requestID: 0, errno: 2, payload: nil))
                    }
                }.start()
            }
            h.onFinish { await listener.close() }
            let client = h.client(port: listener.port) { $0.maxInFlightRequests = 4 }
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            // Pipelined from one plain thread: every answer reaches its own request.
            let answers = Locked<[UInt64: Result<PeerMessage, PeerLinkError>]>([:])
            let accepted = Locked(0)
            let t = Thread {
                for n in 0..<4 {
                    let ok = client.sendNow(Fixture.mkdir(n), timeout: .seconds(5)) { r in answers.with { $0[UInt64(n)] = r } }
                    if ok { accepted.with { $0 += 1 } }
                }
            }
            t.start()
            let all = await eventually { answers.with { $0.count } == 4 }
            XCTAssertTrue(all)
            XCTAssertEqual(accepted.with { $0 }, 4)
            for n in 0..<4 {
                guard case let .success(.reply(_, errno, payload))? = answers.with({ $0[UInt64(n)] }) else {
                    return XCTFail("request \(n): \(String(describing: answers.with { $0[UInt64(n)] }))")
                }
                XCTAssertEqual(errno, 0)
                XCTAssertEqual(payload, ByteBuffer(bytes: [UInt8(100 + n)]))
            }
            // Refused, nothing sent: a window with no room, a non-request, a frame too big.
            let held = (0..<4).map { n in client.sendNow(Fixture.mkdir(10 + n), timeout: .seconds(5)) { _ in } }
            XCTAssertEqual(held, [true, true, true, true])
            XCTAssertFalse(client.sendNow(Fixture.mkdir(20), timeout: .seconds(5)) { _ in XCTFail("sent with a full window") })
            XCTAssertFalse(client.sendNow(.reply(requestID: 1, errno: 0, payload: nil), timeout: .seconds(5)) { _ in })
            XCTAssertFalse(client.sendNow(.write(path: "a", stableID: 2, offset: 0, data: ByteBuffer(repeating: 0, count: Frame.maxPayload)),
                                          timeout: .seconds(5)) { _ in })
            let handled = await eventually { listener.statistics.requestsHandled == 8 }
            XCTAssertTrue(handled)
            // The link down: refused at once (the caller's `send` then reports why).
            await listener.close()
            let down = await eventually { client.state != .up }
            XCTAssertTrue(down)
            XCTAssertFalse(client.sendNow(Fixture.mkdir(30), timeout: .seconds(5)) { _ in XCTFail("sent with the link down") })
        }
    }

    // 2. Wrong secret: the client reports the auth error, the server counts and records the refusal.
    func testWrongSecretIsRefused() async throws {
        try await withHarness { h in
            let recorder = Recorder()
            let listener = try await h.listener { m, id in
                recorder.begin(m, id)
                return .reply(requestID: 0, errno: 0, payload: nil)
            }
            let client = h.client(identity: Fixture.clientIdentity(secret: Array("another secret, same length!".utf8)),
                                  port: listener.port)
            let address = client.configuration.address
            let refused = await eventually { client.state == .down(.authenticationRefused(address: address)) }
            XCTAssertTrue(refused, "state is \(client.state)")
            XCTAssertTrue("\(client.state)".contains("wrong cluster secret"))
            do throws(PeerLinkError) {
                _ = try await client.send(Fixture.mkdir(1))
                XCTFail("a request passed a refused link")
            } catch {
                XCTAssertEqual(error, .authenticationRefused(address: address))
            }
            let counted = await eventually { listener.statistics.refusedConnections >= 1 }
            XCTAssertTrue(counted)
            let stats = listener.statistics
            XCTAssertEqual(stats.authenticatedConnections, 0)
            XCTAssertTrue(stats.recentRefusals.last?.hasPrefix("127.0.0.1:") ?? false, "\(stats.recentRefusals)")
            XCTAssertTrue(stats.recentRefusals.last?.contains("authentication failed") ?? false, "\(stats.recentRefusals)")
            XCTAssertTrue(recorder.messages.isEmpty)
            XCTAssertFalse(client.state.isUp)
        }
    }

    // 3. Wrong volume (and a peer with an unexpected name) refused by the listener.
    func testWrongVolumeIsRefused() async throws {
        try await withHarness { h in
            let recorder = Recorder()
            let listener = try await h.listener { m, id in
                recorder.begin(m, id)
                return .reply(requestID: 0, errno: 0, payload: nil)
            }
            let client = h.client(identity: Fixture.clientIdentity(volume: "radiology"), port: listener.port)
            let mismatch = await eventually {
                if case .down(.volumeMismatch) = client.state { return true }
                return false
            }
            XCTAssertTrue(mismatch, "state is \(client.state)")
            XCTAssertTrue("\(client.state)".contains("belongs to another volume"), "\(client.state)")
            do throws(PeerLinkError) {
                _ = try await client.send(Fixture.mkdir(1))
                XCTFail("a request passed a refused link")
            } catch {
                guard case .volumeMismatch = error else { return XCTFail("\(error)") }
            }
            let counted = await eventually { listener.statistics.refusedConnections >= 1 }
            XCTAssertTrue(counted)
            XCTAssertTrue(listener.statistics.recentRefusals.last?.contains("volume") ?? false)

            let stranger = h.client(identity: Fixture.clientIdentity(node: "pacs-c"), port: listener.port)
            let strangerRefused = await eventually {
                if case .down(.handshakeRefused) = stranger.state { return true }
                return false
            }
            XCTAssertTrue(strangerRefused, "state is \(stranger.state)")
            XCTAssertTrue(recorder.messages.isEmpty)
            XCTAssertEqual(listener.statistics.authenticatedConnections, 0)
        }
    }

    // A peer speaking another protocol version: both directions name the mismatch.
    func testVersionMismatch() async throws {
        try await withHarness { h in
            // A fake "newer" peer answering with a version-2 frame header.
            let fake = try await ServerBootstrap(group: h.group)
                .childChannelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(VersionTwoPeer())
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            h.onFinish { try? await fake.close() }
            let client = h.client(port: fake.localAddress!.port!)
            let mismatch = await eventually {
                if case .down(.versionMismatch) = client.state { return true }
                return false
            }
            XCTAssertTrue(mismatch, "state is \(client.state)")

            let listener = try await h.listener { _, _ in .reply(requestID: 0, errno: 0, payload: nil) }
            var hello = try frameBytes(.hello(node: "pacs-b", volume: "archive", protocolVersion: 99,
                                              nonce: Array(repeating: 7, count: 32)))
            hello.setInteger(UInt16(99), at: hello.readerIndex + 4)
            let closedByServer = try await throwBytes(hello, port: listener.port, group: h.group)
            XCTAssertTrue(closedByServer)
            let counted = await eventually { listener.statistics.refusedConnections == 1 }
            XCTAssertTrue(counted)
            XCTAssertTrue(listener.statistics.recentRefusals.last?.contains("version 99") ?? false,
                          "\(listener.statistics.recentRefusals)")
        }
    }

    // Before authentication only handshake-sized frames are accepted: announcing a big frame
    // gets the connection refused at once, without waiting for (or buffering) its payload.
    func testUnauthenticatedBigFrameIsRefusedAtOnce() async throws {
        try await withHarness { h in
            let listener = try await h.listener { _, _ in .reply(requestID: 0, errno: 0, payload: nil) }
            var bytes = FuzzTests.header(type: MessageType.write.rawValue, requestID: 1, length: UInt32(Frame.maxPayload))
            bytes.writeBytes(Array(repeating: 0, count: 4096))
            let start = ContinuousClock.now
            let closedByServer = try await throwBytes(bytes, port: listener.port, group: h.group, halfClose: false)
            XCTAssertTrue(closedByServer)
            XCTAssertLessThan((ContinuousClock.now - start).seconds, 1.0)
            let stats = listener.statistics
            XCTAssertEqual(stats.refusedConnections, 1)
            XCTAssertEqual(stats.malformedFrames, 1)
            XCTAssertTrue(stats.recentRefusals.last?.contains("the limit is 1024 bytes") ?? false, "\(stats.recentRefusals)")
        }
    }

    // 4. 2,000 concurrent 512 KiB writes on one connection, within the window.
    func testPipelinedWritesStayWithinWindow() async throws {
        let count = 2000
        let chunk = 512 * 1024
        let maxRequests = 64
        let maxBytes = 16 << 20
        try await withHarness { h in
            let recorder = Recorder()
            let listener = try await h.listener { message, id in
                guard case let .write(_, stableID, offset, data) = message else {
                    return .reply(requestID: 0, errno: 22, payload: nil)
                }
                recorder.begin(.ping, id)
                defer { recorder.end() }
                var echo = ByteBuffer()
                echo.writeInteger(stableID)
                echo.writeInteger(offset)
                echo.writeInteger(UInt32(data.readableBytes))
                echo.writeInteger(data.getInteger(at: data.readerIndex + data.readableBytes - 1, as: UInt8.self) ?? 0)
                return .reply(requestID: 0, errno: 0, payload: echo)
            }
            let client = h.client(port: listener.port) { c in
                c.maxInFlightRequests = maxRequests
                c.maxInFlightBytes = maxBytes
                c.requestTimeout = .seconds(10)
            }
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)

            var data = ByteBuffer(repeating: 0xA5, count: chunk - 1)
            data.writeInteger(UInt8(0x5A))
            let shared = data
            let start = ContinuousClock.now
            let failures = try await withThrowingTaskGroup(of: String?.self) { group in
                for i in 0..<count {
                    group.addTask {
                        let stableID = UInt64(1000 + i)
                        let offset = Int64(i) * Int64(chunk)
                        let reply = try await client.send(.write(path: "studies/series-\(i % 7)/img.dcm", stableID: stableID,
                                                                 offset: offset, data: shared))
                        guard case .reply(_, 0, var echo?) = reply,
                              echo.readInteger(as: UInt64.self) == stableID,
                              echo.readInteger(as: Int64.self) == offset,
                              echo.readInteger(as: UInt32.self) == UInt32(chunk),
                              echo.readInteger(as: UInt8.self) == 0x5A
                        else { return "request \(i) got a wrong answer: \(reply)" }
                        return nil
                    }
                }
                var failures: [String] = []
                for try await f in group { if let f { failures.append(f) } }
                return failures
            }
            let elapsed = ContinuousClock.now - start
            XCTAssertEqual(failures, [])
            let stats = client.statistics
            print("pipelining: \(count) x \(chunk / 1024) KiB in \(elapsed); peak in flight \(stats.peakInFlightRequests) requests, \(stats.peakInFlightBytes) bytes; handler peak concurrency \(recorder.peakRunning)")
            XCTAssertLessThanOrEqual(stats.peakInFlightRequests, maxRequests)
            XCTAssertLessThanOrEqual(stats.peakInFlightBytes, maxBytes)
            XCTAssertGreaterThan(stats.peakInFlightRequests, 8, "requests were not pipelined")
            XCTAssertEqual(stats.inFlightRequests, 0)
            XCTAssertEqual(stats.inFlightBytes, 0)
            XCTAssertEqual(stats.requestsSent, count)
            XCTAssertEqual(stats.requestsFailed, 0)
            XCTAssertEqual(stats.sessions, 1)
            XCTAssertEqual(recorder.calls.count, count)
            XCTAssertEqual(Set(recorder.calls.map(\.1)).count, count, "request ids were reused")
        }
    }

    // 5a. Peer stopped: requests fail fast, the state goes down; restarted on the same port: back up.
    func testPeerStoppedAndRestarted() async throws {
        try await withHarness { h in
            let handler: PeerListener.Handler = { _, _ in .reply(requestID: 0, errno: 0, payload: nil) }
            let first = try await h.listener(handler: handler)
            let port = first.port
            let client = h.client(port: port, configure: quickLink)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            _ = try await client.send(Fixture.mkdir(1))

            await first.close()
            let down = await eventually(timeout: .seconds(3)) { !client.state.isUp && client.state != .connecting }
            XCTAssertTrue(down, "state is \(client.state)")
            let start = ContinuousClock.now
            do throws(PeerLinkError) {
                _ = try await client.send(Fixture.mkdir(2), timeout: .seconds(1))
                XCTFail("a request succeeded with the peer stopped")
            } catch {
                XCTAssertTrue(error.isUnreachable, "\(error)")
                XCTAssertTrue(error.description.hasPrefix("peer unreachable at 127.0.0.1:\(port)"), error.description)
            }
            XCTAssertLessThan((ContinuousClock.now - start).seconds, 1.5)
            guard case .down(let reason) = client.state, reason.isUnreachable else {
                return XCTFail("state is \(client.state)")
            }

            _ = try await h.listener(port: port, handler: handler)
            let back = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(back, "state is \(client.state)")
            let reply = try await client.send(Fixture.mkdir(3))
            XCTAssertEqual(reply, .reply(requestID: reply.requestIDForTest, errno: 0, payload: nil))
            XCTAssertGreaterThanOrEqual(client.statistics.sessions, 2)
        }
    }

    // 5a. A peer that works longer than the request timeout while its link stays alive (a
    // commit re-reading a large file): the request waits for the answer and the link stays up.
    // The timeout bounds the peer's silence, not its work. (Before: the link went down.)
    func testALongRequestOnALiveLinkIsAnsweredNotTimedOut() async throws {
        try await withHarness { h in
            let listener = try await h.listener { m, _ in
                if case .commit = m { try? await Task.sleep(for: .milliseconds(3500)) }
                return .reply(requestID: 0, errno: 0, payload: nil)
            }
            let client = h.client(port: listener.port, configure: quickLink)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            let commit = PeerMessage.commit(path: "big.dcm", stableID: StableID.make(nodeOrdinal: 1, counter: 9), size: 1,
                                            xxh128: [UInt8](repeating: 1, count: 16), mtimeNs: 0)
            let answer = try await client.send(commit, timeout: .seconds(1))
            guard case .reply(_, 0, _) = answer else { return XCTFail("\(answer)") }
            XCTAssertTrue(client.state.isUp, "the link stayed up: \(client.state)")
        }
    }

    // 5b. Peer frozen (SIGSTOP): TCP stays open, nothing answers. The keepalive alone declares
    // it down; a request in flight fails within its timeout; thawed, the link comes back.
    func testFrozenPeerIsDetected() async throws {
        try await withHarness { h in
            let listener = try await h.listener { _, _ in .reply(requestID: 0, errno: 0, payload: nil) }
            let proxy = try await FreezableProxy(group: h.group, targetPort: listener.port)
            h.onFinish { await proxy.close() }
            let client = h.client(port: proxy.port, configure: quickLink)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            _ = try await client.send(Fixture.mkdir(1))

            // Idle link: only the keepalive can notice.
            var start = ContinuousClock.now
            await proxy.freeze()
            let down = await eventually(timeout: .seconds(4)) { !client.state.isUp }
            XCTAssertTrue(down)
            let detectedAfter = (ContinuousClock.now - start).seconds
            XCTAssertLessThan(detectedAfter, 1.0 + 0.2 + 0.8, "keepalive took \(detectedAfter) s")
            do throws(PeerLinkError) {
                _ = try await client.send(Fixture.mkdir(2), timeout: .seconds(1))
                XCTFail("a request succeeded with the peer frozen")
            } catch {
                XCTAssertTrue(error.isUnreachable, "\(error)")
            }

            await proxy.thaw()
            let back = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(back, "state is \(client.state)")
            _ = try await client.send(Fixture.mkdir(3))

            // Busy link: a request in flight when the peer freezes fails within timeout + margin.
            await proxy.freeze()
            start = ContinuousClock.now
            do throws(PeerLinkError) {
                _ = try await client.send(Fixture.mkdir(4), timeout: .seconds(1))
                XCTFail("a request succeeded with the peer frozen")
            } catch {
                XCTAssertTrue(error.isUnreachable, "\(error)")
                XCTAssertTrue(error.description.contains("timeout 1 s"), error.description)
            }
            let failedAfter = (ContinuousClock.now - start).seconds
            XCTAssertLessThan(failedAfter, 1.0 + 0.5, "request failed after \(failedAfter) s")
            XCTAssertFalse(client.state.isUp)

            await proxy.thaw()
            let again = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(again, "state is \(client.state)")
            _ = try await client.send(Fixture.mkdir(5))
        }
    }

    // A caller that gives up (task cancelled) gets `.cancelled` at once; the link stays up.
    func testCancelledSendReturnsPromptly() async throws {
        try await withHarness { h in
            let listener = try await h.listener { _, _ in
                try? await Task.sleep(for: .milliseconds(500))
                return .reply(requestID: 0, errno: 0, payload: nil)
            }
            let client = h.client(port: listener.port)
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            let task = Task { () async -> PeerLinkError? in
                do throws(PeerLinkError) {
                    _ = try await client.send(Fixture.mkdir(1))
                    return nil
                } catch {
                    return error
                }
            }
            try await Task.sleep(for: .milliseconds(100))
            let start = ContinuousClock.now
            task.cancel()
            let error = await task.value
            XCTAssertEqual(error, .cancelled)
            XCTAssertLessThan((ContinuousClock.now - start).seconds, 0.3)
            XCTAssertEqual(client.state, .up)
            XCTAssertEqual(client.statistics.inFlightRequests, 0)
            let reply = try await client.send(Fixture.mkdir(2))
            guard case .reply(_, 0, _) = reply else { return XCTFail("\(reply)") }
        }
    }

    // State changes are observable as a stream, ending at shutdown.
    func testStateUpdatesStream() async throws {
        try await withHarness { h in
            let listener = try await h.listener { _, _ in .reply(requestID: 0, errno: 0, payload: nil) }
            let client = h.client(port: listener.port, configure: quickLink)
            let updates = client.stateUpdates()
            let upOK = await client.waitUntilUp(timeout: .seconds(5))
            XCTAssertTrue(upOK)
            await listener.close()
            let down = await eventually { !client.state.isUp }
            XCTAssertTrue(down)
            await client.shutdown()
            var seen: [PeerLinkState] = []
            for await s in updates { seen.append(s) }
            XCTAssertEqual(seen.first, .connecting)
            XCTAssertTrue(seen.contains(.up))
            XCTAssertEqual(seen.last, .down(.linkClosed(address: client.configuration.address)))
            do throws(PeerLinkError) {
                _ = try await client.send(.ping)
                XCTFail("send after shutdown")
            } catch {
                XCTAssertEqual(error, .linkClosed(address: client.configuration.address))
            }
        }
    }
}

/// Answers anything with a frame header of protocol version 2.
final class VersionTwoPeer: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelActive(context: ChannelHandlerContext) {
        var bytes = try! frameBytes(.hello(node: "pacs-a", volume: "archive", protocolVersion: 99,
                                           nonce: Array(repeating: 9, count: 32)))
        bytes.setInteger(UInt16(99), at: bytes.readerIndex + 4)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

func frameBytes(_ message: PeerMessage, requestID: UInt64 = 0) throws -> ByteBuffer {
    var out = ByteBuffer()
    try Frame(message, requestID: requestID).write(to: &out)
    return out
}

extension PeerMessage {
    var requestIDForTest: UInt64 {
        if case .reply(let id, _, _) = self { return id }
        return 0
    }
}
