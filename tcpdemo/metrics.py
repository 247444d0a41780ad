"""
The server's Prometheus metrics, and the C{/metrics} resource that serves them
from the server's own reactor.

Collectors live in a registry that the caller chooses, so tests can build a
fresh one per test; the server uses prometheus_client's default registry,
which also carries the process and platform collectors.

With C{--workers N} (N > 1) each worker process writes its collectors to
prometheus_client's multiprocess files, with a C{worker} label on the
L{PER_WORKER} ones, and the parent serves them all from one C{/metrics}
(L{workersRegistry}): every metric under its usual name and labels, summed
over the workers, plus a C{tcpdemo_worker_*} copy of the L{PER_WORKER} ones
by worker, and the C{process_*} metrics summed over the parent and the
workers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Callable, TypeVar, cast

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

#: Every reason label the server uses for protocol errors, pre-created so
#: that dashboards and alerts see a zero rather than no series at all.
PROTOCOL_ERROR_REASONS = (
    "bad_length",
    "frame_too_large",
    "unknown_command",
    "unexpected_command",
    "malformed_packet",
    "auth_failed",
    "memory_budget",
)

#: The L{ServerMetrics} fields that carry a C{worker} label in a worker
#: process, so that the parent can show how the load spreads.
PER_WORKER = (
    "client_connected",
    "connections",
    "req_recv",
    "rsp_send",
    "bytes_received",
    "bytes_sent",
)

#: The label, and the prefix of the per-worker copies the parent serves.
WORKER_LABEL = "worker"
WORKER_PREFIX = "tcpdemo_worker_"


#: Seconds a count may wait in a L{ReadTally} before it reaches the counters
#: (and, with C{--workers}, the parent's /metrics).
FLUSH_DELAY = 0.1

_M = TypeVar("_M", Counter, Gauge)

#: Result bytes whose C{tcpdemo_acks_total} series exist from the start:
#: 0 ok, 1 handler error, 2 timeout (a handler's own codes appear when used).
PRECREATED_RESULTS = (0, 1, 2)

#: Buckets of C{tcpdemo_handler_batch_seconds}: from a fast in-memory
#: handler (well under a millisecond) to a store near --handler-timeout.
HANDLER_BATCH_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@attrs.define
class ServerMetrics:
    """
    The collectors the server updates.  The counters of every read go
    through a L{ReadTally}; the rest move once per event (a connection,
    a pause, an error).
    """

    registry: CollectorRegistry
    client_connected: Gauge
    connections: Counter
    connections_refused: Counter
    req_recv: Counter
    rsp_send: Counter
    protocol_errors: Counter
    bytes_received: Counter
    bytes_sent: Counter
    backpressure_pauses: Counter
    idle_timeouts: Counter
    acks: Counter
    handler_batch_seconds: Histogram
    handler_pending: Gauge
    handler_errors: Counter
    handler_timeouts: Counter
    #: C{acks} by result byte, each label bound once (see L{acksFor}).
    _acksByResult: dict[int, Counter] = attrs.field(factory=dict)

    def acksFor(self, result: int) -> Counter:
        """
        The C{tcpdemo_acks_total} child for C{result} (0-255: at most 256).
        """
        child = self._acksByResult.get(result)
        if child is None:
            child = self._acksByResult[result] = self.acks.labels(str(result))
        return child

    @classmethod
    def create(
        cls, registry: CollectorRegistry | None = None, worker: str | None = None
    ) -> ServerMetrics:
        """
        Create the collectors in C{registry}, by default a new, empty one.

        In a worker process (C{worker} is its number) the L{PER_WORKER}
        collectors get a C{worker} label, already bound: callers see the same
        C{inc}/C{dec} interface either way.
        """
        if registry is None:
            registry = CollectorRegistry()
        r = registry
        workerLabels: Sequence[str] = () if worker is None else (WORKER_LABEL,)

        def bound(metric: _M) -> _M:
            return metric if worker is None else metric.labels(worker)

        protocol_errors = Counter(
            "tcpdemo_protocol_errors",
            "Connections closed for bad input, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in PROTOCOL_ERROR_REASONS:
            protocol_errors.labels(reason)
        acks = Counter(
            "tcpdemo_acks",
            "SubmitAcks sent, by result byte (0 ok, 1 handler error, 2 timeout, "
            "3-255 the handler's own).",
            ["result"],
            registry=r,
        )
        for result in PRECREATED_RESULTS:
            acks.labels(str(result))
        return cls(
            registry=r,
            client_connected=bound(
                Gauge(
                    "tcpdemo_client_connected",
                    "Client connections currently open.",
                    workerLabels,
                    registry=r,
                    multiprocess_mode="livesum",
                )
            ),
            connections=bound(
                Counter(
                    "tcpdemo_connections",
                    "Client connections accepted.",
                    workerLabels,
                    registry=r,
                )
            ),
            connections_refused=Counter(
                "tcpdemo_connections_refused",
                "Client connections refused because --max-connections were open.",
                registry=r,
            ),
            req_recv=bound(
                Counter("tcpdemo_req_recv", "Submit packets decoded.", workerLabels, registry=r)
            ),
            rsp_send=bound(
                Counter("tcpdemo_rsp_send", "SubmitAck packets sent.", workerLabels, registry=r)
            ),
            protocol_errors=protocol_errors,
            bytes_received=bound(
                Counter(
                    "tcpdemo_bytes_received",
                    "Bytes read from client connections.",
                    workerLabels,
                    registry=r,
                )
            ),
            bytes_sent=bound(
                Counter(
                    "tcpdemo_bytes_sent",
                    "Bytes written to client connections.",
                    workerLabels,
                    registry=r,
                )
            ),
            backpressure_pauses=Counter(
                "tcpdemo_backpressure_pauses",
                "Times reading from a connection paused because its unsent acks "
                "exceeded the write-buffer limit.",
                registry=r,
            ),
            idle_timeouts=Counter(
                "tcpdemo_idle_timeouts",
                "Connections closed by the idle timeout.",
                registry=r,
            ),
            acks=acks,
            handler_batch_seconds=Histogram(
                "tcpdemo_handler_batch_seconds",
                "Seconds from handing a batch of Submits to the handler to its results.",
                buckets=HANDLER_BATCH_BUCKETS,
                registry=r,
            ),
            handler_pending=Gauge(
                "tcpdemo_handler_pending",
                "Submits handed to or waiting for the handler, not yet acked.",
                registry=r,
                multiprocess_mode="livesum",
            ),
            handler_errors=Counter(
                "tcpdemo_handler_errors",
                "Batches whose handler raised, failed or gave bad results (result 1).",
                registry=r,
            ),
            handler_timeouts=Counter(
                "tcpdemo_handler_timeouts",
                "Batches that took longer than --handler-timeout (result 2).",
                registry=r,
            ),
        )


class ReadTally:
    """
    The figures every read moves (bytes in, bytes out, Submits answered,
    Submits at a handler, handler batch latencies), added up as plain
    numbers and moved into the Prometheus collectors in bulk.

    A C{Counter.inc} takes a lock (and in a worker writes a memory-mapped
    file): at four per read they were a tenth of the server's CPU under
    request/response load; on the handler path a Gauge.inc, a Gauge.dec and
    a Histogram.observe per batch were a seventh of the reactor's CPU per
    Submit.  Once L{start}ed, the tally moves its counts
    into the counters at most L{FLUSH_DELAY} after they changed, and
    whenever L{flush} is called (before every scrape of this process's
    /metrics); before L{start} and after L{stop} it moves them at once.
    """

    __slots__ = (
        "metrics",
        "bytesReceived",
        "bytesSent",
        "answered",
        "received",
        "acked",
        "pending",
        "_callLater",
        "_due",
        "_batchBounds",
        "_batchCounts",
        "_batchSum",
    )

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.bytesReceived = 0
        self.bytesSent = 0
        #: Submits received and acked with result 0 in the same read (the
        #: built-in C{ack} handler's fast path).
        self.answered = 0
        #: Submits received for a handler (acked later, see C{acked}).
        self.received = 0
        #: SubmitAcks sent after a handler's results, by result byte.
        self.acked: dict[int, int] = {}
        #: Change of C{tcpdemo_handler_pending} not yet moved to the gauge.
        self.pending = 0
        # Handler batch latencies counted per bucket of the histogram, moved
        # in with one inc per bucket used.  That needs prometheus_client's
        # (long stable) _upper_bounds, _buckets and _sum; without them each
        # latency is observed at once instead.
        histogram = metrics.handler_batch_seconds
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        if bounds and buckets and len(bounds) == len(buckets) and hasattr(histogram, "_sum"):
            self._batchBounds: list[float] | None = list(bounds)
        else:
            self._batchBounds = None
        self._batchCounts = [0] * len(bounds or ())
        self._batchSum = 0.0
        self._callLater: Callable[..., Any] | None = None
        self._due: Any = None

    def start(self, callLater: Callable[..., Any]) -> None:
        """
        From now on, move the counts at most L{FLUSH_DELAY} after a change.
        """
        self._callLater = callLater

    def stop(self) -> None:
        """
        Move what is counted, and from now on move every count at once.
        """
        self._callLater = None
        self.flush()

    def changed(self) -> None:
        """
        The counts grew: see that they reach the counters.
        """
        if self._due is None:
            if self._callLater is None:
                self.flush()
            else:
                self._due = self._callLater(FLUSH_DELAY, self._fire)

    def batchTook(self, seconds: float) -> None:
        """
        A handler answered a batch C{seconds} after it was handed over: an
        observation of C{tcpdemo_handler_batch_seconds}.
        """
        bounds = self._batchBounds
        if bounds is None:
            self.metrics.handler_batch_seconds.observe(seconds)
            return
        # The first bucket whose bound is >= seconds, as observe() picks.
        self._batchCounts[bisect_left(bounds, seconds)] += 1
        self._batchSum += seconds

    def _fire(self) -> None:
        self._due = None
        self.flush()

    def flush(self) -> None:
        """
        Move every count into its counter now.
        """
        due, self._due = self._due, None
        if due is not None and due.active():
            due.cancel()
        metrics = self.metrics
        if self.bytesReceived:
            metrics.bytes_received.inc(self.bytesReceived)
            self.bytesReceived = 0
        if self.bytesSent:
            metrics.bytes_sent.inc(self.bytesSent)
            self.bytesSent = 0
        if self.answered:
            metrics.req_recv.inc(self.answered)
            metrics.rsp_send.inc(self.answered)
            metrics.acksFor(0).inc(self.answered)
            self.answered = 0
        if self.received:
            metrics.req_recv.inc(self.received)
            self.received = 0
        if self.acked:
            acked, self.acked = self.acked, {}
            for result, count in acked.items():
                metrics.rsp_send.inc(count)
                metrics.acksFor(result).inc(count)
        if self.pending:
            metrics.handler_pending.inc(self.pending)
            self.pending = 0
        counts = self._batchCounts
        if any(counts):
            histogram: Any = metrics.handler_batch_seconds
            histogram._sum.inc(self._batchSum)
            for index, count in enumerate(counts):
                if count:
                    histogram._buckets[index].inc(count)
                    counts[index] = 0
            self._batchSum = 0.0


def metricsSite(
    registry: CollectorRegistry,
    beforeScrape: Callable[[], None] | None = None,
    reactor: Any = None,
) -> Site:
    """
    A web site serving C{registry} at C{/metrics} from C{reactor} (by
    default the global one), at a bounded cost whatever the scrape rate
    (L{tcpdemo.scrape}); C{beforeScrape} is called in the reactor thread
    before each rendering (the registry is read in a thread of the
    reactor's pool).  Request bodies are refused unread
    (L{tcpdemo.websites}).
    """
    from tcpdemo.scrape import ScrapeResource
    from tcpdemo.websites import quietSite

    if reactor is None:
        # Imported here: the global reactor must not be imported before
        # twistd has installed the chosen one.
        from twisted.internet import reactor
    root = Resource()
    root.putChild(b"metrics", cast(IResource, ScrapeResource(reactor, registry, beforeScrape)))
    return quietSite(cast(IResource, root))
