"""
Tests for L{tcpdemo.client.connection}: C{connect()} and C{submit()} over
loopback, against the real server (in process) and small fake servers that
answer wrongly in one particular way each.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tcpdemo.client import (
    Client,
    ClientClosed,
    ConnectFailed,
    ConnRefused,
    EndpointError,
    QueueFull,
    ServerProtocolError,
    connect,
)
from tcpdemo.client.checker import BAD_LENGTH, UNEXPECTED_ACK, WRONG_COMMAND, WRONG_ID
from tcpdemo.client.ids import idBytes
from tcpdemo.frame import frame
from tcpdemo.packet import SubmitAck, encode
from tests.clientsupport import (
    LOCALHOST,
    AnswersTwice,
    BadLengthServer,
    ClosesEarly,
    ConnAckThenAcks,
    FakeFactory,
    FakeServer,
    Forgets,
    LoadTestsMixin,
    SlowButSteady,
    WrongCommand,
    WrongId,
    WrongResult,
    reactor,
)
from tests.support import REPO_ROOT, freePort, subprocessEnv, waitUntil


class Reflects(FakeServer):
    """
    Acks every Submit with the first payload byte as the result, and the
    id the Submit carried.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return b""

    def stringReceived(self, payload: bytes) -> None:
        self.received += 1
        result = payload[9] if len(payload) > 9 else 0
        self.transport.write(frame(encode(SubmitAck(payload[1:9], result))))


class Silent(FakeServer):
    """
    Reads everything, answers nothing.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return b""


class ClientTestsMixin(LoadTestsMixin):
    """
    Connect the library to a listening factory; close it after the test.
    """

    @defer.inlineCallbacks
    def connectTo(self, factory: Any, **kwargs: Any) -> Any:
        endpoint = self.listen(factory)
        client = yield connect(reactor, endpoint, **kwargs)
        self.addCleanup(client.abort)
        return client

    def fake(self, server: type[FakeServer]) -> FakeFactory:
        return FakeFactory(server)

    fail: Any

    def waitClosed(self, factory: FakeFactory) -> defer.Deferred[None]:
        @defer.inlineCallbacks
        def poll() -> Any:
            for _ in range(500):
                if not factory.open:
                    return
                yield task.deferLater(reactor, 0.01, lambda: None)
            self.fail("the client never closed the connection")

        result: defer.Deferred[None] = poll()
        return result


class RealServerTests(ClientTestsMixin, unittest.TestCase):
    timeout = 60

    def test_asyncAwait(self) -> defer.Deferred[None]:
        """
        The three lines of the README, with async/await.
        """
        endpoint = self.realServer()

        async def main() -> None:
            client = await connect(reactor, endpoint)
            self.assertIsInstance(client, Client)
            result = await client.submit(b"payload")
            self.assertEqual(result, 0)
            await client.close()
            self.assertEqual(client.outstanding, 0)

        return defer.Deferred.fromCoroutine(main())

    @defer.inlineCallbacks
    def test_twentyThousandInOrder(self) -> Any:
        """
        20,000 concurrent Submits: 1000 on the wire, the rest queued; every
        one acked with result 0, their Deferreds firing in submission order.
        """
        client = yield self.connectTo(self.realServerFactory(), maxQueued=20_000)
        order: list[int] = []
        ds = []

        def fired(result: int, i: int) -> int:
            order.append(i)
            return result

        for i in range(20_000):
            ds.append(client.submit(b"payload-%d" % i).addCallback(fired, i))
        self.assertEqual(client.outstanding, 20_000)
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, [0] * 20_000)
        self.assertEqual(order, list(range(20_000)))
        self.assertEqual(client.outstanding, 0)
        yield client.close()

    @defer.inlineCallbacks
    def test_window(self) -> Any:
        """
        At most C{window} Submits are on the wire; the others wait.
        """
        factory = self.fake(Silent)
        client = yield self.connectTo(factory, window=3)
        ds = [client.submit(b"x") for _ in range(10)]
        yield defer.ensureDeferred(
            waitUntil(lambda: sum(p.received for p in factory.open) >= 3, "3 Submits received")
        )
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sum(p.received for p in factory.open), 3)
        self.assertEqual(client.outstanding, 10)
        client.abort()
        for d in ds:
            yield self.assertFailure(d, ConnectionLost)

    @defer.inlineCallbacks
    def test_ids(self) -> Any:
        """
        Ids are C{%08d} from 1 by default; an explicit one is sent as it is
        and checked in its ack; one that is not 8 bytes is refused.
        """
        factory = self.fake(Reflects)
        client = yield self.connectTo(factory)
        self.assertEqual((yield client.submit(b"\x07", id=b"ABCDEFGH")), 7)
        self.assertEqual((yield client.submit(b"\x00")), 0)
        self.assertEqual((yield client.submit(b"\xfe", id=idBytes(1))), 254)
        self.assertRaises(ValueError, client.submit, b"", id=b"short")
        self.assertRaises(TypeError, client.submit, "text")

    @defer.inlineCallbacks
    def test_results(self) -> Any:
        """
        The result byte of the ack is what the Deferred fires with.
        """
        client = yield self.connectTo(self.fake(WrongResult))
        results = yield defer.gatherResults([client.submit(b"x") for _ in range(5)])
        self.assertEqual(results, [0, 0, 0, 1, 0])

    @defer.inlineCallbacks
    def test_token(self) -> Any:
        """
        With a token, the Conn goes first and connect waits for ConnAck 0.
        """
        endpoint = self.realServer(authToken=b"secret")
        client = yield connect(reactor, endpoint, token=b"secret")
        self.assertEqual((yield client.submit(b"x")), 0)
        yield client.close()

    @defer.inlineCallbacks
    def test_wrongToken(self) -> Any:
        endpoint = self.realServer(authToken=b"secret")
        error = yield self.assertFailure(connect(reactor, endpoint, token=b"wrong"), ConnRefused)
        self.assertEqual(error.result, 1)
        self.assertIn("the server refused the Conn: ConnAck result 1", str(error))

    @defer.inlineCallbacks
    def test_noTokenForAuthServer(self) -> Any:
        """
        Without the token a server that wants one closes the connection at
        the first Submit: it fails with ConnectionLost.
        """
        client = yield connect(reactor, self.realServer(authToken=b"secret"))
        error = yield self.assertFailure(client.submit(b"x"), ConnectionLost)
        self.assertIn("1 Submit(s) outstanding", str(error))

    @defer.inlineCallbacks
    def test_referenceServer(self) -> Any:
        """
        Without a token no Conn is sent and no ConnAck awaited, as the Go
        reference server expects: it sends nothing but SubmitAcks.
        """
        factory = self.fake(FakeServer)
        client = yield self.connectTo(factory)
        self.assertEqual((yield client.submit(b"hello")), 0)
        [server] = factory.open
        self.assertEqual(server.received, 1)

    @defer.inlineCallbacks
    def test_cannotConnect(self) -> Any:
        free = freePort()
        error = yield self.assertFailure(connect(reactor, f"tcp:{LOCALHOST}:{free}"), ConnectFailed)
        self.assertIn("could not connect", str(error))
        yield self.assertFailure(connect(reactor, "foo:bar"), EndpointError)
        self.assertRaises(ValueError, connect, reactor, "tcp:127.0.0.1:1", window=0)

    @defer.inlineCallbacks
    def test_connectTimeout(self) -> Any:
        """
        A server that never answers the Conn times connect out.
        """
        endpoint = self.listen(self.fake(Silent))
        error = yield self.assertFailure(
            connect(reactor, endpoint, token=b"t", connectTimeout=0.2), ConnectFailed
        )
        self.assertIn("timed out after 0.2s", str(error))

    def realServerFactory(self) -> Any:
        from tcpdemo.metrics import ServerMetrics
        from tcpdemo.protocol import TcpDemoServerFactory

        return TcpDemoServerFactory(metrics=ServerMetrics.create())


class WrongServerTests(ClientTestsMixin, unittest.TestCase):
    """
    A wrong ack fails every outstanding Submit with a protocol error and
    closes the connection; so does a lost connection, with ConnectionLost.
    """

    timeout = 20

    @defer.inlineCallbacks
    def assertAllFail(
        self, server: type[FakeServer], kind: str, text: str, count: int = 20, **kwargs: Any
    ) -> Any:
        factory = self.fake(server)
        client = yield self.connectTo(factory, **kwargs)
        results = yield defer.DeferredList(
            [client.submit(b"x") for _ in range(count)], consumeErrors=True
        )
        failures = [r for ok, r in results if not ok]
        self.assertTrue(failures)
        for failure in failures:
            failure.trap(ServerProtocolError)
            self.assertEqual(failure.value.kind, kind)
            self.assertIn(text, str(failure.value))
        # Everything after the first failure failed too: nothing hangs.
        firstFailed = [ok for ok, _ in results].index(False)
        self.assertTrue(all(not ok for ok, _ in results[firstFailed:]))
        yield self.waitClosed(factory)
        yield self.assertFailure(client.submit(b"late"), ClientClosed)
        return firstFailed

    @defer.inlineCallbacks
    def test_wrongId(self) -> Any:
        ok = yield self.assertAllFail(
            WrongId, WRONG_ID, "expected the ack for id '00000005', got '00000006'"
        )
        self.assertEqual(ok, 4)

    @defer.inlineCallbacks
    def test_wrongCommand(self) -> Any:
        ok = yield self.assertAllFail(
            WrongCommand, WRONG_COMMAND, "command byte 0x82 where a SubmitAck (0x81) was owed"
        )
        self.assertEqual(ok, 2)

    @defer.inlineCallbacks
    def test_badLength(self) -> Any:
        ok = yield self.assertAllFail(
            BadLengthServer, BAD_LENGTH, "bad length 15 (a SubmitAck frame is 14 bytes)", window=1
        )
        self.assertEqual(ok, 1)

    @defer.inlineCallbacks
    def test_unexpectedAck(self) -> Any:
        """
        An ack nothing awaits (here the second copy of one) fails the rest.
        """
        ok = yield self.assertAllFail(
            AnswersTwice, UNEXPECTED_ACK, "but no Submit is awaiting one", count=3, window=1
        )
        self.assertEqual(ok, 1)

    @defer.inlineCallbacks
    def test_connAckWhereAckOwed(self) -> Any:
        """
        A ConnAck where no Conn was sent is a frame of the wrong length.
        """

        class SendsConnAck(FakeServer):
            def answer(self, n: int, id: bytes) -> bytes:
                return frame(b"\x80\x00")

        yield self.assertAllFail(SendsConnAck, BAD_LENGTH, "bad length 6", count=2)

    @defer.inlineCallbacks
    def test_connAckRefused(self) -> Any:
        """
        ConnAck result 1 fails connect with ConnRefused.
        """
        factory = self.fake(ConnAckThenAcks)
        factory.connAckResult = 1
        endpoint = self.listen(factory)
        error = yield self.assertFailure(connect(reactor, endpoint, token=b"t"), ConnRefused)
        self.assertEqual(error.result, 1)
        factory.connAckResult = 0
        client = yield connect(reactor, endpoint, token=b"t")
        self.assertEqual((yield client.submit(b"x")), 0)
        yield client.close()

    @defer.inlineCallbacks
    def test_notAConnAck(self) -> Any:
        """
        A SubmitAck where the ConnAck was owed fails connect.
        """

        class NoConnAck(FakeServer):
            def stringReceived(self, payload: bytes) -> None:
                self.transport.write(frame(encode(SubmitAck(b"00000001"))))

        error = yield self.assertFailure(
            connect(reactor, self.listen(self.fake(NoConnAck)), token=b"t"), ServerProtocolError
        )
        self.assertEqual(error.kind, WRONG_COMMAND)
        self.assertIn("expected a ConnAck", str(error))

    @defer.inlineCallbacks
    def test_connectionLostMidFlight(self) -> Any:
        """
        The server closes after 10 acks: those 10 succeed, every other
        outstanding Submit (on the wire or queued) fails with ConnectionLost.
        """
        factory = self.fake(ClosesEarly)
        client = yield self.connectTo(factory, window=25)
        ds = [client.submit(b"x") for _ in range(100)]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 10 + [False] * 90)
        for _, failure in results[10:]:
            failure.trap(ConnectionLost)
        self.assertIn("90 Submit(s) outstanding", str(results[10][1].value))
        self.assertEqual(client.outstanding, 0)
        yield self.assertFailure(client.submit(b"late"), ClientClosed)
        yield client.close()  # fires at once: already closed

    @defer.inlineCallbacks
    def test_queueFull(self) -> Any:
        """
        Past C{window} on the wire and C{maxQueued} waiting, submit fails
        fast with QueueFull; the others are not affected.
        """
        client = yield self.connectTo(self.fake(SlowButSteady), window=2, maxQueued=3)
        ds = [client.submit(b"x") for _ in range(5)]
        error = yield self.assertFailure(client.submit(b"x"), QueueFull)
        self.assertIn("maxQueued=3", str(error))
        self.assertEqual((yield defer.gatherResults(ds)), [0] * 5)

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A Submit whose ack does not come in time fails with TimeoutError;
        one that timed out while queued is never sent.
        """
        factory = self.fake(Forgets)  # acks the first 6 only
        client = yield self.connectTo(factory, window=3, timeout=0.3)
        ds = [client.submit(b"x") for _ in range(10)]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 6 + [False] * 4)
        for _, failure in results[6:]:
            failure.trap(defer.TimeoutError)
        [server] = factory.open
        # 1-3, then 4-6 as acks made room, then 7-9; the 10th timed out queued.
        self.assertEqual(server.received, 9)
        self.assertEqual(client.outstanding, 3)  # 7-9: on the wire, acks still owed
        late = client.submit(b"y", timeout=0.05)
        self.assertFalse(late.called)
        yield self.assertFailure(late, defer.TimeoutError)
        self.assertEqual((server.received, client.outstanding), (9, 3))

    @defer.inlineCallbacks
    def test_cancelQueued(self) -> Any:
        """
        A cancelled queued Submit is not sent; close() does not wait for it.
        """
        factory = self.fake(FakeServer)
        client = yield self.connectTo(factory, window=1)
        first, second, third = (client.submit(b"x") for _ in range(3))
        second.cancel()
        yield self.assertFailure(second, defer.CancelledError)
        self.assertEqual((yield first), 0)
        self.assertEqual((yield third), 0)
        [server] = factory.open
        self.assertEqual(server.received, 2)
        yield client.close()

    @defer.inlineCallbacks
    def test_closeWaitsForAcks(self) -> Any:
        """
        close() takes no more Submits, waits for the acks owed, then closes.
        """
        factory = self.fake(SlowButSteady)
        client = yield self.connectTo(factory, window=2)
        ds = [client.submit(b"x") for _ in range(5)]
        closed = client.close()
        yield self.assertFailure(client.submit(b"late"), ClientClosed)
        self.assertFalse(closed.called)
        yield closed
        self.assertTrue(all(d.called for d in ds))
        self.assertEqual((yield defer.gatherResults(ds)), [0] * 5)
        yield self.waitClosed(factory)

    @defer.inlineCallbacks
    def test_closeTimeout(self) -> Any:
        """
        close(timeout) does not wait for ever on a server that forgot acks:
        past the timeout it aborts, and the Submits owed fail.
        """
        factory = self.fake(Forgets)  # acks the first 6 only
        client = yield self.connectTo(factory)
        ds = [client.submit(b"x") for _ in range(10)]
        yield defer.gatherResults(ds[:6])
        yield client.close(timeout=0.2)
        for d in ds[6:]:
            error = yield self.assertFailure(d, ConnectionLost)
        self.assertIn("4 Submit(s) outstanding", str(error))
        yield self.waitClosed(factory)


class AsyncioReactorTests(unittest.TestCase):
    """
    The library under Twisted's asyncio reactor, in a child process that
    installs it before anything else.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_asyncioReactor(self) -> Any:
        script = """
import asyncio, sys
from twisted.internet import asyncioreactor
asyncioreactor.install(asyncio.new_event_loop())
from twisted.internet import defer, reactor, task
from tcpdemo.client import connect
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory

async def main(reactor):
    port = reactor.listenTCP(
        0, TcpDemoServerFactory(metrics=ServerMetrics.create()), interface="127.0.0.1"
    )
    client = await connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
    results = await defer.gatherResults([client.submit(b"%d" % i) for i in range(2000)])
    await client.close()
    await port.stopListening()
    print(type(reactor).__name__, len(results), sorted(set(results)))

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", script], env=subprocessEnv(), path=REPO_ROOT, reactor=reactor
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), b"AsyncioSelectorReactor 2000 [0]", err)
        self.assertNotIn(b"Traceback", err)
