"""
Handlers for the tests: ones the tests drive by hand (in-process servers)
and ones a child twistd finds as plugins (L{pluginPath}).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from tcpdemo.handlers import (
    HandlerArgumentError,
    IHandlerMaker,
    IHandlesTurns,
    ISubmitHandler,
    Results,
    SubmitBatch,
)


@implementer(ISubmitHandler)
class ManualHandler:
    """
    Keeps every batch with an unfired Deferred, for the test to answer.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[SubmitBatch, Deferred[Any]]] = []
        self.cancelled = 0
        self._answered = 0
        self.started = False
        self.stopped = False

    def startHandler(self) -> None:
        self.started = True

    def handle(self, batch: SubmitBatch) -> Deferred[Any]:
        def cancelled(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancelled)
        self.batches.append((batch, d))
        return d

    def stopHandler(self) -> None:
        self.stopped = True

    @property
    def handed(self) -> int:
        return sum(batch.count for batch, _ in self.batches)

    def answerNew(self) -> None:
        """
        Result 0 for every batch not answered yet, in the order handed.
        """
        for batch, d in self.batches[self._answered :]:
            if not d.called:
                d.callback(bytes(batch.count))
        self._answered = len(self.batches)


@implementer(ISubmitHandler, IHandlesTurns)
class ManualTurnHandler:
    """
    Takes a turn's batches in one call (L{IHandlesTurns}) and keeps them
    with an unfired Deferred, for the test to answer; counts calls of
    L{handle}, which the server should never make.
    """

    def __init__(self) -> None:
        self.turns: list[tuple[list[SubmitBatch], Deferred[Any]]] = []
        self.cancelled = 0
        self.singles = 0
        self.stopped = False

    def startHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Deferred[Any]:
        self.singles += 1
        return self.handleTurn([batch])

    def handleTurn(self, batches: Any) -> Deferred[Any]:
        def cancelled(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancelled)
        self.turns.append((list(batches), d))
        return d

    def stopHandler(self) -> None:
        self.stopped = True

    @property
    def handed(self) -> int:
        return sum(batch.count for batches, _ in self.turns for batch in batches)


@implementer(ISubmitHandler)
class ScriptedHandler:
    """
    Answers at once, as the first payload of each batch says:
    C{raise}, C{fail} (a failed Deferred), C{short} (too few results),
    C{range} (a result of 300), C{str} (a string), C{rN} (result N for every
    Submit); anything else gets each payload's length.
    """

    def __init__(self) -> None:
        self.calls = 0

    def startHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Any:
        from twisted.internet.defer import fail

        self.calls += 1
        payload = batch.payloads[0]
        if payload == b"raise":
            raise ValueError("told to raise")
        if payload == b"fail":
            return fail(RuntimeError("told to fail"))
        if payload == b"short":
            return bytes(batch.count - 1)
        if payload == b"range":
            return [300] * batch.count
        if payload == b"str":
            return "0" * batch.count
        if payload.startswith(b"r"):
            return [int(payload[1:])] * batch.count
        return [len(p) for p in batch.payloads]

    def stopHandler(self) -> None:
        pass


@implementer(ISubmitHandler)
class DelayHandler:
    """
    Answers 0 to every Submit after C{delay} seconds; logs when stopped.
    """

    log = Logger()

    def __init__(self, delay: float, reactor: Any) -> None:
        self.delay = delay
        self.reactor = reactor
        self.batches = 0

    def startHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Any:
        from twisted.internet.task import deferLater

        self.batches += 1
        return deferLater(self.reactor, self.delay, lambda: bytes(batch.count))

    def stopHandler(self) -> Deferred[None]:
        from twisted.internet.task import deferLater

        def stopped() -> None:
            self.log.info("test handler stopped after {n} batches", n=self.batches)

        return deferLater(self.reactor, 0.2, stopped)


@implementer(ISubmitHandler)
class NeverHandler:
    """
    A hung backend: its Deferreds never fire (unless cancelled).  With
    C{hangOnStop}, its stopHandler's Deferred never fires either.
    """

    def __init__(self, hangOnStop: bool = False) -> None:
        self.hangOnStop = hangOnStop

    def startHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Deferred[Results]:
        return Deferred()

    def stopHandler(self) -> Deferred[None] | None:
        return Deferred() if self.hangOnStop else None


@implementer(ISubmitHandler)
class ThreadHangHandler:
    """
    A backend that hangs in Twisted's thread pool (C{deferToThread}), which
    the reactor joins as it shuts down: the exit itself would hang.
    """

    def __init__(self) -> None:
        self.release = threading.Event()

    def startHandler(self) -> None:
        pass

    def handle(self, batch: SubmitBatch) -> Deferred[Results]:
        from twisted.internet.threads import deferToThread

        return deferToThread(self.release.wait, 3600.0).addCallback(lambda _: bytes(batch.count))

    def stopHandler(self) -> None:
        pass


@implementer(ISubmitHandler)
class FailingStartHandler:
    def startHandler(self) -> None:
        raise RuntimeError("the backend is unreachable")

    def handle(self, batch: SubmitBatch) -> bytes:
        return bytes(batch.count)

    def stopHandler(self) -> None:
        pass


@implementer(IPlugin, IHandlerMaker)
class TestMaker:
    """
    C{test-delay:SECONDS}, C{test-never}, C{test-hang} (C{test-never}
    whose stopHandler never ends either), C{test-threadhang} (hangs in
    Twisted's thread pool), C{test-failstart}.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"A handler for tcpdemo's tests ({name})."

    def makeHandler(self, argument: str | None, reactor: Any) -> ISubmitHandler:
        if self.name == "test-delay":
            try:
                return DelayHandler(float(argument or ""), reactor)
            except ValueError:
                raise HandlerArgumentError("test-delay needs SECONDS") from None
        if self.name == "test-never":
            return NeverHandler()
        if self.name == "test-hang":
            return NeverHandler(hangOnStop=True)
        if self.name == "test-threadhang":
            return ThreadHangHandler()
        return FailingStartHandler()


PLUGIN_SOURCE = """\
from tests.handlerkit import TestMaker

delay = TestMaker("test-delay")
never = TestMaker("test-never")
hang = TestMaker("test-hang")
threadhang = TestMaker("test-threadhang")
failstart = TestMaker("test-failstart")
"""


def pluginPath(directory: str) -> str:
    """
    Write a plugin module offering the test makers under C{directory};
    return the directory, to put on a child's C{PYTHONPATH}.
    """
    plugins = os.path.join(directory, "twisted", "plugins")
    os.makedirs(plugins, exist_ok=True)
    with open(os.path.join(plugins, "tcpdemo_test_handlers.py"), "w") as f:
        f.write(PLUGIN_SOURCE)
    return directory
