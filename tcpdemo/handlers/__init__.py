"""
Handlers: the application logic that decides each Submit's result byte.

A handler is an L{ISubmitHandler}.  The server gives it the Submits of one
connection in batches (L{SubmitBatch}: in practice, what one read brought),
and sends each Submit's SubmitAck only once the handler has returned its
result, so an ack is a promise: with a durable store behind the handler, a
result of L{RESULT_OK} means "stored".  Acks still leave every connection in
the order its Submits came, whatever order batches finish in.

Handlers come from Twisted plugins, found the way twistd finds its service
makers: a module in a C{twisted/plugins/} directory on C{sys.path} holding
an object that provides L{IHandlerMaker} (and C{twisted.plugin.IPlugin}).
C{twistd tcpdemo --handler NAME[:ARG]} picks the maker whose C{name} is NAME
and passes it ARG, the handler's own string (a path, a URL, ...).

Result codes every handler shares (docs/handlers.md):

  - 0 (L{RESULT_OK}): handled;
  - 1 (L{RESULT_HANDLER_ERROR}): the handler raised or its Deferred failed,
    given by the server to the whole batch;
  - 2 (L{RESULT_TIMEOUT}): the batch took longer than C{--handler-timeout},
    given by the server to the whole batch;
  - 3-255: the handler's own meanings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Union

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from tcpdemo.frame import HEADER_SIZE, LENGTH
from tcpdemo.packet import ID_SIZE, RESULT_ERROR
from tcpdemo.packet import RESULT_OK as RESULT_OK  # re-exported: the shared code 0

RESULT_HANDLER_ERROR = RESULT_ERROR
RESULT_TIMEOUT = 2
#: The lowest result code a handler may give for its own meanings.
FIRST_APPLICATION_RESULT = 3

#: What L{ISubmitHandler.handle} returns: one result (0-255) per Submit of
#: the batch, in order -- C{bytes} or any sequence of ints -- at once or as
#: a Deferred.
Results = Sequence[int]
HandleResult = Union[Results, "Deferred[Results]"]

__all__ = [
    "FIRST_APPLICATION_RESULT",
    "RESULT_HANDLER_ERROR",
    "RESULT_OK",
    "RESULT_TIMEOUT",
    "HandleResult",
    "HandlerArgumentError",
    "IDeliversReady",
    "IHandlerMaker",
    "IHandlesTurns",
    "IStoreReader",
    "ISubmitHandler",
    "Results",
    "SubmitBatch",
    "findMaker",
    "handlerMakers",
    "splitSpec",
]

_ID_START = HEADER_SIZE + 1
_unpackLength = LENGTH.unpack_from


@attrs.frozen
class SubmitBatch:
    """
    Consecutive Submits from one connection, handed to a handler in one call.

    C{frames} is the Submit frames back to back exactly as they came on the
    wire (length prefix, command byte, id, payload), so that a store can keep
    them as they are; L{ids}, L{payloads} and L{submits} decode them.

    @ivar frames: C{count} well-formed Submit frames, back to back.
    @ivar count: how many Submits C{frames} holds.
    @ivar connection: a number for the connection, unique in this process.
    @ivar peer: the connection's peer address, for humans (C{host:port}).
    @ivar received: when the server read them, in seconds since the epoch.
    """

    frames: bytes
    count: int
    connection: int
    peer: str
    received: float

    def __len__(self) -> int:
        return self.count

    def submits(self) -> Iterator[tuple[bytes, bytes]]:
        """
        Every Submit's C{(id, payload)}, in order.
        """
        data = self.frames
        offset = 0
        size = len(data)
        while offset < size:
            (length,) = _unpackLength(data, offset)
            start = offset + _ID_START
            yield data[start : start + ID_SIZE], data[start + ID_SIZE : offset + length]
            offset += length

    @property
    def ids(self) -> list[bytes]:
        return [submitId for submitId, _ in self.submits()]

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.submits()]


class ISubmitHandler(Interface):
    """
    Application logic that gives each Submit its result byte.
    """

    def startHandler() -> Deferred[None] | None:
        """
        Open resources (files, connections).  The server listens only once
        this has returned or its Deferred has fired; a failure stops start-up.
        """

    def handle(batch: SubmitBatch) -> HandleResult:
        """
        Return one result per Submit of C{batch}, in order, at once or as a
        Deferred.  Raising, failing, or returning the wrong number of
        results gives the whole batch L{RESULT_HANDLER_ERROR}; the
        connection stays open.  Called from the reactor thread: do blocking
        work elsewhere (a thread, another process) and return a Deferred.
        """

    def stopHandler() -> Deferred[None] | None:
        """
        Close resources.  Called once every batch handed over has been
        answered (or the grace period is over); a graceful shutdown waits
        for its Deferred until the grace period ends, then exits without it.
        """


class IDeliversReady(Interface):
    """
    Also provided by a handler whose results are made in another thread
    (see L{tcpdemo.handlers.ready.ReadyQueue}): the server calls
    L{deliverReady} at the end of every read, so that results already made
    go out without waiting for the reactor's next turn.

    A worker thread's C{reactor.callFromThread} runs only once the reactor
    has handled every connection that was ready in its turn: with a hundred
    busy connections that is milliseconds, and it was most of a Submit's
    latency through the sqlite store under request/response load.
    """

    def deliverReady() -> None:
        """
        In the reactor thread: fire the Deferreds of every batch whose
        results are ready.  Cheap when there are none (once per read).
        """


class IHandlesTurns(Interface):
    """
    Also provided by a handler that would rather take a reactor turn's
    batches together: the server then calls L{handleTurn} once at the end
    of every turn that brought Submits, with every connection's batch of
    that turn, instead of L{ISubmitHandler.handle} once per batch.

    Worth it for a handler whose results come back later anyway (a store
    that group-commits): under request/response load each connection's
    read is a batch of one Submit, and a call, a Deferred and a callback
    per batch were a third of the server's work per Submit.  A handler
    that answers at once is better off without it: its results would wait
    for the end of the turn.
    """

    def handleTurn(batches: Sequence[SubmitBatch]) -> HandleResult:
        """
        Return one result per Submit of every batch of C{batches}, in order
        (the first batch's, then the next...), at once or as a Deferred.
        The batches come from any connections, a connection's in the order
        its Submits came.  Raising, failing or answering wrongly gives every
        batch of the call L{RESULT_HANDLER_ERROR}, so answer a bad Submit
        with a result of its own rather than raise; C{--handler-timeout}
        times out each batch at its own deadline.
        """


class IHandlerMaker(Interface):
    """
    A Twisted plugin that builds a handler from C{--handler NAME[:ARG]}.
    Keep the plugin module light: import what the handler needs inside
    L{makeHandler}, so that listing plugins stays cheap.
    """

    name = Attribute("The NAME in --handler NAME[:ARG].")
    description = Attribute("One line for --help.")

    def makeHandler(argument: str | None, reactor: Any) -> ISubmitHandler:
        """
        Build a handler from ARG (None when --handler has no colon).  Raise
        L{HandlerArgumentError} with one clear line for a bad ARG.
        """


class IStoreReader(Interface):
    """
    Also provided by makers whose handlers store Submits: reads them back
    for C{tcpdemo-dump NAME[:ARG]}.
    """

    def readStored(argument: str | None) -> Iterable[dict[str, Any]]:
        """
        Every stored Submit, oldest first, as a JSON-ready dict with at least
        C{"id"} and C{"payload"} (both lower-case hex); stores add their own
        fields (C{"received"}, C{"peer"}, ...).
        """


class HandlerArgumentError(ValueError):
    """
    A C{--handler} or C{tcpdemo-dump} SPEC is wrong; the message says how.
    """


def splitSpec(spec: str) -> tuple[str, str | None]:
    """
    C{"NAME:ARG"} -> C{("NAME", "ARG")}; C{"NAME"} -> C{("NAME", None)}.
    """
    name, colon, argument = spec.partition(":")
    return name, (argument if colon else None)


def handlerMakers() -> dict[str, Any]:
    """
    Every L{IHandlerMaker} plugin installed, by name.
    """
    from twisted.plugin import getPlugins

    return {maker.name: maker for maker in getPlugins(IHandlerMaker)}


def findMaker(spec: str) -> tuple[Any, str | None]:
    """
    The maker named by C{spec} (C{NAME[:ARG]}) and its ARG, or
    L{HandlerArgumentError} listing the names there are.
    """
    name, argument = splitSpec(spec)
    makers = handlerMakers()
    maker = makers.get(name)
    if maker is None:
        known = ", ".join(sorted(makers)) or "none"
        raise HandlerArgumentError(f"no handler named {name!r} (installed: {known})")
    return maker, argument
