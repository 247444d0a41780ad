"""
The handler path (tcpdemo/pending.py) over real TCP on loopback, with the
server in this process so that the tests hold the handler's Deferreds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpdemo import pending, tap
from tcpdemo import protocol as server
from tcpdemo.frame import frame
from tcpdemo.handlers import ISubmitHandler
from tcpdemo.handlers.ack import AckHandler
from tcpdemo.packet import Conn, ConnAck, encode

from .handlerkit import ManualHandler, ManualTurnHandler, ScriptedHandler
from .support import (
    Collector,
    ackFrame,
    ackFrames,
    connectTo,
    sleep,
    submitFrame,
    submitFrames,
    waitUntil,
)


async def answerEveryBatch(
    handler: ManualHandler, done: Callable[[], bool], pause: float = 0.005, timeout: float = 60.0
) -> None:
    """
    Answer (result 0) every batch C{handler} is handed, as they come, until
    C{done()}; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after answering every batch for {timeout}s")
        handler.answerNew()
        await sleep(pause)


class HandlerTestCase(TestCase):
    def startService(self, handler: ISubmitHandler, *args: str) -> tap.TcpDemoService:
        options = tap.Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--metrics", "none", *args])
        svc = tap.makeService(options, reactor, CollectorRegistry(), handler=handler)
        assert isinstance(svc, tap.TcpDemoService)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(lambda: svc.running and svc.stopService())
        self.events: list[dict[str, Any]] = []
        self.patch(pending.HandlerRunner, "log", Logger(observer=self.events.append))  # type: ignore[arg-type]
        return svc

    async def connect(self, svc: tap.TcpDemoService) -> Collector:
        client = await connectTo(svc)
        self.addCleanup(lambda: client.transport and client.transport.loseConnection())  # type: ignore[func-returns-value]
        return client

    def sample(self, svc: tap.TcpDemoService, name: str, **labels: str) -> float:
        svc.factory.tally.flush()
        value = svc.factory.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]


class OrderTests(HandlerTestCase):
    async def test_reverseCompletion(self) -> None:
        """
        Batches answered last-first still ack in Submit order, a ConnAck in
        its place among them, each Submit with its batch's result.
        """
        handler = ManualHandler()
        svc = self.startService(handler)
        self.assertIsInstance(svc.factory, pending.HandlerServerFactory)
        self.assertTrue(handler.started)
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 11), b"x"))
        await waitUntil(lambda: len(handler.batches) == 1)
        client.send(frame(encode(Conn(b"anything"))) + submitFrames(range(11, 31), b"x"))
        await waitUntil(lambda: handler.handed == 30)
        client.send(submitFrames(range(31, 36), b"x"))
        await waitUntil(lambda: handler.handed == 35)
        batches = handler.batches
        self.assertEqual(batches[0][0].ids, [b"%08d" % i for i in range(1, 11)])
        self.assertEqual(batches[0][0].frames, submitFrames(range(1, 11), b"x"))
        self.assertEqual(batches[0][0].peer.split(":")[0], "127.0.0.1")
        # Results 3, 4, ... by batch: answered in reverse order.
        for index in reversed(range(1, len(batches))):
            batch, d = batches[index]
            d.callback([3 + index] * batch.count)
        await sleep(0.1)
        self.assertEqual(client.data, b"", "acks overtook the first batch's")
        batches[0][1].callback(bytes(10))
        expected = ackFrames(range(1, 11)) + frame(encode(ConnAck(0)))
        number = 11
        for index, (batch, _) in enumerate(batches[1:], 1):
            expected += ackFrames(range(number, number + batch.count), 3 + index)
            number += batch.count
        await waitUntil(lambda: len(client.data) >= len(expected))
        self.assertEqual(client.data, expected)
        self.assertEqual(self.sample(svc, "tcpdemo_acks_total", result="0"), 10)
        self.assertEqual(self.sample(svc, "tcpdemo_req_recv_total"), 35)
        self.assertEqual(self.sample(svc, "tcpdemo_rsp_send_total"), 35)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_batch_seconds_count"), len(batches))

    async def test_halfClose(self) -> None:
        """
        A client that shuts down its sending side after its Submits gets
        every ack once the handler answers, then the close.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--idle-timeout", "0.5")
        client = await self.connect(svc)
        for first in (1, 41, 81):
            client.send(submitFrames(range(first, first + 40), b"x"))
            await waitUntil(lambda first=first: handler.handed == first + 39)  # type: ignore[misc]
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        # Longer than --idle-timeout in all: acks going out keep it open.
        for index, (batch, d) in enumerate(handler.batches):
            await sleep(0.35)
            d.callback([index + 3] * batch.count)
        expected = b""
        number = 1
        for index, (batch, _) in enumerate(handler.batches):
            expected += ackFrames(range(number, number + batch.count), index + 3)
            number += batch.count
        self.assertEqual(await client.closed, expected)

    async def test_slowBatchIsNotIdle(self) -> None:
        """
        A batch at the handler for longer than --idle-timeout does not get
        its connection closed: its acks are owed, the client is waiting.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--idle-timeout", "0.3")
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 11), b"x"))
        await waitUntil(lambda: handler.handed == 10)
        await sleep(0.8)
        self.assertFalse(client.closed.called, "closed while acks were owed")
        for batch, d in handler.batches:
            d.callback([4] * batch.count)
        await waitUntil(lambda: len(client.received) >= 10 * 14)
        self.assertEqual(client.data, ackFrames(range(1, 11), 4))
        # Idle once nothing is owed: closed as before.
        self.assertEqual(await client.closed, ackFrames(range(1, 11), 4))
        self.assertEqual(self.sample(svc, "tcpdemo_idle_timeouts_total"), 1)

    async def test_ackHandlerOnHandlerPath(self) -> None:
        """
        The ack handler through the handler path answers exactly as the fast
        path does, for a large pipelined load of varied sizes.
        """
        svc = self.startService(ManualHandler())  # the handler path...
        assert isinstance(svc.factory, pending.HandlerServerFactory)
        svc.factory.runner.handler = AckHandler()  # ...with the ack handler
        client = await self.connect(svc)
        count = 20000
        data = b"".join(submitFrame(i, b"p" * (i % 37)) for i in range(count))
        client.send(data)
        await waitUntil(lambda: len(client.data) >= 14 * count, timeout=30)
        self.assertEqual(client.data, ackFrames(range(count)))

    def test_ackIsTheFastPath(self) -> None:
        options = tap.Options()
        options.parseOptions(["--metrics", "none"])
        factory = tap.buildFactory(options, reactor, CollectorRegistry())
        self.assertIs(type(factory), server.TcpDemoServerFactory)


class ErrorTests(HandlerTestCase):
    async def test_errorsGiveOneAndKeepTheConnection(self) -> None:
        """
        A raise, a failed Deferred, too few results, a result out of range
        or results of the wrong type: result 1 for the batch, counted,
        logged once (rate-limited); the connection stays open.
        """
        handler = ScriptedHandler()
        svc = self.startService(handler)
        client = await self.connect(svc)
        expected = b""
        for number, payload in enumerate([b"raise", b"fail", b"short", b"range", b"str"], 1):
            client.send(submitFrames([number], payload))
            expected += ackFrame(number, 1)
            size = len(expected)
            await waitUntil(lambda size=size: len(client.received) >= size)  # type: ignore[misc]
        client.send(submitFrames([6], b"r7") + submitFrames([7], b"r7"))
        expected += ackFrames([6, 7], 7)
        await waitUntil(lambda: len(client.data) >= len(expected))
        self.assertEqual(client.data, expected)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_errors_total"), 5)
        self.assertEqual(self.sample(svc, "tcpdemo_acks_total", result="1"), 5)
        self.assertEqual(self.sample(svc, "tcpdemo_acks_total", result="7"), 2)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("told to raise", warnings[0])

    async def test_leftOutProblemsAreCounted(self) -> None:
        svc = self.startService(ScriptedHandler())
        assert isinstance(svc.factory, pending.HandlerServerFactory)
        svc.factory.runner.problemLogInterval = 0.3
        client = await self.connect(svc)
        for number in range(1, 4):
            client.send(submitFrames([number], b"raise"))
            await waitUntil(lambda number=number: len(client.received) >= 14 * number)  # type: ignore[misc]
        await waitUntil(lambda: len(self.warnings()) == 2, timeout=5)
        self.assertIn("1 batch(es) got result 1", self.warnings()[0])
        self.assertIn("2 batch(es) got result 1", self.warnings()[1])


class TimeoutTests(HandlerTestCase):
    async def test_timeoutGivesTwoAndLateResultsAreIgnored(self) -> None:
        handler = ManualHandler()
        svc = self.startService(handler, "--handler-timeout", "0.2")
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 6), b"x"))
        await waitUntil(lambda: len(client.data) >= 5 * 14)
        self.assertEqual(client.data, ackFrames(range(1, 6), 2))
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_timeouts_total"), 1)
        self.assertEqual(self.sample(svc, "tcpdemo_acks_total", result="2"), 5)
        # The connection still works, and answers in order.
        client.send(submitFrames(range(6, 8), b"x"))
        await waitUntil(lambda: len(handler.batches) == 2)
        handler.batches[1][1].callback(bytes(2))
        await waitUntil(lambda: len(client.data) >= 7 * 14)
        self.assertEqual(client.data, ackFrames(range(1, 6), 2) + ackFrames(range(6, 8)))
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)


class BoundTests(HandlerTestCase):
    async def test_perConnection(self) -> None:
        """
        Past --max-pending the connection stops reading (the bytes stay in
        the kernel's buffers); answering resumes it; nothing is dropped.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--max-pending", "100")
        client = await self.connect(svc)
        count = 400_000  # 8.8 MB: more than loopback's socket buffers hold
        data = submitFrames(range(count), b"x")
        client.send(data)
        await waitUntil(lambda: handler.handed > 0)
        await sleep(0.5)
        held = handler.handed
        self.assertLess(held, 10_000)
        self.assertLessEqual(self.sample(svc, "tcpdemo_handler_pending"), held)
        received = self.sample(svc, "tcpdemo_bytes_received_total")
        self.assertLess(received, len(data) // 2)
        await sleep(0.3)
        self.assertEqual(handler.handed, held, "reading did not stop")
        self.assertEqual(self.sample(svc, "tcpdemo_bytes_received_total"), received)
        await answerEveryBatch(handler, lambda: len(client.received) >= 14 * count, 0.001)
        self.assertEqual(client.data, ackFrames(range(count)))
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)

    async def test_connAcksBehindABatchAreBounded(self) -> None:
        """
        ConnAcks owed behind a batch still at the handler are bounded too
        (by --write-buffer-limit): a Conn flood stops being read, and every
        ack arrives in order once the handler answers.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--write-buffer-limit", "65536")
        client = await self.connect(svc)
        client.send(submitFrames([1], b"x"))
        await waitUntil(lambda: handler.handed == 1)
        count = 200_000  # 1 MB: read at ~250 kB/s (256 Conns a turn) unbounded
        client.send(frame(encode(Conn(b""))) * count)
        await sleep(1.0)
        received = self.sample(svc, "tcpdemo_bytes_received_total")
        await sleep(0.5)
        self.assertEqual(
            self.sample(svc, "tcpdemo_bytes_received_total"), received, "reading did not stop"
        )
        self.assertLess(received, 400_000)
        handler.batches[0][1].callback(b"\x07")
        connAck = frame(encode(ConnAck(0)))
        expected = ackFrames([1], 7) + connAck * count
        await waitUntil(lambda: len(client.received) >= len(expected), timeout=60)
        self.assertEqual(client.data, expected)

    async def test_perProcess(self) -> None:
        """
        Past --max-pending-total every connection that reads stops.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--max-pending", "1000000", "--max-pending-total", "50")
        first = await self.connect(svc)
        second = await self.connect(svc)
        count = 200_000
        data = submitFrames(range(count), b"x")
        first.send(data)
        second.send(data)
        await waitUntil(lambda: {b.connection for b, _ in handler.batches} == {1, 2})
        await sleep(0.3)
        held = handler.handed
        await sleep(0.3)
        self.assertEqual(handler.handed, held, "reading did not stop")
        self.assertLess(held, 20_000)
        self.assertLess(self.sample(svc, "tcpdemo_bytes_received_total"), len(data))
        await answerEveryBatch(
            handler,
            lambda: len(first.received) >= 14 * count and len(second.received) >= 14 * count,
        )
        self.assertEqual(first.data, ackFrames(range(count)))
        self.assertEqual(second.data, ackFrames(range(count)))

    async def test_perProcessBytes(self) -> None:
        """
        Past --max-pending-bytes every connection that reads stops, however
        few Submits that is: large payloads are bounded by their bytes, not
        their count; nothing is dropped.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--max-pending-bytes", "100000")
        client = await self.connect(svc)
        count = 400  # 400 x 50 KiB: 20 MB, far past the bound and the socket buffers
        data = submitFrames(range(count), b"x" * 50_000)
        client.send(data)
        await waitUntil(lambda: handler.handed > 0)
        await sleep(0.3)
        held = handler.handed
        await sleep(0.3)
        self.assertEqual(handler.handed, held, "reading did not stop")
        # The bound is checked after each read: one 64 KiB read past it.
        self.assertLess(held, (100_000 + 65536) // 50_000 + 2)
        self.assertLess(self.sample(svc, "tcpdemo_bytes_received_total"), len(data) // 2)
        await answerEveryBatch(handler, lambda: len(client.received) >= 14 * count)
        self.assertEqual(client.data, ackFrames(range(count)))
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)


class ShutdownTests(HandlerTestCase):
    async def test_stopWaitsForHandlerWork(self) -> None:
        """
        Stopping answers what the handler still holds before closing, then
        stops the handler.
        """
        handler = ManualHandler()
        svc = self.startService(handler)
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 101), b"x"))
        await waitUntil(lambda: handler.handed == 100)
        stopped = defer.ensureDeferred(svc.stopService())

        def answer() -> None:
            for batch, d in handler.batches:
                d.callback([5] * batch.count)

        reactor.callLater(0.3, answer)
        self.assertFalse(handler.stopped)
        self.assertEqual(await client.closed, ackFrames(range(1, 101), 5))
        await stopped
        self.assertTrue(handler.stopped)
        self.assertTrue(svc.drainedCleanly)

    def serviceEvents(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(tap.TcpDemoService, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        return events

    def runnerCalls(self, svc: tap.TcpDemoService) -> list[Any]:
        """
        The reactor's delayed calls that belong to the handler runner.
        """
        runner = svc.handlerRunner
        assert runner is not None
        mine = (runner._timeOut, runner._logLater)
        calls: Sequence[Any] = reactor.getDelayedCalls()  # DelayedCalls, with .func
        return [call for call in calls if call.func in mine]

    def leftoverCalls(self) -> list[Any]:
        """
        The reactor's delayed calls but trial's own timeout for the test.
        """
        calls: Sequence[Any] = reactor.getDelayedCalls()  # DelayedCalls, with .func
        return [
            call
            for call in calls
            if not getattr(call.func, "__qualname__", "").startswith("TestCase._run")
        ]

    async def test_gracePeriodEnds(self) -> None:
        """
        Batches still at the handler when the grace period ends get result
        2 (counted as timeouts), the connection is closed, the handler is
        stopped, one line says what was abandoned, and none of the runner's
        timers (the 30 s --handler-timeout's) outlive the stop.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--grace-period", "0.3")
        events = self.serviceEvents()
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 11), b"x"))
        await waitUntil(lambda: handler.handed == 10)
        self.assertEqual(len(self.runnerCalls(svc)), 1)
        await svc.stopService()
        self.assertEqual(await client.closed, ackFrames(range(1, 11), 2))
        self.assertFalse(svc.drainedCleanly)
        self.assertTrue(handler.stopped)
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(self.leftoverCalls(), [])
        self.assertEqual(self.sample(svc, "tcpdemo_handler_timeouts_total"), 1)
        self.assertEqual(self.sample(svc, "tcpdemo_acks_total", result="2"), 10)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(
            lines,
            [
                "stopped hard: the grace period of 0.3s ran out; abandoned: 1 batch(es) of "
                "10 Submit(s) at the handler (acked with result 2); 1 connection(s) closed hard"
            ],
        )

    async def test_gracePeriodEndsWithoutATimeout(self) -> None:
        """
        With --handler-timeout 0 (no limit) too, the grace period ends the
        wait: result 2 for the batch, and no timer was ever made.
        """
        handler = ManualHandler()
        svc = self.startService(handler, "--grace-period", "0.3", "--handler-timeout", "0")
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 11), b"x"))
        await waitUntil(lambda: handler.handed == 10)
        self.assertEqual(self.runnerCalls(svc), [])
        await svc.stopService()
        self.assertEqual(await client.closed, ackFrames(range(1, 11), 2))
        self.assertFalse(svc.drainedCleanly)
        self.assertTrue(handler.stopped)

    async def test_stopHandlerThatHangs(self) -> None:
        """
        A stopHandler whose Deferred never fires is abandoned when the grace
        period ends: the stop finishes, not cleanly, saying so in one line;
        every ack had gone out before.
        """
        handler = ManualHandler()
        handler.stopHandler = lambda: defer.Deferred()  # type: ignore[method-assign,assignment]
        svc = self.startService(handler, "--grace-period", "0.5")
        events = self.serviceEvents()
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 6), b"x"))
        await waitUntil(lambda: handler.handed == 5)
        handler.batches[0][1].callback(bytes(5))
        await waitUntil(lambda: len(client.received) >= 5 * 14)
        started = reactor.seconds()
        await svc.stopService()
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 2.0)
        self.assertEqual(await client.closed, ackFrames(range(1, 6)))
        self.assertFalse(svc.drainedCleanly)
        self.assertEqual(self.leftoverCalls(), [])
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "stopped hard: the grace period of 0.5s ran out; abandoned: the stopHandler "
                "of --handler ack"
            ],
        )

    async def test_stopHandlerFailing(self) -> None:
        """
        A stopHandler that fails in time: logged, the stop is not clean,
        and nothing is said to be abandoned.
        """
        handler = ManualHandler()
        handler.stopHandler = lambda: defer.fail(RuntimeError("close failed"))  # type: ignore[method-assign,assignment]
        svc = self.startService(handler, "--grace-period", "5")
        events = self.serviceEvents()
        await svc.stopService()
        self.assertFalse(svc.drainedCleanly)
        failures = [e["log_failure"] for e in events if "log_failure" in e]
        self.assertEqual([f.getErrorMessage() for f in failures], ["close failed"])
        self.assertEqual([e for e in events if e["log_level"].name == "warn"], [])

    async def test_noExitWatchdogWhileTheReactorRuns(self) -> None:
        """
        The exit watchdog is armed by the reactor's shutdown only: a service
        stopped in a process that runs on removes its trigger, arming
        nothing.
        """
        armed: list[float] = []
        self.patch(tap, "armExitWatchdog", armed.append)
        svc = self.startService(ManualHandler(), "--grace-period", "0.2")
        trigger = svc._exitWatch
        self.assertIsNotNone(trigger)
        await svc.stopService()
        self.assertIsNone(svc._exitWatch)
        self.assertEqual(armed, [])
        # Removed from the reactor: removing it again is an error.
        self.assertRaises(ValueError, reactor.removeSystemEventTrigger, trigger)


class TurnTests(HandlerTestCase):
    async def test_turnsOverTcp(self) -> None:
        """
        An L{IHandlesTurns} handler gets each turn's batches of every
        connection in one call; each connection gets its own Submits'
        results, in order, whatever turns they came in.
        """
        handler = ManualTurnHandler()
        svc = self.startService(handler)
        clients = [await self.connect(svc) for _ in range(3)]
        for round in range(3):
            # Each round a read of its own per connection, in a turn of its own.
            for index, client in enumerate(clients):
                first = 100 * index + 10 * round
                client.send(submitFrames(range(first, first + 1 + index), b"x"))
            handed = (round + 1) * (1 + 2 + 3)
            await waitUntil(lambda handed=handed: handler.handed == handed)  # type: ignore[misc]
        self.assertEqual(handler.singles, 0)
        # Each Submit's result: the last two digits of its id.
        for batches, d in handler.turns:
            d.callback(bytes(int(i) % 100 for batch in batches for i in batch.ids))
        for index, client in enumerate(clients):
            expected = b"".join(
                ackFrame(number, number % 100)
                for round in range(3)
                for number in range(100 * index + 10 * round, 100 * index + 10 * round + 1 + index)
            )
            await waitUntil(lambda c=client, e=expected: len(c.data) >= len(e))  # type: ignore[misc]
            self.assertEqual(client.data, expected)
        self.assertEqual(self.sample(svc, "tcpdemo_handler_pending"), 0)
        # Turns held several connections' batches: fewer calls than batches.
        self.assertLess(len(handler.turns), sum(len(b) for b, _ in handler.turns))
        self.assertGreaterEqual(len(handler.turns), 3)  # one a round at least
        self.assertEqual(
            self.sample(svc, "tcpdemo_handler_batch_seconds_count"),
            sum(len(batches) for batches, _ in handler.turns),
        )


class SlowStartTests(HandlerTestCase):
    async def test_listensOnceStarted(self) -> None:
        """
        A startHandler whose Deferred fires later: nothing listens until it
        has fired, then the server serves.
        """
        handler = ScriptedHandler()
        started: defer.Deferred[None] = defer.Deferred()
        handler.startHandler = lambda: started  # type: ignore[method-assign,assignment]
        svc = self.startService(handler)
        self.assertIsNone(svc.server.port)
        await sleep(0.1)
        self.assertIsNone(svc.server.port)
        started.callback(None)
        self.assertIsNotNone(svc.server.port)
        client = await self.connect(svc)
        client.send(submitFrames([1], b"r9"))
        await waitUntil(lambda: len(client.received) >= 14)
        self.assertEqual(client.data, ackFrame(1, 9))

    async def test_failsLater(self) -> None:
        handler = ScriptedHandler()
        started: defer.Deferred[None] = defer.Deferred()
        handler.startHandler = lambda: started  # type: ignore[method-assign,assignment]
        svc = self.startService(handler)
        events: list[dict[str, Any]] = []
        self.patch(tap.TcpDemoService, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        stops: list[bool] = []
        self.patch(svc, "reactor", type("R", (), {"stop": lambda self: stops.append(True)})())
        started.errback(RuntimeError("no backend"))
        self.assertIsNone(svc.server.port)
        self.assertTrue(svc.startFailed)
        self.assertEqual(stops, [True])
        self.assertEqual(
            [formatEvent(e) for e in events if e["log_level"].name == "error"],
            ["tcpdemo: --handler ack failed to start: RuntimeError: no backend"],
        )


class StartTests(SynchronousTestCase):
    def test_failedStartIsOneLine(self) -> None:
        from .handlerkit import FailingStartHandler

        options = tap.Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--metrics", "none"])
        svc = tap.makeService(options, reactor, CollectorRegistry(), handler=FailingStartHandler())
        error = self.assertRaises(SystemExit, svc.privilegedStartService)
        self.assertEqual(
            str(error),
            "tcpdemo: --handler ack failed to start: RuntimeError: the backend is unreachable",
        )
        assert isinstance(svc, tap.TcpDemoService)
        self.assertIsNone(svc.server.port)

    def test_options(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["handler"], "ack")
        self.assertEqual(options["handler-timeout"], pending.DEFAULT_HANDLER_TIMEOUT)
        self.assertEqual(options["max-pending"], pending.DEFAULT_MAX_PENDING)
        self.assertEqual(options["max-pending-total"], pending.DEFAULT_MAX_PENDING_TOTAL)
        from twisted.python.usage import UsageError

        error = self.assertRaises(UsageError, options.parseOptions, ["--handler", "nosuch"])
        self.assertIn("no handler named 'nosuch'", str(error))
        self.assertIn("ack", str(error))
        self.assertIn("sqlite", str(error))
        error = self.assertRaises(
            UsageError, tap.Options().parseOptions, ["--handler", "sqlite:x", "--workers", "2"]
        )
        self.assertIn("--workers 1", str(error))
        self.assertRaises(UsageError, tap.Options().parseOptions, ["--max-pending", "0"])
        self.assertRaises(UsageError, tap.Options().parseOptions, ["--handler-timeout", "-1"])

    def test_badArgument(self) -> None:
        options = tap.Options()
        options.parseOptions(["--handler", "ack:surplus"])
        error = self.assertRaises(SystemExit, tap.makeHandler, options, reactor)
        self.assertEqual(
            str(error),
            "tcpdemo: --handler ack:surplus: the ack handler takes no argument, not 'surplus'",
        )


class EncodeTests(SynchronousTestCase):
    def test_encodeAcks(self) -> None:
        ids = [b"%08d" % i for i in range(3)]
        self.assertEqual(pending.encodeAcks(ids, bytes(3)), ackFrames(range(3)))
        self.assertEqual(
            pending.encodeAcks(ids, bytes([0, 9, 255])),
            ackFrame(0, 0) + ackFrame(1, 9) + ackFrame(2, 255),
        )

    def test_checkResults(self) -> None:
        self.assertEqual(pending.checkResults([1, 2], 2), b"\1\2")
        self.assertEqual(pending.checkResults(bytearray(2), 2), b"\0\0")
        for bad in ([1], [256, 0], [-1, 0], 2, None, "ab", [1.5, 2], object()):
            self.assertRaises(pending.BadResults, pending.checkResults, bad, 2)
