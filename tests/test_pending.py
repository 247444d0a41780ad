"""
L{tcpdemo.pending.HandlerRunner} on a fake clock: every delayed call it
makes (a batch's --handler-timeout, the rate-limited problem log line) is
gone once its batch is answered, once the grace period gives up, and once
the runner is stopped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import pending
from tcpdemo.handlers import SubmitBatch
from tcpdemo.metrics import ServerMetrics

from .handlerkit import ManualHandler, ScriptedHandler
from .support import submitFrames


def handOver(
    runner: pending.HandlerRunner, count: int, payload: bytes = b"x"
) -> pending.PendingBatch:
    """
    One batch of C{count} Submits of a connection already gone (no
    protocol), handed to C{runner}'s handler.
    """
    frames = submitFrames(range(count), payload)
    entry = pending.PendingBatch(None, [b"%08d" % i for i in range(count)], len(frames))
    runner.hand(entry, SubmitBatch(frames, count, 1, "127.0.0.1:1", 0.0))
    return entry


class RunnerTimerTests(SynchronousTestCase):
    def runner(self, handler: Any, **settings: Any) -> tuple[pending.HandlerRunner, Clock]:
        clock = Clock()
        self.metrics = ServerMetrics.create(CollectorRegistry())
        runner = pending.HandlerRunner(handler, self.metrics, clock, **settings)
        self.events: list[dict[str, Any]] = []
        self.patch(pending.HandlerRunner, "log", Logger(observer=self.events.append))  # type: ignore[arg-type]
        return runner, clock

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    def test_answeredBatchCancelsItsTimer(self) -> None:
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        entry = handOver(runner, 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        handler.batches[0][1].callback(bytes(3))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(entry.results, bytes(3))
        self.assertEqual((runner.outstanding, runner.waiting), (0, 0))

    def test_timedOutBatchLeavesNoCall(self) -> None:
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=0.5)
        entry = handOver(runner, 2)
        clock.advance(0.5)
        self.assertEqual(entry.results, b"\2\2")
        self.assertEqual(handler.cancelled, 1)
        # The first problem is logged at once: no call waits to log it.
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(self.events), 1)

    def test_eachBatchTimesOutAtItsOwnDeadline(self) -> None:
        """
        One timer serves every batch at the handler: it is due for the
        oldest, and is set again for the next; a batch answered in time is
        not timed out; once none is left, no call is.
        """
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=1.0)
        first = handOver(runner, 1)
        clock.advance(0.25)
        answered = handOver(runner, 2)
        clock.advance(0.25)
        second = handOver(runner, 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        handler.batches[1][1].callback(bytes(2))
        clock.advance(0.5)  # t=1.0: the first's deadline
        self.assertEqual(first.results, b"\2")
        self.assertIsNone(second.acks)
        self.assertEqual(answered.results, bytes(2))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.49)
        self.assertIsNone(second.acks)
        clock.advance(0.01)  # t=1.5: the second's
        self.assertEqual(second.results, b"\2" * 3)
        self.assertEqual(handler.cancelled, 2)
        self.assertEqual(self.sample("tcpdemo_handler_timeouts_total"), 2)
        # Only the rate-limited log line's call may wait: the timer is gone.
        self.assertIsNone(runner._timer)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual((runner.outstanding, runner.waiting), (0, 0))

    def test_giveUpFinishesEveryBatch(self) -> None:
        """
        L{HandlerRunner.giveUp}: every batch still at the handler gets
        result 2, counted as a timeout, its Deferred cancelled and its timer
        gone; L{HandlerRunner.whenIdle} fires; late answers are ignored.
        """
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        first = handOver(runner, 3)
        second = handOver(runner, 4)
        idle = runner.whenIdle()
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the runner's one timer
        self.assertEqual(runner.giveUp(), (2, 7))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual((first.results, second.results), (b"\2" * 3, b"\2" * 4))
        self.assertEqual(handler.cancelled, 2)
        self.assertEqual(self.successResultOf(idle), None)
        self.assertEqual(self.sample("tcpdemo_handler_timeouts_total"), 2)
        self.assertEqual(self.sample("tcpdemo_handler_pending"), 0)
        self.assertEqual((runner.outstanding, runner.waiting, runner.waitingBytes), (0, 0, 0))
        # Giving up logs nothing itself: the shutdown's one line says it.
        self.assertEqual(self.events, [])
        self.assertEqual(runner.giveUp(), (0, 0))

    def test_giveUpWithNothingOutstanding(self) -> None:
        runner, clock = self.runner(ScriptedHandler(), timeout=30.0)
        handOver(runner, 2)  # answered at once: no timer
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(runner.giveUp(), (0, 0))

    def test_stopCancelsTheLogCallAndLogsWhatItHeld(self) -> None:
        """
        Problems after the last log line wait for a call that logs them
        later; L{HandlerRunner.stop} cancels it and logs them at once, and
        any problem after the stop is logged at once, with no call.
        """
        handler = ScriptedHandler()
        runner, clock = self.runner(handler, problemLogInterval=10.0)
        handOver(runner, 1, b"raise")
        handOver(runner, 1, b"raise")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        runner.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        lines = [formatEvent(e) for e in self.events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("1 batch(es) got result 1", lines[1])
        runner.hand(
            pending.PendingBatch(None, [b"%08d" % 0], 14),
            SubmitBatch(submitFrames([0], b"raise"), 1, 1, "127.0.0.1:1", 0.0),
        )
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(self.events), 3)

    def test_stopCancelsTimersLeft(self) -> None:
        """
        A runner stopped with a batch still at the handler (no grace period
        gave up on it) leaves no timer either.
        """
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        handOver(runner, 1)
        runner.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failedDeferredCancelsItsTimer(self) -> None:
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        handler.handle = lambda batch: fail(RuntimeError("no"))  # type: ignore[method-assign]
        entry = handOver(runner, 2)
        self.assertEqual(entry.results, b"\1\1")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lateFailureAfterGiveUpIsIgnored(self) -> None:
        handler = ManualHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        handled: Deferred[Any] = Deferred()
        handler.handle = lambda batch: handled  # type: ignore[method-assign]
        entry = handOver(runner, 2)
        runner.giveUp()
        self.assertEqual(entry.results, b"\2\2")
        # Cancelled without a canceller, it failed with CancelledError,
        # which the runner ignored: no error counted, no unhandled failure.
        self.assertIsNone(self.successResultOf(handled))
        self.assertEqual(self.sample("tcpdemo_handler_errors_total"), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
