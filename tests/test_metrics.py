"""
Tests for L{tcpdemo.metrics}: the collectors L{ServerMetrics.create} makes
(series that exist from the start, the worker label, the handler metrics),
and the read tally: the counts of every read reach the Prometheus counters
in bulk, within FLUSH_DELAY, and always before a scrape of /metrics.
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

from tcpdemo.metrics import (
    FLUSH_DELAY,
    HANDLER_BATCH_BUCKETS,
    PER_WORKER,
    PRECREATED_RESULTS,
    PROTOCOL_ERROR_REASONS,
    ReadTally,
    ServerMetrics,
    metricsSite,
)
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


class ServerMetricsTests(SynchronousTestCase):
    """
    L{ServerMetrics.create}: what a scrape shows before anything happened.
    """

    def test_precreatedLabels(self) -> None:
        """
        Every protocol error reason, and the acks of results 0, 1 and 2, are
        series at zero from the start (so that rate() and alerts see them);
        a handler's own result appears only once used.
        """
        registry = CollectorRegistry()
        metrics = ServerMetrics.create(registry)
        for reason in PROTOCOL_ERROR_REASONS:
            self.assertEqual(
                registry.get_sample_value("tcpdemo_protocol_errors_total", {"reason": reason}),
                0.0,
                reason,
            )
        self.assertEqual(PRECREATED_RESULTS, (0, 1, 2))
        for result in PRECREATED_RESULTS:
            self.assertEqual(
                registry.get_sample_value("tcpdemo_acks_total", {"result": str(result)}), 0.0
            )
        self.assertIsNone(registry.get_sample_value("tcpdemo_acks_total", {"result": "7"}))
        metrics.acksFor(7).inc(3)
        self.assertEqual(registry.get_sample_value("tcpdemo_acks_total", {"result": "7"}), 3.0)

    def test_acksForBindsOnce(self) -> None:
        """
        L{ServerMetrics.acksFor} gives the same child for the same result.
        """
        metrics = ServerMetrics.create()
        self.assertIs(metrics.acksFor(0), metrics.acksFor(0))
        self.assertIs(metrics.acksFor(200), metrics.acksFor(200))
        self.assertIsNot(metrics.acksFor(0), metrics.acksFor(200))

    def test_workerLabel(self) -> None:
        """
        In a worker, the L{PER_WORKER} collectors carry its number, already
        bound; the others have no worker label.
        """
        registry = CollectorRegistry()
        metrics = ServerMetrics.create(registry, worker="3")
        for name in PER_WORKER:
            getattr(metrics, name).inc()
        for name in ("connections", "req_recv", "rsp_send", "bytes_received", "bytes_sent"):
            self.assertEqual(
                registry.get_sample_value(f"tcpdemo_{name}_total", {"worker": "3"}), 1.0, name
            )
            self.assertIsNone(registry.get_sample_value(f"tcpdemo_{name}_total"), name)
        self.assertEqual(
            registry.get_sample_value("tcpdemo_client_connected", {"worker": "3"}), 1.0
        )
        metrics.idle_timeouts.inc()
        self.assertEqual(registry.get_sample_value("tcpdemo_idle_timeouts_total"), 1.0)

    def test_noWorkerLabel(self) -> None:
        """
        In a single process, no collector has a worker label.
        """
        registry = CollectorRegistry()
        metrics = ServerMetrics.create(registry)
        metrics.connections.inc()
        self.assertEqual(registry.get_sample_value("tcpdemo_connections_total"), 1.0)
        for family in registry.collect():
            for sample in family.samples:
                self.assertNotIn("worker", sample.labels, sample.name)

    def test_handlerMetrics(self) -> None:
        """
        The handler's collectors: batch seconds in L{HANDLER_BATCH_BUCKETS},
        the pending gauge, errors and timeouts, all at zero from the start.
        """
        registry = CollectorRegistry()
        metrics = ServerMetrics.create(registry)
        for name in (
            "tcpdemo_handler_pending",
            "tcpdemo_handler_errors_total",
            "tcpdemo_handler_timeouts_total",
            "tcpdemo_handler_batch_seconds_count",
        ):
            self.assertEqual(registry.get_sample_value(name), 0.0, name)
        metrics.handler_batch_seconds.observe(0.003)
        metrics.handler_pending.inc(5)
        metrics.handler_errors.inc()
        metrics.handler_timeouts.inc(2)

        def bucket(bound: float) -> float | None:
            return registry.get_sample_value(
                "tcpdemo_handler_batch_seconds_bucket", {"le": str(bound)}
            )

        self.assertEqual(bucket(0.0025), 0.0)
        self.assertEqual(bucket(0.005), 1.0)
        self.assertEqual(
            registry.get_sample_value("tcpdemo_handler_batch_seconds_bucket", {"le": "+Inf"}), 1.0
        )
        bounds = {
            float(sample.labels["le"])
            for family in registry.collect()
            if family.name == "tcpdemo_handler_batch_seconds"
            for sample in family.samples
            if sample.name.endswith("_bucket")
        }
        self.assertEqual(bounds, {*HANDLER_BATCH_BUCKETS, float("inf")})
        self.assertEqual(registry.get_sample_value("tcpdemo_handler_pending"), 5.0)
        self.assertEqual(registry.get_sample_value("tcpdemo_handler_errors_total"), 1.0)
        self.assertEqual(registry.get_sample_value("tcpdemo_handler_timeouts_total"), 2.0)


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


class HandlerTallyTests(SynchronousTestCase):
    """
    The handler path's gauge changes and batch latencies, counted in the
    tally and moved in bulk, give what moving each at once gives.
    """

    #: Latencies on, just above and far past the buckets' bounds.
    LATENCIES = [0.0, 0.0005, 0.00050001, 0.001, 0.0024, 0.3, 29.9, 30.0, 1e9] * 3

    def samples(self, metrics: ServerMetrics, name: str) -> dict[Any, float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in metrics.registry.collect()
            if family.name == name
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    def test_batchLatenciesAsObserved(self) -> None:
        direct = ServerMetrics.create(CollectorRegistry())
        tallied = ServerMetrics.create(CollectorRegistry())
        tally = ReadTally(tallied)
        for seconds in self.LATENCIES:
            direct.handler_batch_seconds.observe(seconds)
            tally.batchTook(seconds)
        name = "tcpdemo_handler_batch_seconds"
        self.assertEqual(
            tallied.registry.get_sample_value(name + "_count"), 0.0
        )  # held until the flush
        tally.flush()
        self.assertEqual(self.samples(tallied, name), self.samples(direct, name))
        self.assertEqual(tallied.registry.get_sample_value(name + "_count"), len(self.LATENCIES))
        tally.flush()  # nothing counted twice
        self.assertEqual(self.samples(tallied, name), self.samples(direct, name))

    def test_withoutHistogramInternals(self) -> None:
        """
        A prometheus_client whose histogram lacks the internals the bulk
        move uses: each latency is observed at once instead.
        """

        class Observed:
            def __init__(self) -> None:
                self.seen: list[float] = []

            def observe(self, seconds: float) -> None:
                self.seen.append(seconds)

        metrics = ServerMetrics.create(CollectorRegistry())
        observed = Observed()
        metrics.handler_batch_seconds = observed  # type: ignore[assignment]
        tally = ReadTally(metrics)
        tally.batchTook(0.25)
        self.assertEqual(observed.seen, [0.25])
        tally.flush()
        self.assertEqual(observed.seen, [0.25])

    def test_pendingMovesOnFlush(self) -> None:
        metrics = ServerMetrics.create(CollectorRegistry())
        tally = ReadTally(metrics)
        tally.pending += 7
        tally.pending -= 2
        self.assertEqual(metrics.registry.get_sample_value("tcpdemo_handler_pending"), 0.0)
        tally.flush()
        self.assertEqual(metrics.registry.get_sample_value("tcpdemo_handler_pending"), 5.0)
        tally.pending -= 5
        tally.flush()
        self.assertEqual(metrics.registry.get_sample_value("tcpdemo_handler_pending"), 0.0)
