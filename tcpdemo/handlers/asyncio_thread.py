"""
An asyncio event loop in its own thread, driven from the Twisted reactor.

Why a thread and not Twisted's asyncio reactor: twistd installs its default
reactor (epoll) before any handler exists, and the server's fast paths are
measured on it; a handler must not force C{--reactor asyncio} on everyone.
A library written for asyncio (nats-py) therefore gets a private loop in one
daemon thread, and the two sides meet only at two thread-safe doors:
L{AsyncioThread.run} hands a coroutine over with
C{asyncio.run_coroutine_threadsafe}, and its result comes back to the reactor
thread with C{reactor.callFromThread} as a Deferred.  Nothing else is shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


class AsyncioThread:
    """
    One asyncio loop running forever in one daemon thread, until L{stop}.
    """

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self.loop is not None

    def start(self) -> None:
        """
        Start the thread and wait (briefly) until its loop runs.
        """
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def runLoop() -> None:
            # Python 3.9's asyncio objects bind to the thread's loop when
            # built: nats-py builds some outside coroutines.
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                # Whatever the library left running (readers, pingers) ends
                # here, cancelled, rather than as "Task was destroyed".
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self.loop = loop
        self._thread = threading.Thread(target=runLoop, name=self._name, daemon=True)
        self._thread.start()
        ready.wait(10)

    def run(self, coroutine: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Deferred[T]:
        """
        Run C{coroutine(*args)} on the loop; its result, in the reactor
        thread.  Cancelling the Deferred cancels the coroutine's task.
        """
        loop = self.loop
        assert loop is not None, "AsyncioThread.run before start"
        future = asyncio.run_coroutine_threadsafe(coroutine(*args), loop)

        def cancel(d: Deferred[T]) -> None:
            future.cancel()

        d: Deferred[T] = Deferred(cancel)
        callFromThread = self._reactor.callFromThread

        def done(future: concurrent.futures.Future[T]) -> None:
            callFromThread(_deliver, d, future)

        future.add_done_callback(done)
        return d

    def runBlocking(
        self, timeout: float, coroutine: Callable[..., Coroutine[Any, Any, T]], *args: Any
    ) -> T:
        """
        Run C{coroutine(*args)} on the loop and wait for its result here,
        blocking the calling thread: for start-up, which may come before the
        reactor runs (when L{run}'s Deferred could not fire yet).
        """
        loop = self.loop
        assert loop is not None, "AsyncioThread.runBlocking before start"
        future = asyncio.run_coroutine_threadsafe(coroutine(*args), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stopNow(self) -> None:
        """
        Stop the loop and join the thread, blocking (briefly) the caller.
        """
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        self.loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def stop(self) -> Deferred[None]:
        """
        Stop the loop and wait for the thread to end (in the reactor thread,
        without blocking it).
        """
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return succeed(None)
        self.loop = self._thread = None
        d: Deferred[None] = Deferred()

        def joined() -> None:
            thread.join()
            self._reactor.callFromThread(d.callback, None)

        def stopLoop() -> None:
            loop.stop()
            # Joining must not happen in the loop's own thread.
            threading.Thread(target=joined, name=f"{self._name}-join", daemon=True).start()

        loop.call_soon_threadsafe(stopLoop)
        return d


def _deliver(d: Deferred[T], future: concurrent.futures.Future[T]) -> None:
    """
    Fire C{d} with C{future}'s outcome, unless C{d} was cancelled already.
    """
    if d.called:
        return
    if future.cancelled():
        d.errback(Failure(CancelledError()))
        return
    error = future.exception()
    if error is not None:
        d.errback(Failure(error))
    else:
        d.callback(future.result())
