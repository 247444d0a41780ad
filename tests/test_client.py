"""
Tests for C{tcpdemo-client}: the ack checker, the encoder, the options and
output, and whole runs over loopback against the real server and against
small fake servers that answer wrongly in one particular way.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial import unittest

from tcpdemo.client.checker import (
    ACK_SIZE,
    BAD_LENGTH,
    BAD_RESULT,
    EARLY_CLOSE,
    MISSING_ACKS,
    TRUNCATED_ACK,
    UNEXPECTED_ACK,
    WRONG_COMMAND,
    WRONG_ID,
    AckChecker,
    expectedAcks,
)
from tcpdemo.client.cli import Options, Progress, endpointFor, formatJSON, formatSummary
from tcpdemo.client.ids import idBytes
from tcpdemo.client.load import (
    LoadConfig,
    LoadRun,
    SetupError,
    SubmitEncoder,
    codenames,
    fixedPayload,
    quotas,
)
from tcpdemo.client.stats import Report
from tcpdemo.frame import FrameReceiver, frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.packet import Submit, SubmitAck, encode
from tcpdemo.protocol import TcpDemoServerFactory

LOCALHOST = "127.0.0.1"
#: The global reactor, typed loosely: its interfaces are many, and not declared.
reactor: Any = _reactor


@defer.inlineCallbacks
def freePort() -> Any:
    """
    A loopback port that nothing listens on: listen on one, note it, stop.
    """
    port = reactor.listenTCP(0, ServerFactory(), interface=LOCALHOST)
    number = cast(IPv4Address, port.getHost()).port
    yield port.stopListening()
    return number


def ack(n: int, result: int = 0) -> bytes:
    return frame(encode(SubmitAck(idBytes(n), result)))


# The ack checker, without sockets


class AckCheckerTests(unittest.TestCase):
    def checker(self, owed: int) -> AckChecker:
        c = AckChecker()
        c.expect(owed)
        return c

    def test_vector(self) -> None:
        """
        The SubmitAck of the protocol's test vector is what it expects.
        """
        self.assertEqual(expectedAcks(1, 1), bytes.fromhex("0000000e81303030303030303100"))
        self.assertEqual(ACK_SIZE, 14)

    def test_bulk(self) -> None:
        c = self.checker(1000)
        self.assertEqual(c.feed(b"".join(ack(n) for n in range(1, 1001))), 1000)
        self.assertEqual((c.owed, c.nextId, c.problems), (0, 1001, []))

    def test_splitAnywhere(self) -> None:
        """
        Acks split at every byte boundary are all counted, none twice.
        """
        data = b"".join(ack(n) for n in range(1, 6))
        for cut in range(len(data) + 1):
            c = self.checker(5)
            self.assertEqual(c.feed(data[:cut]) + c.feed(data[cut:]), 5)
            self.assertEqual(c.problems, [])
        c = self.checker(5)
        self.assertEqual(sum(c.feed(data[i : i + 1]) for i in range(len(data))), 5)

    def test_wrongId(self) -> None:
        c = self.checker(3)
        self.assertEqual(c.feed(ack(1) + ack(3) + ack(2)), 1)
        [p] = c.problems
        self.assertEqual(p.kind, WRONG_ID)
        self.assertIn("expected '00000002', got '00000003'", p.message)
        self.assertTrue(c.fatal)
        self.assertEqual(c.feed(ack(2)), 0)

    def test_nonAsciiId(self) -> None:
        c = self.checker(1)
        c.feed(b"\x00\x00\x00\x0e\x81" + b"\xff" * 8 + b"\x00")
        self.assertIn("got 0xffffffffffffffff", c.problems[0].message)

    def test_wrongCommand(self) -> None:
        c = self.checker(2)
        bad = b"\x00\x00\x00\x0e\x80" + idBytes(2) + b"\x00"
        self.assertEqual(c.feed(ack(1) + bad), 1)
        [p] = c.problems
        self.assertEqual(p.kind, WRONG_COMMAND)
        self.assertIn("wrong command byte 0x80 (a ConnAck)", p.message)
        self.assertIn("expected 0x81", p.message)

    def test_badResult(self) -> None:
        """
        A non-zero result is reported, but the ack still answers its Submit
        and checking goes on.
        """
        c = self.checker(3)
        self.assertEqual(c.feed(ack(1) + ack(2, result=1) + ack(3)), 3)
        [p] = c.problems
        self.assertEqual(p.kind, BAD_RESULT)
        self.assertIn("id '00000002' has result 1 (expected 0 = ok)", p.message)
        self.assertFalse(c.fatal)

    def test_badLength(self) -> None:
        c = self.checker(2)
        self.assertEqual(c.feed(ack(1) + b"\x00\x00\x00\x0f\x81" + idBytes(2) + b"\x00\x00"), 1)
        [p] = c.problems
        self.assertEqual(p.kind, BAD_LENGTH)
        self.assertIn("bad length 15 (a SubmitAck frame is 14 bytes)", p.message)

    def test_badLengthSeenEarly(self) -> None:
        """
        A wrong length field is reported as soon as it arrives, without
        waiting for 14 bytes that may never come.
        """
        c = self.checker(1)
        c.feed(b"\xff\xff\xff\xff\x81")
        self.assertEqual(c.problems[0].kind, BAD_LENGTH)
        self.assertIn("bad length -1 (not a valid frame length)", c.problems[0].message)

    def test_unexpectedAck(self) -> None:
        c = self.checker(1)
        self.assertEqual(c.feed(ack(1) + ack(2)), 1)
        [p] = c.problems
        self.assertEqual(p.kind, UNEXPECTED_ACK)
        self.assertIn("no Submit is awaiting an ack", p.message)

    def test_truncatedAtClose(self) -> None:
        c = self.checker(2)
        c.feed(ack(1) + ack(2)[:7])
        c.atClose()
        [p] = c.problems
        self.assertEqual(p.kind, TRUNCATED_ACK)
        self.assertIn("got 7 of 14 bytes where the ack for id '00000002' was owed", p.message)

    def test_idsWrap(self) -> None:
        """
        Past 99999999 the ids wrap, staying 8 bytes.
        """
        self.assertEqual(idBytes(99999999), b"99999999")
        self.assertEqual(idBytes(100000000), b"00000000")
        c = AckChecker()
        c.nextId = 99999999
        c.expect(2)
        self.assertEqual(c.feed(expectedAcks(99999999, 2)), 2)
        self.assertEqual(c.problems, [])


class EncoderTests(unittest.TestCase):
    def test_vectors(self) -> None:
        """
        The Submit test vectors of PROTOCOL.md, including two in one write.
        """
        self.assertEqual(
            SubmitEncoder([b"hello"]).encode(1, 1).hex(),
            "00000012023030303030303031" + b"hello".hex(),
        )
        self.assertEqual(SubmitEncoder([b""]).encode(2, 1).hex(), "0000000d023030303030303032")
        # Payloads cycle by id: id 3 takes payloads[3 % 2], id 4 payloads[0].
        self.assertEqual(
            SubmitEncoder([b"bb", b"a"]).encode(3, 2).hex(),
            "0000000e023030303030303033610000000f0230303030303030346262",
        )

    def test_againstCodec(self) -> None:
        """
        Runs of Submits, and the acks they are owed, are byte for byte what
        the packet codec makes, across id blocks and where ids wrap.
        """
        rng = random.Random(3)
        payloads = [rng.randbytes(rng.randrange(40)) for _ in range(1000)]
        runs = [(1, 1), (1, 1000), (999, 2), (998, 1005), (99_999_998, 5), (99_999_000, 1001)]
        for pool in ([b"hello"], [b""] * 8, payloads):
            encoder = SubmitEncoder(pool)
            for first, count in runs:
                numbers = range(first, first + count)
                self.assertEqual(
                    encoder.encode(first, count),
                    b"".join(
                        frame(encode(Submit(idBytes(n), pool[n % len(pool)]))) for n in numbers
                    ),
                )
                self.assertEqual(
                    expectedAcks(first, count),
                    b"".join(frame(encode(SubmitAck(idBytes(n)))) for n in numbers),
                )

    def test_poolSize(self) -> None:
        """
        The payload pool must divide the id block size.
        """
        self.assertRaises(ValueError, SubmitEncoder, [b"a"] * 3)
        self.assertRaises(ValueError, SubmitEncoder, [])

    def test_percentBytes(self) -> None:
        """
        Payloads and length bytes that are C{%} in ASCII stay literal.
        """
        payload = b"%d%%" + b"x" * 20  # the length field is 0x25, '%'
        data = SubmitEncoder([payload]).encode(7, 1)
        self.assertEqual(data, b"\x00\x00\x00\x25\x02" + b"00000007" + payload)

    def test_payloads(self) -> None:
        names = codenames(200, random.Random(1))
        self.assertTrue(all(15 <= len(n) <= 30 and n.count(b"-") == 3 for n in names))
        self.assertEqual(len(fixedPayload(100)), 100)
        self.assertEqual(fixedPayload(0), b"")

    def test_quotas(self) -> None:
        self.assertEqual(quotas(10, 3), [4, 3, 3])
        self.assertEqual(quotas(None, 2), [None, None])


class OptionsTests(unittest.TestCase):
    def parse(self, *args: str) -> Options:
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_defaults(self) -> None:
        config = self.parse().config()
        self.assertEqual(config.endpoint, "tcp:host=127.0.0.1:port=8888")
        self.assertEqual((config.connections, config.window, config.rate), (100, 1000, None))
        self.assertEqual(self.parse("--window", "0").config().window, 0)
        self.assertEqual((config.duration, config.count), (10.0, None))

    def test_endpoints(self) -> None:
        self.assertEqual(endpointFor("9", "::1"), "tcp:host=\\:\\:1:port=9")
        self.assertEqual(endpointFor("unix:/tmp/s", None), "unix:/tmp/s")
        self.assertRaises(usage.UsageError, endpointFor, "unix:/tmp/s", "localhost")
        self.assertRaises(usage.UsageError, endpointFor, "nonsense", None)

    def test_rateExcludesWindow(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--rate", "10", "--window", "1")
        self.assertRaises(usage.UsageError, self.parse, "--connections", "0")

    def test_tokenFile(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b" secret\n")
        o = self.parse("--token-file", path, "--count", "5")
        config = o.config()
        self.assertEqual((config.conn, config.token, config.duration), (True, b"secret", None))


# Whole runs over loopback


class FakeServer(FrameReceiver):
    """
    Answers each Submit with C{answer(n, id)}; subclasses break one thing.
    """

    factory: FakeFactory
    transport: Any

    def connectionMade(self) -> None:
        self.received = 0
        self.factory.open.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.open.discard(self)

    def stringReceived(self, payload: bytes) -> None:
        self.received += 1
        data = self.answer(self.received, payload[1:9])
        if data:
            self.transport.write(data)

    def answer(self, n: int, id: bytes) -> bytes:
        return frame(encode(SubmitAck(id)))


class FakeFactory(ServerFactory):
    noisy = False

    def __init__(self, server: type[FakeServer]) -> None:
        self.server = server
        self.open: set[FakeServer] = set()
        self.closedOne = False
        self.calls: list[Any] = []

    def stopFactory(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.server()
        protocol.factory = self
        return protocol


class WrongId(FakeServer):
    """
    Acks id 6 where 5 is owed.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ack(n + 1) if n == 5 else ack(n)


class WrongCommand(FakeServer):
    """
    Answers the third Submit with command byte 0x82.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        data = ack(n)
        return data[:4] + b"\x82" + data[5:] if n == 3 else data


class WrongResult(FakeServer):
    """
    Answers the fourth Submit with result 1.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ack(n, result=1 if n == 4 else 0)


class Truncated(FakeServer):
    """
    Sends 7 bytes of the fifth ack, then closes.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 5:
            self.transport.write(ack(n)[:7])
            self.transport.loseConnection()
            return b""
        return ack(n)


class ClosesEarly(FakeServer):
    """
    Closes each connection after its tenth ack.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 10:
            self.transport.loseConnection()
        return ack(n)


class ClosesFirstConnection(FakeServer):
    """
    Closes the first connection it accepted after 10 acks; serves the others.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        if n == 10 and not self.factory.closedOne:
            self.factory.closedOne = True
            self.transport.loseConnection()
        return ack(n)


class SlowButSteady(FakeServer):
    """
    Answers one Submit every 50 ms: slow, never silent for long.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        self.factory.calls.append(reactor.callLater(0.05 * n, self.transport.write, ack(n)))
        return b""


class AnswersTwice(FakeServer):
    """
    Acks every Submit twice, in one write.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ack(n) + ack(n)


class Forgets(FakeServer):
    """
    Never answers after the sixth Submit, and stays connected.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return ack(n) if n <= 6 else b""


class BadLengthServer(FakeServer):
    """
    Answers the second Submit with a 15-byte frame.
    """

    def answer(self, n: int, id: bytes) -> bytes:
        return frame(encode(SubmitAck(id)) + b"!") if n == 2 else ack(n)


class LoadTestsMixin:
    """
    Listen on an ephemeral loopback port; run the client against it.
    """

    addCleanup: Callable[..., None]

    def listen(self, factory: Any) -> str:
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.serverClosed, factory)
        return f"tcp:{LOCALHOST}:{cast(IPv4Address, port.getHost()).port}"

    def serverClosed(self, factory: Any) -> defer.Deferred[None]:
        """
        Wait (briefly) for the server side of every connection to close, so
        that no socket outlives the test.
        """
        conns = getattr(factory, "connections", None)
        if conns is None:
            conns = factory.open

        def poll(tries: int) -> Any:
            if not conns or tries == 0:
                for p in list(conns):
                    p.transport.abortConnection()
                return task.deferLater(reactor, 0.01, lambda: None)
            return task.deferLater(reactor, 0.01, poll, tries - 1)

        closed: defer.Deferred[None] = poll(200)
        return closed

    def realServer(self, **kwargs: Any) -> str:
        return self.listen(TcpDemoServerFactory(metrics=ServerMetrics.create(), **kwargs))

    def load(self, endpoint: str, **kwargs: Any) -> defer.Deferred[Report]:
        kwargs.setdefault("connections", 1)
        kwargs.setdefault("drainTimeout", 2.0)
        run: defer.Deferred[Report] = LoadRun(reactor, LoadConfig(endpoint, **kwargs)).run()
        return run


class RealServerTests(LoadTestsMixin, unittest.TestCase):
    timeout = 20

    def assertClean(self, report: Report, count: int) -> None:
        self.assertEqual(report.messages, [])
        self.assertEqual(
            (report.sent, report.acked, report.answered, report.unanswered, report.errors),
            (count, count, count, 0, 0),
        )
        self.assertEqual(report.latencyUs["count"], count)
        self.assertGreater(report.latencyUs["p50"], 0)
        self.assertLessEqual(report.latencyUs["p99.9"], report.latencyUs["max"])

    @defer.inlineCallbacks
    def test_unboundedCount(self) -> Any:
        """
        Window 0 with --count: every Submit of every connection acked in
        order (the checker would count anything out of order).
        """
        report = yield self.load(self.realServer(), connections=7, window=0, count=100_003)
        self.assertClean(report, 100_003)

    @defer.inlineCallbacks
    def test_requestResponse(self) -> Any:
        report = yield self.load(
            self.realServer(), connections=3, window=1, count=300, payloadSize=100
        )
        self.assertClean(report, 300)

    @defer.inlineCallbacks
    def test_windowDuration(self) -> Any:
        report = yield self.load(self.realServer(), connections=4, window=50, duration=0.5)
        self.assertClean(report, report.sent)
        self.assertGreater(report.sent, 200)
        self.assertGreaterEqual(report.sendDuration, 0.45)

    @defer.inlineCallbacks
    def test_rate(self) -> Any:
        """
        Open loop at 2000/s for 1.5 s sends 3000 Submits, give or take 25%.
        """
        report = yield self.load(self.realServer(), connections=5, rate=2000.0, duration=1.5)
        self.assertClean(report, report.sent)
        self.assertTrue(2250 <= report.sent <= 3750, report.sent)
        self.assertIsNotNone(report.maxTickGap)

    @defer.inlineCallbacks
    def test_rateLatencyFromSchedule(self) -> Any:
        """
        In the open loop a Submit's latency counts from the time the schedule
        gave it, not from its late write: when the client itself stalls for
        0.25 s, the Submits due meanwhile (a quarter of a 1 s run at 1000/s)
        are written late and their wait shows in the percentiles.  Counted
        from the write, only the one or two in flight at the stall would.
        """
        stall = 0.25
        reactor.callLater(0.3, time.sleep, stall)
        report = yield self.load(self.realServer(), connections=4, rate=1000.0, duration=1.0)
        self.assertClean(report, report.sent)
        self.assertGreaterEqual(report.latencyUs["max"], 0.8 * stall * 1e6)
        # About 250 of 1000 Submits were due during the stall, waiting 0 to 250 ms.
        self.assertGreaterEqual(report.latencyUs["p90"], 30_000)

    @defer.inlineCallbacks
    def test_fewerThanConnections(self) -> Any:
        """
        A --count smaller than --connections leaves some connections idle.
        """
        report = yield self.load(self.realServer(), connections=5, window=1, count=3)
        self.assertClean(report, 3)

    @defer.inlineCallbacks
    def test_rateCount(self) -> Any:
        report = yield self.load(self.realServer(), connections=3, rate=5000.0, count=500)
        self.assertClean(report, 500)

    @defer.inlineCallbacks
    def test_conn(self) -> Any:
        endpoint = self.realServer(authToken=b"secret")
        report = yield self.load(endpoint, connections=2, count=50, conn=True, token=b"secret")
        self.assertClean(report, 50)

    @defer.inlineCallbacks
    def test_connRefused(self) -> Any:
        endpoint = self.realServer(authToken=b"secret")
        error = yield self.assertFailure(
            self.load(endpoint, connections=2, count=50, conn=True, token=b"wrong"), SetupError
        )
        self.assertIn("ConnAck result 1: the server refused the Conn", str(error))

    @defer.inlineCallbacks
    def test_cannotConnect(self) -> Any:
        free = yield freePort()
        error = yield self.assertFailure(
            self.load(f"tcp:{LOCALHOST}:{free}", connections=3, count=10), SetupError
        )
        self.assertIn("could not connect", str(error))
        self.assertIn("3 of 3 connections failed", str(error))


class WrongServerTests(LoadTestsMixin, unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def against(self, server: type[FakeServer], **kwargs: Any) -> Any:
        kwargs.setdefault("count", 20)
        report = yield self.load(self.listen(FakeFactory(server)), **kwargs)
        return report

    def assertOnly(self, report: Report, kind: str, text: str) -> None:
        self.assertEqual(report.errorsByKind[kind], 1, report.messages)
        self.assertEqual(report.errors, 1, report.messages)
        [message] = report.messages
        self.assertTrue(message.startswith("connection 0 (127.0.0.1:"), message)
        self.assertIn(f": {kind}: ", message)
        self.assertIn(text, message)

    @defer.inlineCallbacks
    def test_wrongId(self) -> Any:
        report = yield self.against(WrongId)
        self.assertOnly(
            report,
            WRONG_ID,
            "wrong id: expected '00000005', got '00000006'; frame 0000000e81303030303030303600",
        )
        self.assertEqual(report.acked, 4)
        self.assertEqual(report.unanswered, 16)
        self.assertIn("; closing the connection with 16 ack(s) owed", report.messages[0])

    @defer.inlineCallbacks
    def test_wrongCommand(self) -> Any:
        report = yield self.against(WrongCommand, window=1)
        self.assertOnly(
            report,
            WRONG_COMMAND,
            "wrong command byte 0x82 where the ack for id "
            "'00000003' was owed (expected 0x81 SubmitAck)",
        )

    @defer.inlineCallbacks
    def test_wrongResult(self) -> Any:
        report = yield self.against(WrongResult)
        self.assertOnly(report, BAD_RESULT, "ack for id '00000004' has result 1")
        self.assertEqual((report.sent, report.answered, report.acked), (20, 20, 19))

    @defer.inlineCallbacks
    def test_truncated(self) -> Any:
        report = yield self.against(Truncated, window=1)
        self.assertEqual(report.errorsByKind[TRUNCATED_ACK], 1)
        self.assertEqual(report.errorsByKind[EARLY_CLOSE], 1)
        self.assertIn(
            "truncated ack at close: got 7 of 14 bytes where the ack for id "
            "'00000005' was owed; bytes 0000000e813030",
            report.messages[0],
        )
        self.assertIn("closed by the server", report.messages[1])
        self.assertEqual(report.acked, 4)

    @defer.inlineCallbacks
    def test_closesEarly(self) -> Any:
        report = yield self.against(ClosesEarly, count=100)
        self.assertOnly(report, EARLY_CLOSE, "with 90 ack(s) owed, after 10 answered")
        self.assertEqual((report.acked, report.unanswered), (10, 90))

    @defer.inlineCallbacks
    def test_answersTwice(self) -> Any:
        report = yield self.against(AnswersTwice, window=1)
        self.assertOnly(
            report, UNEXPECTED_ACK, "ack for id '00000001' but no Submit is awaiting an ack"
        )

    @defer.inlineCallbacks
    def test_missing(self) -> Any:
        report = yield self.against(Forgets, count=10, drainTimeout=0.3)
        self.assertOnly(
            report,
            MISSING_ACKS,
            "4 ack(s) missing: none arrived in the 0.3s drain timeout; first missing id '00000007'",
        )
        self.assertEqual(report.unanswered, 4)

    @defer.inlineCallbacks
    def test_slowIsNotMissing(self) -> Any:
        """
        The drain timeout counts silence, not time: acks that keep coming
        are waited for.
        """
        report = yield self.against(SlowButSteady, count=10, window=0, drainTimeout=0.2)
        self.assertEqual((report.acked, report.errors), (10, 0), report.messages)
        self.assertGreater(report.duration, 0.4)

    @defer.inlineCallbacks
    def test_badLength(self) -> Any:
        report = yield self.against(BadLengthServer, window=1)
        self.assertOnly(
            report,
            BAD_LENGTH,
            "bad length 15 (a SubmitAck frame is 14 bytes) "
            "where the ack for id '00000002' was owed",
        )

    @defer.inlineCallbacks
    def test_otherConnectionsGoOn(self) -> Any:
        """
        One connection's error does not stop the others.
        """
        report = yield self.against(ClosesFirstConnection, connections=3, count=300, window=1)
        self.assertOnly(report, EARLY_CLOSE, "with 1 ack(s) owed, after 10 answered")
        self.assertEqual((report.sent, report.acked, report.unanswered), (211, 210, 1))

    @defer.inlineCallbacks
    def test_allConnectionsClosed(self) -> Any:
        """
        When every connection is gone the run ends, without waiting for the
        duration.
        """
        report = yield self.against(ClosesEarly, connections=3, duration=30.0, count=None, window=1)
        self.assertEqual(report.errorsByKind[EARLY_CLOSE], 3)
        self.assertEqual(report.acked, 30)
        self.assertLess(report.duration, 5)


class OutputTests(unittest.TestCase):
    def report(self, **kwargs: Any) -> Report:
        fields: dict[str, Any] = dict(
            config=LoadConfig("tcp:host=127.0.0.1:port=1", window=1, duration=1.0).asJSON(),
            connections=1,
            sent=10,
            acked=9,
            answered=10,
            unanswered=0,
            errors=1,
            errorsByKind={WRONG_ID: 0, BAD_RESULT: 1},
            messages=["connection 0: bad_result: ack for id '00000004' has result 1"],
            duration=2.0,
            sendDuration=1.0,
            latencyUs={
                "count": 10,
                "p50": 100,
                "p90": 200,
                "p99": 300,
                "p99.9": 400,
                "min": 50,
                "mean": 120.0,
                "max": 500,
            },
            cpuUser=0.5,
            cpuSystem=0.25,
        )
        fields.update(kwargs)
        return Report(**fields)

    def test_summary(self) -> None:
        text = formatSummary(self.report())
        for expected in (
            "request/response (window 1)",
            "acked",
            "4 acks/s",
            "client cpu",
            "0.750 s",
            "38% of one core",
            "0.100     0.200     0.300     0.400     0.500",
            "errors by kind: bad_result 1",
            "has result 1",
            "FAILED: 1 error(s)",
        ):
            self.assertIn(expected, text)

    def test_json(self) -> None:
        data = json.loads(formatJSON(self.report()))
        self.assertEqual(data["throughput_acks_per_s"], 4.5)
        self.assertEqual(data["cpu_s"], {"user": 0.5, "system": 0.25, "total": 0.75})
        self.assertEqual(data["errors"]["by_kind"][BAD_RESULT], 1)

    def test_progress(self) -> None:
        run = LoadRun(reactor, LoadConfig("tcp:127.0.0.1:1", connections=2))
        for tty in (True, False):
            stream = io.StringIO()
            progress = Progress(run, stream, 1.0, tty)
            progress.update()
            self.assertIn("connecting 0...", stream.getvalue())
            run.stats.start(100.0)
            run.stats.acked = run.stats.sent = 500
            stream.truncate(0)
            stream.seek(0)
            self.assertIn("250 acks/s", progress.line(102.0))
            progress.update()
            out = stream.getvalue()
            self.assertTrue(out.startswith("\r") if tty else out.endswith("\n"), out)
            progress.stop()
            run.stats.startTime = None


# The command line, in a child process


class CommandLineTests(LoadTestsMixin, unittest.TestCase):
    timeout = 30

    def client(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(  # type: ignore[no-any-return]
            sys.executable,
            ["-m", "tcpdemo.client", *args],
            env=dict(os.environ),
            reactor=reactor,
        )

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        endpoint = self.realServer()
        out, err, code = yield self.client(
            "--json", "--port", endpoint, "-c", "4", "--count", "20000", "--window", "100"
        )
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        for key in (
            "config",
            "connections",
            "sent",
            "acked",
            "unanswered",
            "errors",
            "duration_s",
            "throughput_acks_per_s",
            "latency_us",
            "cpu_s",
        ):
            self.assertIn(key, data)
        self.assertEqual((data["sent"], data["acked"], data["errors"]["total"]), (20000, 20000, 0))
        self.assertEqual(data["latency_us"]["count"], 20000)
        self.assertEqual(
            set(data["latency_us"]), {"count", "p50", "p90", "p99", "p99.9", "min", "mean", "max"}
        )
        self.assertEqual(data["config"]["window"], 100)
        self.assertGreaterEqual(data["cpu_s"]["total"], 0)

    @defer.inlineCallbacks
    def test_wrongServer(self) -> Any:
        endpoint = self.listen(FakeFactory(WrongId))
        port = endpoint.rsplit(":", 1)[1]
        out, err, code = yield self.client("--port", port, "-c", "1", "--count", "10", "-q")
        self.assertEqual(code, 1, err)
        self.assertIn(b"wrong_id: wrong id: expected '00000005', got '00000006'", out, err)
        self.assertIn(b"FAILED: 1 error(s)", out)

    @defer.inlineCallbacks
    def test_usage(self) -> Any:
        out, err, code = yield self.client("--rate", "5", "--window", "2")
        self.assertEqual(code, 2)
        self.assertIn(b"cannot be combined with --window", err)

    @defer.inlineCallbacks
    def test_cannotConnect(self) -> Any:
        free = yield freePort()
        out, err, code = yield self.client("--port", str(free), "-c", "2", "-q")
        self.assertEqual(code, 2, err)
        self.assertIn(b"could not connect", err)
