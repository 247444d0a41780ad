"""
L{tcpdemo.handlers.ready.ReadyQueue}, and the server calling a handler's
L{IDeliversReady.deliverReady} at the end of every read.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tcpdemo.handlers import IDeliversReady, ISubmitHandler, SubmitBatch
from tcpdemo.handlers.ready import ReadyQueue

from .support import ackFrame, submitFrame, waitUntil
from .test_handlers import HandlerTestCase


class HeldCalls:
    """
    A reactor whose callFromThread keeps the calls for the test to run.
    """

    def __init__(self) -> None:
        self.calls: list[Callable[[], Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.append(lambda: f(*args))

    def runCalls(self) -> None:
        calls, self.calls = self.calls, []
        for call in calls:
            call()


class ReadyQueueTests(SynchronousTestCase):
    def test_oneCallWhileItemsWait(self) -> None:
        """
        Items put before the reactor gets to them share one
        callFromThread, and are delivered in order.
        """
        held = HeldCalls()
        delivered: list[int] = []
        queue: ReadyQueue[int] = ReadyQueue(held, delivered.append)
        for item in range(5):
            queue.put(item)
        self.assertEqual(len(held.calls), 1)
        held.runCalls()
        self.assertEqual(delivered, [0, 1, 2, 3, 4])

    def test_deliverReadyFirst(self) -> None:
        """
        L{ReadyQueue.deliverReady} delivers what waits at once; the call on
        its way then finds nothing, and delivers nothing twice.
        """
        held = HeldCalls()
        delivered: list[int] = []
        queue: ReadyQueue[int] = ReadyQueue(held, delivered.append)
        queue.put(1)
        queue.put(2)
        queue.deliverReady()
        self.assertEqual(delivered, [1, 2])
        queue.put(3)  # the call for 1 is still on its way: no second one
        self.assertEqual(len(held.calls), 1)
        held.runCalls()
        self.assertEqual(delivered, [1, 2, 3])

    def test_putAfterTheCallGetsAnother(self) -> None:
        """
        An item put once the reactor's call has started gets a call of its
        own: nothing waits for a call that will not come.
        """
        held = HeldCalls()
        delivered: list[int] = []

        def deliverAndPutMore(item: int) -> None:
            delivered.append(item)
            if item == 1:
                queue.put(2)  # as a thread would, while the reactor delivers

        queue: ReadyQueue[int] = ReadyQueue(held, deliverAndPutMore)
        queue.put(1)
        held.runCalls()
        self.assertEqual(delivered, [1, 2])
        queue.put(3)
        self.assertEqual(len(held.calls), 1)
        held.runCalls()
        self.assertEqual(delivered, [1, 2, 3])


class ReadyQueueThreadTests(TestCase):
    async def test_fromThreads(self) -> None:
        """
        With the real reactor: what threads put is delivered in the reactor
        thread, every item once.
        """
        delivered: list[tuple[int, int]] = []
        threads: list[threading.Thread] = []
        inReactor: list[bool] = []

        def deliver(item: tuple[int, int]) -> None:
            inReactor.append(threading.current_thread() is threading.main_thread())
            delivered.append(item)

        queue: ReadyQueue[tuple[int, int]] = ReadyQueue(reactor, deliver)

        def work(number: int) -> None:
            for item in range(200):
                queue.put((number, item))

        for number in range(4):
            threads.append(threading.Thread(target=work, args=(number,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        await waitUntil(lambda: len(delivered) == 800)
        self.assertEqual(sorted(delivered), [(n, i) for n in range(4) for i in range(200)])
        for number in range(4):
            self.assertEqual([i for n, i in delivered if n == number], list(range(200)))
        self.assertTrue(all(inReactor))


@implementer(ISubmitHandler, IDeliversReady)
class PolledHandler:
    """
    Answers each batch through a L{ReadyQueue} whose callFromThread never
    runs: only the server's calls of L{deliverReady} deliver.
    """

    def __init__(self) -> None:
        self.held = HeldCalls()
        self.ready: ReadyQueue[tuple[Deferred[Any], int]] = ReadyQueue(
            self.held, lambda item: item[0].callback(bytes(item[1]))
        )
        self.deliverReady = self.ready.deliverReady
        self.batches: list[tuple[SubmitBatch, Deferred[Any]]] = []

    def startHandler(self) -> None:
        pass

    def stopHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.batches.append((batch, d))
        return d

    def makeReady(self) -> None:
        """
        What a worker thread does: results for every batch so far, put.
        """
        batches, self.batches = self.batches, []
        for batch, d in batches:
            self.ready.put((d, batch.count))


class DeliverReadyTests(HandlerTestCase):
    async def test_resultsGoOutAtTheNextRead(self) -> None:
        """
        Results made ready go out at the end of the server's next read, on
        any connection, without waiting for the reactor's thread calls.
        """
        handler = PolledHandler()
        svc = self.startService(handler)
        first = await self.connect(svc)
        second = await self.connect(svc)
        first.send(submitFrame(1))
        await waitUntil(lambda: len(handler.batches) == 1)
        handler.makeReady()
        self.assertEqual(first.data, b"")
        second.send(submitFrame(2))  # a read: the first connection's ack goes
        await waitUntil(lambda: len(first.received) >= 14)
        self.assertEqual(first.data, ackFrame(1))
        self.assertEqual(second.data, b"")
        handler.makeReady()
        first.send(submitFrame(3))
        await waitUntil(lambda: len(second.received) >= 14)
        self.assertEqual(second.data, ackFrame(2))
        self.assertEqual(len(handler.held.calls), 1)  # made, never run
        await waitUntil(lambda: len(handler.batches) == 1)
        handler.makeReady()
        handler.deliverReady()
        await waitUntil(lambda: len(first.received) >= 28)
        self.assertEqual(first.data, ackFrame(1) + ackFrame(3))


class DeliverFailureTests(SynchronousTestCase):
    def test_failureIsLoggedAndTheRestDelivered(self) -> None:
        """
        A C{deliver} that raises is logged; the items after it are still
        delivered, and L{ReadyQueue.deliverReady} (called at the end of some
        connection's read) does not raise into that read.
        """
        events: list[dict[str, Any]] = []
        self.patch(ReadyQueue, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        delivered: list[int] = []

        def deliver(item: int) -> None:
            if item == 2:
                raise ValueError("bug delivering")
            delivered.append(item)

        queue: ReadyQueue[int] = ReadyQueue(HeldCalls(), deliver)
        for item in (1, 2, 3):
            queue.put(item)
        queue.deliverReady()
        self.assertEqual(delivered, [1, 3])
        self.assertEqual(len(events), 1)
        self.assertTrue(events[0]["log_failure"].check(ValueError))
