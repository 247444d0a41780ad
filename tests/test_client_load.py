"""
Tests for L{tcpdemo.client.load}: the Submit encoder, and whole load runs
over loopback against the real server and against small fake servers that
answer wrongly in one particular way.
"""

from __future__ import annotations

import random
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tcpdemo.client.checker import (
    BAD_LENGTH,
    BAD_RESULT,
    EARLY_CLOSE,
    MISSING_ACKS,
    TRUNCATED_ACK,
    UNEXPECTED_ACK,
    WRONG_COMMAND,
    WRONG_ID,
    expectedAcks,
)
from tcpdemo.client.ids import idBytes
from tcpdemo.client.load import (
    SetupError,
    SubmitEncoder,
    codenames,
    fixedPayload,
    quotas,
)
from tcpdemo.client.stats import Report
from tcpdemo.frame import frame
from tcpdemo.packet import Submit, SubmitAck, encode
from tests.clientsupport import (
    LOCALHOST,
    AnswersTwice,
    BadLengthServer,
    ClosesEarly,
    ClosesFirstConnection,
    FakeFactory,
    FakeServer,
    Forgets,
    LoadTestsMixin,
    SlowButSteady,
    Truncated,
    WrongCommand,
    WrongId,
    WrongResult,
    reactor,
)
from tests.support import freePort


class EncoderTests(unittest.TestCase):
    def test_vectors(self) -> None:
        """
        The Submit test vectors of docs/protocol.md, including two in one write.
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
    def test_warmupLeavesItsStallOut(self) -> Any:
        """
        A 0.5 s client stall at the end of a 0.7 s warm-up is not in
        the figures: the latency, throughput and sender pauses count from the
        end of the warm-up, for Submits scheduled after it, while the totals
        (and the check of every ack) still cover the whole run.  The stall
        ends after the warm-up should have: the Submits due during it are
        written late and acked in the measured window, but were scheduled
        in the warm-up, so their wait is not counted.
        """
        stall = 0.5
        reactor.callLater(0.45, time.sleep, stall)
        report = yield self.load(
            self.realServer(), connections=4, rate=1000.0, duration=1.0, warmup=0.7
        )
        self.assertEqual(report.messages, [])
        self.assertEqual((report.unanswered, report.errors), (0, 0))
        self.assertEqual(report.acked, report.sent)
        self.assertEqual(report.warmup, 0.7)
        assert report.windowSent is not None
        # The warm-up ends after the stall (0.95 s), then 1 s is measured:
        # 1.95 s at 1000/s in all (25% either way).
        self.assertTrue(1460 <= report.sent <= 2440, report.sent)
        self.assertTrue(750 <= report.windowSent <= 1250, report.windowSent)
        # --duration is the measured window, though the warm-up ended late.
        self.assertTrue(0.9 <= report.sendDuration < 1.5, report.sendDuration)
        # The window's acks include those of the stall's ~500 late writes.
        self.assertTrue(750 <= report.throughput <= 2000, report.throughput)
        # Only Submits scheduled after the warm-up are in the histogram: the
        # ~500 due in the stall would have waited 0-500 ms (p90 >= 250 ms).
        self.assertLessEqual(report.latencyUs["count"], report.windowSent)
        self.assertGreater(report.latencyUs["count"], 0.9 * report.windowSent)
        self.assertLess(report.latencyUs["p90"], 0.4 * stall * 1e6)
        # The sender's pauses count from the end of the warm-up too.
        assert report.maxTickGap is not None
        self.assertLess(report.maxTickGap, 0.8 * stall)

    @defer.inlineCallbacks
    def test_warmupClosedLoop(self) -> Any:
        """
        A window run with a warm-up measures the writes made after it.
        """
        report = yield self.load(
            self.realServer(), connections=2, window=10, duration=0.5, warmup=0.5
        )
        self.assertEqual((report.unanswered, report.errors), (0, 0))
        assert report.windowAcked is not None
        self.assertLess(report.windowAcked, report.acked)
        self.assertLessEqual(report.latencyUs["count"], report.windowAcked)
        self.assertGreater(report.latencyUs["count"], 0)
        self.assertTrue(0.45 <= report.sendDuration < 0.9, report.sendDuration)

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
        free = freePort()
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
        """
        With C{failOnResult}, a non-zero result is a C{bad_result} error.
        """
        report = yield self.against(WrongResult, failOnResult=True)
        self.assertOnly(report, BAD_RESULT, "ack for id '00000004' has result 1")
        self.assertEqual((report.sent, report.answered, report.acked), (20, 20, 19))
        self.assertEqual(report.results, {"0": 19, "1": 1})

    @defer.inlineCallbacks
    def test_resultIsNotAnError(self) -> Any:
        """
        By default a server's "no" (a non-zero result) is counted by result,
        not as an error: the ack is right.
        """
        report = yield self.against(WrongResult)
        self.assertEqual((report.errors, report.messages), (0, []))
        self.assertEqual((report.sent, report.answered, report.acked), (20, 20, 20))
        self.assertEqual(report.results, {"0": 19, "1": 1})
        self.assertEqual(report.nonZeroResults, 1)

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
