"""
L{tcpdemo.pending.HandlerRunner} on a fake clock: every delayed call it
makes (a batch's --handler-timeout, the rate-limited problem log line) is
gone once its batch is answered, once the grace period gives up, and once
the runner is stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import pending
from tcpdemo.handlers import SubmitBatch
from tcpdemo.metrics import ServerMetrics

from .handlerkit import ManualHandler, ManualTurnHandler, ScriptedHandler
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


class RunnerCase(SynchronousTestCase):
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


class RunnerTimerTests(RunnerCase):
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


class TurnTests(RunnerCase):
    """
    An L{IHandlesTurns} handler gets the batches of a reactor turn in one
    call at its end, and the runner shares its answer out.
    """

    def test_oneCallPerTurn(self) -> None:
        """
        Batches handed in one turn go to C{handleTurn} together at its end,
        in order; each gets its own slice of the results; no timer is left.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        entries = [handOver(runner, count) for count in (1, 2, 3)]
        self.assertEqual(handler.turns, [])
        clock.advance(0)
        self.assertEqual(len(handler.turns), 1)
        batches, d = handler.turns[0]
        self.assertEqual([batch.count for batch in batches], [1, 2, 3])
        self.assertEqual(handler.singles, 0)
        d.callback(bytes([1, 2, 3, 4, 5, 6]))
        self.assertEqual([entry.results for entry in entries], [b"\1", b"\2\3", b"\4\5\6"])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual((runner.outstanding, runner.waiting, runner.waitingBytes), (0, 0, 0))
        runner.tally.flush()
        self.assertEqual(self.sample("tcpdemo_handler_batch_seconds_count"), 3)
        # The next turn is a call of its own.
        handOver(runner, 1)
        clock.advance(0)
        self.assertEqual(len(handler.turns), 2)

    def test_answeredAtOnce(self) -> None:
        handler = ManualTurnHandler()
        handler.handleTurn = lambda batches: bytes(  # type: ignore[method-assign,assignment,return-value]
            sum(b.count for b in batches)
        )
        runner, clock = self.runner(handler, timeout=30.0)
        first, second = handOver(runner, 2), handOver(runner, 1)
        clock.advance(0)
        self.assertEqual((first.results, second.results), (b"\0\0", b"\0"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failureGivesEveryBatchOne(self) -> None:
        """
        A turn that fails, raises, or answers the wrong number of results:
        result 1 for every batch of it, each counted as a handler error.
        """
        for answer in ("fail", "raise", "short"):
            handler = ManualTurnHandler()
            if answer == "raise":

                def raising(batches: Any) -> Any:
                    raise ValueError("told to raise")

                handler.handleTurn = raising  # type: ignore[method-assign]
            runner, clock = self.runner(handler, timeout=30.0)
            entries = [handOver(runner, 2), handOver(runner, 1)]
            clock.advance(0)
            if answer == "fail":
                handler.turns[0][1].errback(RuntimeError("told to fail"))
            elif answer == "short":
                handler.turns[0][1].callback(bytes(2))
            self.assertEqual([entry.results for entry in entries], [b"\1\1", b"\1"], answer)
            self.assertEqual(self.sample("tcpdemo_handler_errors_total"), 2, answer)
            self.assertEqual(runner.outstanding, 0, answer)
            runner.stop()
            self.assertEqual(clock.getDelayedCalls(), [], answer)

    def test_timeoutGivesEveryBatchTwo(self) -> None:
        """
        A turn past --handler-timeout: result 2 for every batch (not 1 from
        the cancellation that follows), its Deferred cancelled once, after
        the last of its batches; late results are ignored.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=0.5)
        entries = [handOver(runner, 2), handOver(runner, 1)]
        clock.advance(0)
        clock.advance(0.5)
        self.assertEqual([entry.results for entry in entries], [b"\2\2", b"\2"])
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(self.sample("tcpdemo_handler_timeouts_total"), 2)
        self.assertEqual(self.sample("tcpdemo_handler_errors_total"), 0)
        # Only the rate-limited log line of the second timeout is due.
        calls: Sequence[Any] = clock.getDelayedCalls()  # DelayedCalls, with .func
        self.assertEqual([call.func for call in calls], [runner._logLater])
        self.assertEqual((runner.outstanding, runner.waiting), (0, 0))

    def test_turnsTimeOutAtTheirOwnDeadlines(self) -> None:
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=1.0)
        early = handOver(runner, 1)
        clock.advance(0)
        clock.advance(0.6)
        late = handOver(runner, 1)
        clock.advance(0)
        clock.advance(0.4)
        self.assertEqual((early.results, late.finished), (b"\2", False))
        self.assertEqual(handler.cancelled, 1)
        handler.turns[1][1].callback(b"\7")
        self.assertEqual(late.results, b"\7")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_giveUpBeforeTheTurnEnds(self) -> None:
        """
        Batches waiting for the end of the turn when the grace period ends
        get result 2 with the rest; the handler never sees them.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        entries = [handOver(runner, 2), handOver(runner, 1)]
        idle = runner.whenIdle()
        self.assertEqual(runner.giveUp(), (2, 3))
        self.assertEqual([entry.results for entry in entries], [b"\2\2", b"\2"])
        self.assertIsNone(self.successResultOf(idle))
        clock.advance(0)
        self.assertEqual(handler.turns, [])
        self.assertEqual(runner.stop(), (0, 0))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.events, [])  # giving up logged nothing, nor did stop

    def test_stopCancelsTheTurnCall(self) -> None:
        """
        A stop with batches still waiting for the end of the turn (no
        graceful wait, no giveUp before it): they get result 2, counted and
        logged, the handler never sees them and no call is left.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=None)
        entry = handOver(runner, 2)
        self.assertEqual(runner.stop(), (1, 2))
        self.assertEqual(entry.results, b"\2\2")
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(0)
        self.assertEqual(handler.turns, [])
        self.assertEqual((runner.outstanding, runner.waiting, runner.waitingBytes), (0, 0, 0))
        self.assertEqual(self.sample("tcpdemo_handler_timeouts_total"), 1)
        self.assertEqual(len(self.events), 1)

    def test_stopAnswersBatchesAtTheHandler(self) -> None:
        """
        The same for batches whose turn the handler holds: result 2, its
        Deferred cancelled.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=30.0)
        entries = [handOver(runner, 1), handOver(runner, 2)]
        clock.advance(0)
        self.assertEqual(len(handler.turns), 1)
        self.assertEqual(runner.stop(), (2, 3))
        self.assertEqual([entry.results for entry in entries], [b"\2", b"\2\2"])
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(self.sample("tcpdemo_handler_timeouts_total"), 2)
        self.assertEqual(len(self.events), 1)
        self.assertIn("2 batch(es) of 3 Submit(s)", formatEvent(self.events[0]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_answerAfterSomeBatchesTimedOut(self) -> None:
        """
        A turn's batches were read at different times, so they time out at
        different deadlines: the answer that comes after the first timed
        out goes to the others, each its own slice, and the first keeps its
        2; the handler's Deferred is not cancelled while batches wait on it.
        """
        handler = ManualTurnHandler()
        runner, clock = self.runner(handler, timeout=1.0)
        first = handOver(runner, 2)
        clock.rightNow += 0.6  # later in the same (long) turn: no call runs
        second, third = handOver(runner, 1), handOver(runner, 2)
        clock.advance(0)
        self.assertEqual(len(handler.turns), 1)
        clock.advance(0.4)  # first's deadline
        self.assertEqual((first.results, second.finished), (b"\2\2", False))
        self.assertEqual(handler.cancelled, 0)
        handler.turns[0][1].callback(bytes([7, 7, 8, 9, 9]))
        self.assertEqual((second.results, third.results), (b"\x08", b"\x09\x09"))
        self.assertEqual(first.results, b"\2\2")
        self.assertEqual((runner.outstanding, runner.waiting, runner.waitingBytes), (0, 0, 0))
