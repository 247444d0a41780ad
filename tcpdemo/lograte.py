"""
Rate-limited log lines for per-connection errors.

A line per bad connection lets anyone who can connect write to the log as
fast as they can open connections (40,000 lines in 10 s, measured).  The
counters already say how many; the log only needs examples.  So each kind of
line (a protocol error's reason, an idle timeout) is logged at most C{burst}
times per C{interval}; the rest are left out, counted, and one line at the
end of the interval says how many of each kind were left out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

#: Lines of one kind logged per interval before the rest are left out.
DEFAULT_BURST = 10
#: Seconds in an interval.
DEFAULT_INTERVAL = 10.0


class LineBudget:
    """
    At most C{burst} lines of each kind per C{interval} seconds, on
    C{reactor}'s clock; a count of the lines left out, logged once per
    interval in which any were.
    """

    def __init__(
        self,
        log: Logger,
        reactor: Any,
        interval: float = DEFAULT_INTERVAL,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self.log = log
        self.reactor = reactor
        self.interval = interval
        self.burst = burst
        self._windowStart: float | None = None
        self._logged: dict[str, int] = {}
        self._leftOut: dict[str, int] = {}
        self._report: IDelayedCall | None = None

    def emit(self, kind: str, format: str, *, level: str = "warn", **fields: object) -> bool:
        """
        Log C{format} with C{fields} at C{level} unless C{burst} lines of
        C{kind} were already logged in this interval; return whether it was.
        """
        now = float(self.reactor.seconds())
        start = self._windowStart
        if start is None or now - start >= self.interval:
            self.flush()
            self._windowStart = now
            self._logged = {}
        logged = self._logged.get(kind, 0)
        if logged < self.burst:
            self._logged[kind] = logged + 1
            getattr(self.log, level)(format, **fields)
            return True
        self._leftOut[kind] = self._leftOut.get(kind, 0) + 1
        if self._report is None:
            assert self._windowStart is not None
            delay = max(0.0, self._windowStart + self.interval - now)
            self._report = self.reactor.callLater(delay, self.flush)
        return False

    def flush(self) -> None:
        """
        Log how many lines were left out since the last such line, if any.
        """
        report, self._report = self._report, None
        if report is not None and report.active():
            report.cancel()
        leftOut, self._leftOut = self._leftOut, {}
        if leftOut:
            self.log.warn(
                "left out {count} connection error line(s) in {seconds}s: {kinds}; "
                "the counters include them",
                count=sum(leftOut.values()),
                seconds=self.interval,
                kinds=", ".join(f"{kind} {n}" for kind, n in sorted(leftOut.items())),
            )
