"""
Results made in a worker thread, brought back to the reactor thread.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Generic, TypeVar

from twisted.logger import Logger

T = TypeVar("T")


class ReadyQueue(Generic[T]):
    """
    What a handler's worker thread L{put}s is passed to C{deliver} in the
    reactor thread, in the order put, at whichever comes first: the end of
    the server's next read (L{deliverReady}, see
    L{tcpdemo.handlers.IDeliversReady}) or the reactor's next turn (one
    C{callFromThread} while any item waits).

    C{deliver} may run nested: what it fires can resume a connection whose
    read ends with L{deliverReady} again, which delivers the next items
    before the outer C{deliver} has returned.  It must not raise: if it
    does, the failure is logged and the next items are still delivered.

    The flag that saves a C{callFromThread} per item relies on the GIL
    (CPython's, PyPy's): every read and write of it is seen in order.
    """

    log = Logger()

    def __init__(self, reactor: Any, deliver: Callable[[T], object]) -> None:
        self.reactor = reactor
        self._deliver = deliver
        self._items: deque[T] = deque()
        #: True while a callFromThread(deliverReady) is on its way: set by
        #: the thread, cleared by that call before it takes the items, so
        #: that an item put after the clearing gets a call of its own.
        self._called = False

    def put(self, item: T) -> None:
        """
        In the worker thread: hand C{item} over.
        """
        self._items.append(item)
        if not self._called:
            self._called = True
            self.reactor.callFromThread(self._fromThread)

    def _fromThread(self) -> None:
        self._called = False
        self.deliverReady()

    def deliverReady(self) -> None:
        """
        In the reactor thread: deliver every item put so far.
        """
        items = self._items
        deliver = self._deliver
        while items:
            item = items.popleft()
            try:
                deliver(item)
            except Exception:
                # Not the reading connection's fault, whose read this is.
                self.log.failure("delivering a worker thread's results")
