"""
The historical steps of BENCHMARKS.md (benchmarks/steps.py) in process:
what the smoke run's test vectors do not reach -- an auth token, a bad
length, the drain at shutdown, the counters, a Conn among pipelined
Submits -- so that a change to the product's protocol cannot break a step
unnoticed.  The smoke run (tests/test_bench_smoke.py) runs each as a real
server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.frame import frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.packet import Conn, encode
from tcpdemo.protocol import TcpDemoServerFactory

from .support import ackFrames, connAckFrame, lengthField, rawFrame, submitFrame, submitFrames
from .test_protocol import PEER, HalfClosingTransport

ROOT = Path(__file__).resolve().parent.parent


def _steps() -> dict[str, Any]:
    # The tests run from a checkout, which has benchmarks/: an import error
    # here (a product name a step uses was renamed) is a failure, not a skip.
    from benchmarks.steps import STEPS

    return dict(STEPS)


class StepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.steps = _steps()
        self.clock = Clock()

    def connect(self, step: str, **kwargs: Any) -> tuple[Any, HalfClosingTransport]:
        factory = TcpDemoServerFactory(
            metrics=ServerMetrics.create(CollectorRegistry()), reactor=self.clock, **kwargs
        )
        factory.protocol = self.steps[step]
        tallyFor = getattr(factory.protocol, "stepTally", None)
        if tallyFor is not None:
            factory.tally = tallyFor(factory.metrics)
        protocol = factory.buildProtocol(PEER)
        assert protocol is not None
        transport = HalfClosingTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def total(self, protocol: Any, name: str, flush: bool = True, **labels: str) -> float:
        if flush:
            protocol.factory.tally.flush()
        return sum(
            float(sample.value)
            for metric in protocol.factory.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def test_pipelined(self) -> None:
        """
        Runs of equal Submits, Submits of varied sizes, a Conn among them,
        a frame split over reads: every ack in order, the ConnAck in its
        place, and the counters count them all.
        """
        conn = frame(encode(Conn(b"")))
        sent = (
            submitFrames(range(1, 41), b"x" * 20)
            + b"".join(submitFrame(n, b"y" * (n % 7)) for n in range(41, 61))
            + conn
            + submitFrames(range(61, 81), b"z" * 20)
        )
        expected = ackFrames(range(1, 61)) + connAckFrame(0) + ackFrames(range(61, 81))
        tail = submitFrame(81, b"tail")
        for step in self.steps:
            protocol, transport = self.connect(step)
            protocol.dataReceived(sent + tail[:7])
            for i in range(7, len(tail)):
                protocol.dataReceived(tail[i : i + 1])
            self.assertEqual(transport.drain(), expected + ackFrames([81]), step)
            self.assertFalse(transport.disconnecting, step)
            self.assertEqual(self.total(protocol, "tcpdemo_req_recv_total"), 81, step)
            self.assertEqual(self.total(protocol, "tcpdemo_rsp_send_total"), 81, step)
            self.assertEqual(
                self.total(protocol, "tcpdemo_bytes_received_total"), len(sent + tail), step
            )
            # step0 writes each ack with sendString and never counted them.
            self.assertEqual(
                self.total(protocol, "tcpdemo_bytes_sent_total"),
                0 if step == "step0" else len(expected + ackFrames([81])),
                step,
            )

    def test_countsWhen(self) -> None:
        """
        Steps 0 to 5 move the counters on every read; from step6 on the
        product's tally moves them in bulk, at most 0.1 s later.
        """
        for step in self.steps:
            protocol, transport = self.connect(step)
            protocol.factory.startFactory()
            protocol.dataReceived(submitFrames(range(1, 4)))
            self.assertEqual(transport.drain(), ackFrames(range(1, 4)), step)
            counted = self.total(protocol, "tcpdemo_rsp_send_total", flush=False)
            self.assertEqual(counted, 0 if step in ("step6", "step7") else 3, step)
            self.clock.advance(0.1)
            self.assertEqual(self.total(protocol, "tcpdemo_rsp_send_total", flush=False), 3, step)
            protocol.factory.stopFactory()

    def test_authToken(self) -> None:
        """
        With an auth token, a Conn with it is answered ConnAck 0 and the
        Submits after it acked; a Submit before any Conn closes the
        connection after the acks owed, counted as a protocol error.
        """
        good = frame(encode(Conn(b"secret")))
        for step in self.steps:
            protocol, transport = self.connect(step, authToken=b"secret")
            protocol.dataReceived(good + submitFrames(range(1, 4)))
            self.assertEqual(transport.drain(), connAckFrame(0) + ackFrames(range(1, 4)), step)
            protocol, transport = self.connect(step, authToken=b"secret")
            protocol.dataReceived(submitFrame(1) + good)
            self.assertEqual(transport.drain(), b"", step)
            self.assertTrue(transport.writeClosed or transport.disconnecting, step)
            self.assertEqual(
                self.total(protocol, "tcpdemo_protocol_errors_total", reason="unexpected_command"),
                1,
                step,
            )

    def test_badLength(self) -> None:
        """
        A bad length closes the connection once the acks owed are written;
        nothing after it is answered.
        """
        for step in self.steps:
            protocol, transport = self.connect(step)
            protocol.dataReceived(
                submitFrames(range(1, 4)) + lengthField(3) + b"\x02" + submitFrame(4)
            )
            self.assertEqual(transport.drain(), ackFrames(range(1, 4)), step)
            self.assertTrue(transport.writeClosed, step)
            self.assertEqual(
                self.total(protocol, "tcpdemo_protocol_errors_total", reason="bad_length"), 1, step
            )

    def test_unknownCommand(self) -> None:
        """
        An unknown command closes the connection after the acks owed.
        """
        for step in self.steps:
            protocol, transport = self.connect(step)
            protocol.dataReceived(submitFrames(range(1, 3)) + rawFrame(7, b"\0") + submitFrame(3))
            self.assertEqual(transport.drain(), ackFrames(range(1, 3)), step)
            self.assertTrue(transport.writeClosed, step)

    def test_drain(self) -> None:
        """
        At shutdown every complete frame already received is answered, even
        while reading is paused for unsent acks, then the connection closes.
        """
        for step in self.steps:
            protocol, transport = self.connect(step)
            protocol.pauseProducing()
            protocol.dataReceived(submitFrames(range(1, 6)) + submitFrame(6)[:5])
            self.assertEqual(transport.value(), b"", step)
            d = protocol.factory.drainAll()
            self.assertEqual(transport.drain(), ackFrames(range(1, 6)), step)
            self.assertTrue(transport.writeClosed, step)
            protocol.connectionLost()
            self.successResultOf(d)
