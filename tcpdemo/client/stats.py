"""
What a load run measured: counters, errors by kind, latency and CPU time.

Latency goes into an HDR histogram (microseconds, 1 µs to 60 s, three
significant digits): fixed memory and exact to that precision at any
number of acks, where keeping every sample would not scale.  Acks that
share a send time and a receive time are recorded with one call.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from hdrh.histogram import HdrHistogram

from tcpdemo.client.checker import ERROR_KINDS, Problem

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

#: Error messages kept word for word; beyond these only counts are kept.
MAX_MESSAGES = 20


def cpuSeconds() -> tuple[float, float]:
    """
    This process's user and system CPU time so far (getrusage has a finer
    resolution than os.times where it exists).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover (Windows)
        times = os.times()
        return times.user, times.system
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


@attrs.define
class LoadStats:
    """
    Live counters shared by every connection of a run, plus its histogram.

    C{sent} counts Submits written, C{acked} correct acks, C{answered} every
    ack that answered a Submit (including those with a non-zero result).
    """

    sent: int = 0
    acked: int = 0
    answered: int = 0
    errors: int = 0
    errorsByKind: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    messages: list[str] = attrs.field(factory=list)
    histogram: HdrHistogram = attrs.field(
        factory=lambda: HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    )
    #: perf_counter() when sending began, and of the latest ack.
    startTime: float | None = None
    lastAckTime: float | None = None
    #: perf_counter() when sending stopped (the --duration or --count was reached).
    sendEndTime: float | None = None
    cpuStart: tuple[float, float] = (0.0, 0.0)
    #: Latency is recorded for Submits sent (or scheduled) from this
    #: perf_counter() on: a warm-up moves it (see L{restart}).
    measureFrom: float = 0.0
    #: C{sent} and C{acked} when the measured window began.
    sentBefore: int = 0
    ackedBefore: int = 0

    def start(self, now: float) -> None:
        """
        Sending begins now: the clock and the CPU count start here.
        """
        self.startTime = now
        self.cpuStart = cpuSeconds()

    def restart(self, now: float) -> None:
        """
        The warm-up ended now: throughput, latency and CPU count from here.
        Totals (sent, acked, errors) still cover the whole run, which every
        ack's check did.
        """
        self.start(now)
        self.measureFrom = now
        self.sentBefore = self.sent
        self.ackedBefore = self.acked
        self.histogram.reset()

    def recordLatency(self, seconds: float, count: int) -> None:
        """
        C{count} acks arrived C{seconds} after their Submits were written.
        """
        micros = int(seconds * 1_000_000)
        if micros < LOWEST_US:
            micros = LOWEST_US
        elif micros > HIGHEST_US:
            micros = HIGHEST_US
        self.histogram.record_value(micros, count)

    def error(self, connection: str, problem: Problem) -> None:
        """
        Count one error; keep its message if it is among the first few.
        """
        self.errors += 1
        self.errorsByKind[problem.kind] = self.errorsByKind.get(problem.kind, 0) + 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{connection}: {problem.kind}: {problem.message}")

    def latency(self) -> dict[str, float]:
        """
        Latency figures in microseconds; zeros when nothing was acked.
        """
        h = self.histogram
        count = h.get_total_count()
        if not count:
            keys = [f"p{p:g}" for p in PERCENTILES] + ["min", "mean", "max"]
            return {"count": 0, **dict.fromkeys(keys, 0)}
        values = h.get_percentile_to_value_dict(list(PERCENTILES))
        figures: dict[str, float] = {"count": count}
        for p in PERCENTILES:
            figures[f"p{p:g}"] = values[p]
        figures["min"] = h.get_min_value()
        figures["mean"] = round(h.get_mean_value(), 1)
        figures["max"] = h.get_max_value()
        return figures


@attrs.frozen
class Report:
    """
    The final figures of a run, ready to print as a table or as JSON.
    """

    config: dict[str, Any]
    connections: int
    sent: int
    acked: int
    answered: int
    unanswered: int
    errors: int
    errorsByKind: dict[str, int]
    messages: list[str]
    duration: float
    sendDuration: float
    latencyUs: dict[str, float]
    cpuUser: float
    cpuSystem: float
    interrupted: bool = False
    maxTickGap: float | None = None
    #: Acks that answered a Submit, by result byte (as text, for JSON); only
    #: results that occurred.
    results: dict[str, int] = attrs.field(factory=dict)
    #: Seconds of warm-up left out of the figures below the totals, and the
    #: Submits sent and acks received in the measured window after it.
    warmup: float = 0.0
    windowSent: int | None = None
    windowAcked: int | None = None

    @property
    def nonZeroResults(self) -> int:
        """
        Acks whose result was not 0: the server's "no", not a wire error
        (unless --fail-on-result made them C{bad_result} errors too).
        """
        return sum(n for result, n in self.results.items() if result != "0")

    @property
    def throughput(self) -> float:
        """
        Correct acks per second of the run (after its warm-up).
        """
        acked = self.acked if self.windowAcked is None else self.windowAcked
        return acked / self.duration if self.duration > 0 else 0.0

    @property
    def sendRate(self) -> float:
        """
        Submits written per second while sending (after the warm-up).
        """
        sent = self.sent if self.windowSent is None else self.windowSent
        return sent / self.sendDuration if self.sendDuration > 0 else 0.0

    @property
    def cpu(self) -> float:
        return self.cpuUser + self.cpuSystem

    def asJSON(self) -> dict[str, Any]:
        """
        Every figure, for C{--json}.
        """
        return {
            "config": self.config,
            "connections": self.connections,
            "sent": self.sent,
            "acked": self.acked,
            "answered": self.answered,
            "unanswered": self.unanswered,
            "results": self.results,
            "errors": {
                "total": self.errors,
                "by_kind": self.errorsByKind,
                "messages": self.messages,
                "messages_omitted": max(0, self.errors - len(self.messages)),
            },
            "warmup_s": self.warmup,
            "duration_s": round(self.duration, 6),
            "send_duration_s": round(self.sendDuration, 6),
            "throughput_acks_per_s": round(self.throughput, 1),
            "send_rate_per_s": round(self.sendRate, 1),
            "latency_us": self.latencyUs,
            "cpu_s": {
                "user": round(self.cpuUser, 3),
                "system": round(self.cpuSystem, 3),
                "total": round(self.cpu, 3),
            },
            "cpu_percent_of_one_core": round(100 * self.cpu / self.duration, 1)
            if self.duration > 0
            else 0.0,
            "max_tick_gap_ms": None
            if self.maxTickGap is None
            else round(self.maxTickGap * 1000, 3),
            "interrupted": self.interrupted,
        }
