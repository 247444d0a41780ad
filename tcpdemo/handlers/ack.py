"""
The built-in C{ack} handler, the default: every Submit gets result 0.

The server recognises it (L{AckHandler}) and keeps its fast path, which
answers a read's Submits without making a batch at all; the handler's own
methods only serve code that calls it directly (and the tests, which check
that the two paths answer alike).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from tcpdemo.handlers import HandlerArgumentError, ISubmitHandler, SubmitBatch


@implementer(ISubmitHandler)
class AckHandler:
    """
    Acknowledge everything with result 0, storing nothing.
    """

    def startHandler(self) -> Deferred[None] | None:
        return None

    def handle(self, batch: SubmitBatch) -> bytes:
        return bytes(batch.count)

    def stopHandler(self) -> Deferred[None] | None:
        return None


def makeAckHandler(argument: str | None, reactor: Any) -> AckHandler:
    """
    C{--handler ack}: takes no ARG.
    """
    if argument:
        raise HandlerArgumentError(f"the ack handler takes no argument, not {argument!r}")
    return AckHandler()
