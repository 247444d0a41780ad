"""
The read tally: the counts of every read reach the Prometheus counters in
bulk, within FLUSH_DELAY, and always before a scrape of /metrics.
"""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpdemo.metrics import FLUSH_DELAY, ReadTally, ServerMetrics, metricsSite
from tcpdemo.protocol import TcpDemoServerFactory

from .support import LOOPBACK, ackFrame, recvExactly, recvUntilClosed, submitFrame

#: The global reactor, typed loosely: it provides many interfaces at once.
reactor: Any = _reactor


def counted(metrics: ServerMetrics) -> dict[str, float]:
    registry = metrics.registry
    return {
        name: registry.get_sample_value(f"tcpdemo_{name}_total") or 0.0
        for name in ("bytes_received", "bytes_sent", "req_recv", "rsp_send")
    }


class ReadTallyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = ServerMetrics.create(CollectorRegistry())
        self.tally = ReadTally(self.metrics)
        self.clock = Clock()

    def add(self, received: int, sent: int, answered: int) -> None:
        self.tally.bytesReceived += received
        self.tally.bytesSent += sent
        self.tally.answered += answered
        self.tally.changed()

    def test_atOnceUntilStarted(self) -> None:
        """
        Before L{ReadTally.start}, every change reaches the counters at once.
        """
        self.add(32, 14, 1)
        self.assertEqual(
            counted(self.metrics),
            {"bytes_received": 32, "bytes_sent": 14, "req_recv": 1, "rsp_send": 1},
        )

    def test_withinFlushDelay(self) -> None:
        """
        Started, the counts of many reads wait for one delayed call, which
        moves them all FLUSH_DELAY after the first change.
        """
        self.tally.start(self.clock.callLater)
        for _ in range(1000):
            self.add(32, 14, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(counted(self.metrics)["req_recv"], 0)
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(
            counted(self.metrics),
            {"bytes_received": 32000, "bytes_sent": 14000, "req_recv": 1000, "rsp_send": 1000},
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The next change schedules the next move.
        self.add(32, 14, 1)
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(counted(self.metrics)["rsp_send"], 1001)

    def test_flush(self) -> None:
        """
        L{ReadTally.flush} moves the counts now and cancels the delayed call.
        """
        self.tally.start(self.clock.callLater)
        self.add(32, 14, 1)
        self.tally.flush()
        self.assertEqual(counted(self.metrics)["bytes_sent"], 14)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(counted(self.metrics)["bytes_sent"], 14)

    def test_stop(self) -> None:
        """
        L{ReadTally.stop} moves what waits, and from then on every change
        goes at once.
        """
        self.tally.start(self.clock.callLater)
        self.add(32, 14, 1)
        self.tally.stop()
        self.assertEqual(counted(self.metrics)["req_recv"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.add(32, 14, 1)
        self.assertEqual(counted(self.metrics)["req_recv"], 2)


class ListeningTests(TestCase):
    """
    Over real TCP: the factory's tally waits while it listens, moves its
    counts when it stops, and a scrape of /metrics sees every count.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = ServerMetrics.create(CollectorRegistry())
        self.factory = TcpDemoServerFactory(metrics=self.metrics, reactor=self.clock)
        self.port: Any = reactor.listenTCP(0, self.factory, interface=LOOPBACK)
        self.addCleanup(self.stopListening)

    def stopListening(self) -> Any:
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def exchange(self, count: int) -> None:
        """
        In a thread: send C{count} Submits, read their acks, close.
        """
        with socket.create_connection((LOOPBACK, self.port.getHost().port), timeout=10) as sock:
            sock.sendall(b"".join(submitFrame(i) for i in range(1, count + 1)))
            acks = recvExactly(sock, 14 * count)
            self.assertEqual(acks, b"".join(ackFrame(i) for i in range(1, count + 1)))
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvUntilClosed(sock), b"")

    async def test_waitsWhileListening(self) -> None:
        """
        While the factory listens, counts wait for the delayed move (on the
        factory's clock here, which only the test advances); once it stops
        listening they are moved.
        """
        await threads.deferToThread(self.exchange, 100)
        self.assertEqual(counted(self.metrics)["req_recv"], 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(
            counted(self.metrics),
            {"bytes_received": 1300, "bytes_sent": 1400, "req_recv": 100, "rsp_send": 100},
        )
        await threads.deferToThread(self.exchange, 10)
        await self.stopListening()
        self.assertEqual(counted(self.metrics)["rsp_send"], 110)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_scrapeSeesEveryCount(self) -> None:
        """
        A scrape of the site built with C{beforeScrape} moves the counts
        first: the clock never advances, yet /metrics shows them all.
        """
        site = metricsSite(self.metrics.registry, beforeScrape=self.factory.tally.flush)
        web = reactor.listenTCP(0, site, interface=LOOPBACK)
        self.addCleanup(web.stopListening)
        await threads.deferToThread(self.exchange, 100)
        self.assertEqual(counted(self.metrics)["req_recv"], 0)

        def scrape() -> str:
            url = f"http://{LOOPBACK}:{web.getHost().port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        text = await threads.deferToThread(scrape)
        self.assertIn("tcpdemo_req_recv_total 100.0", text)
        self.assertIn("tcpdemo_bytes_sent_total 1400.0", text)
