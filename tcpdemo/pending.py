"""
The server path for every handler but the built-in C{ack}: Submits go to an
L{ISubmitHandler} in batches, and each SubmitAck carries its result.

The C{ack} handler keeps L{tcpdemo.protocol}'s fast paths untouched: this
module is a subclass of its protocol and factory, picked by
L{tcpdemo.service.buildFactory} only when another handler is chosen.

Each read's well-formed Submits of one connection become one
L{SubmitBatch}.  A connection keeps a FIFO of L{PendingBatch} entries --
batches at the handler, batches answered, ConnAcks -- and writes the
answered prefix of it, so acks leave in the order the Submits came however
batches finish.  Submits not yet acked are bounded per connection
(C{--max-pending}) and per process (C{--max-pending-total}): past either
bound the connection stops reading until it is below again.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpdemo.endpoints import describePeer
from tcpdemo.frame import FrameReceiver, frame
from tcpdemo.handlers import (
    RESULT_HANDLER_ERROR,
    RESULT_TIMEOUT,
    IDeliversReady,
    IHandlesTurns,
    ISubmitHandler,
    SubmitBatch,
)
from tcpdemo.metrics import ReadTally, ServerMetrics
from tcpdemo.packet import ID_SIZE, SUBMIT, SubmitAck, encode
from tcpdemo.protocol import TcpDemoServerFactory, TcpDemoServerProtocol
from tcpdemo.scan import scanSubmits

#: Seconds a batch may take before its Submits get result 2.  Long enough
#: for any healthy store (an fsync under load is milliseconds), short
#: enough that a client of a hung backend hears about it.
DEFAULT_HANDLER_TIMEOUT = 30.0
#: Submits of one connection not yet acked before it stops reading: a few
#: reads of a pipelining client (a 64 KiB read holds ~3,000 small Submits),
#: enough to keep a group-committing store busy.
DEFAULT_MAX_PENDING = 10_000
#: Submits of the whole process not yet acked before every connection that
#: reads stops reading: with ~100-byte Submits about 10 MB held, and room for
#: group commits of tens of thousands.  Lower it for large payloads.
DEFAULT_MAX_PENDING_TOTAL = 100_000
#: Bytes of Submit frames of the whole process not yet acked before every
#: connection that reads stops reading: the Submit counts above bound small
#: Submits, this bounds large ones (100,000 Submits of 1 MiB would be 100 GB).
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
#: At most one log line per this many seconds about handler errors and
#: timeouts, counting those left out.
PROBLEM_LOG_INTERVAL = 10.0

_ACK_HEAD = frame(encode(SubmitAck(b"\0" * ID_SIZE)))[: -ID_SIZE - 1]


def encodeAcks(ids: list[bytes], results: bytes) -> bytes:
    """
    One SubmitAck per id, back to back, with the result of the same index.
    """
    if len(ids) == 1:  # one Submit a read: request/response load
        return _ACK_HEAD + ids[0] + results
    first = results[0]
    if results.count(first) == len(results):
        tail = bytes((first,))
        return _ACK_HEAD + (tail + _ACK_HEAD).join(ids) + tail
    return b"".join([_ACK_HEAD + i + bytes((r,)) for i, r in zip(ids, results)])


class BadResults(Exception):
    """
    A handler returned something other than one result (0-255) per Submit.
    """


def checkResults(results: object, count: int) -> bytes:
    """
    C{results} as bytes, or L{BadResults} saying what is wrong with them.
    """
    if type(results) is bytes and len(results) == count:
        return results
    if isinstance(results, (bytes, bytearray)):
        data = bytes(results)
    elif isinstance(results, int) or results is None or isinstance(results, str):
        raise BadResults(f"handler returned {type(results).__name__}, not a sequence")
    else:
        try:
            data = bytes(results)  # type: ignore[call-overload]
        except (TypeError, ValueError) as e:
            raise BadResults(f"handler returned bad results: {e}") from e
    if len(data) != count:
        raise BadResults(f"handler returned {len(data)} results for {count} Submits")
    return data


class PendingBatch:
    """
    One place in a connection's ack order: a batch at the handler (C{acks}
    is None until it answers) or bytes ready to send (ConnAcks: C{count} 0).
    """

    __slots__ = (
        "protocol",
        "ids",
        "count",
        "size",
        "acks",
        "results",
        "started",
        "deadline",
        "deferred",
        "orphaned",
        "turn",
    )

    def __init__(
        self, protocol: HandlerServerProtocol | None, ids: list[bytes], size: int = 0
    ) -> None:
        self.protocol = protocol
        self.ids = ids
        self.count = len(ids)
        #: The bytes of its Submit frames, counted against the byte bound.
        self.size = size
        self.acks: bytes | None = None
        self.results = b""
        self.started = 0.0
        #: When it times out, in the reactor's seconds (with a timeout).
        self.deadline = 0.0
        self.deferred: Deferred[Any] | None = None
        #: Its connection closed: nobody will send its acks.
        self.orphaned = False
        #: The L{Turn} it went to an L{IHandlesTurns} handler with.
        self.turn: Turn | None = None

    @classmethod
    def ready(cls, data: bytes) -> PendingBatch:
        entry = cls(None, [])
        entry.acks = data
        return entry

    @property
    def finished(self) -> bool:
        return self.acks is not None


class Turn:
    """
    The batches of one reactor turn, handed to an L{IHandlesTurns} handler
    in one call: one Deferred for all of them.
    """

    __slots__ = ("entries", "deferred", "unfinished")

    def __init__(self, entries: list[PendingBatch]) -> None:
        self.entries = entries
        #: The handler's Deferred, until it fires or is cancelled.
        self.deferred: Deferred[Any] | None = None
        #: Entries not finished yet: once none are (all timed out, say),
        #: the handler's Deferred is cancelled.
        self.unfinished = len(entries)


class HandlerRunner:
    """
    Hands batches to the handler and gives each its results: the handler's,
    1 if it raised, failed or answered wrongly, 2 after C{timeout} seconds
    (late results are then ignored).  Counts the Submits not yet acked
    process-wide (L{waiting}) and resumes the connections it held.
    """

    log = Logger()

    def __init__(
        self,
        handler: ISubmitHandler,
        metrics: ServerMetrics,
        reactor: Any,
        timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        maxPending: int = DEFAULT_MAX_PENDING,
        maxPendingTotal: int = DEFAULT_MAX_PENDING_TOTAL,
        problemLogInterval: float = PROBLEM_LOG_INTERVAL,
        maxPendingBytes: int = DEFAULT_MAX_PENDING_BYTES,
        tally: ReadTally | None = None,
    ) -> None:
        self.handler = handler
        self.metrics = metrics
        #: Where the pending gauge's changes and the batch latencies are
        #: counted (the factory's, flushed before every scrape).
        self.tally = tally if tally is not None else ReadTally(metrics)
        #: The handler's L{IDeliversReady.deliverReady}, called after every
        #: read, if it has one.
        self.deliverReady = handler.deliverReady if IDeliversReady.providedBy(handler) else None
        #: The handler's L{IHandlesTurns.handleTurn}, if it has one: the
        #: batches of a turn wait in L{_turn} for one call at its end.
        self.handleTurn = handler.handleTurn if IHandlesTurns.providedBy(handler) else None
        self._turn: list[tuple[PendingBatch, SubmitBatch]] = []
        self._turnCall: Any = None
        self.reactor = reactor
        self.timeout = timeout or None
        self.maxPending = maxPending
        self.maxPendingTotal = maxPendingTotal
        self.maxPendingBytes = maxPendingBytes
        self.problemLogInterval = problemLogInterval
        #: Submits handed to the handler and not yet acked (or dropped with
        #: their connection), process-wide.
        self.waiting = 0
        #: The bytes of their frames.
        self.waitingBytes = 0
        #: Batches handed to the handler and not yet answered.
        self.outstanding = 0
        #: Those of them whose handler answered with a Deferred still to
        #: fire, or that wait for the end of the turn (L{IHandlesTurns}), in
        #: the order they were handed over: what L{giveUp} finishes, and
        #: what the timeout watches.
        self._atHandler: dict[PendingBatch, None] = {}
        #: The one timer of the --handler-timeout, due when the oldest
        #: batch at the handler times out.  Every batch has the same
        #: timeout, so the oldest is always the next.  A DelayedCall made
        #: and cancelled per batch (and the reactor's heap of them) was
        #: about half the handler path's CPU per Submit when each read
        #: brings one Submit, as under request/response load.
        self._timer: Any = None
        self._stopped = False
        self.heldForTotal: dict[HandlerServerProtocol, None] = {}
        self._idleWaiters: list[Deferred[None]] = []
        self._errors = 0
        self._timeouts = 0
        self._latest = ""
        self._lastLog: float | None = None
        self._logCall: Any = None

    # Handing over

    def hand(self, entry: PendingBatch, batch: SubmitBatch) -> None:
        """
        Give C{batch} to the handler; C{entry} gets its results.
        """
        count = entry.count
        self.waiting += count
        self.waitingBytes += entry.size
        self.outstanding += 1
        tally = self.tally
        tally.pending += count
        tally.changed()
        entry.started = time.monotonic()
        if self.handleTurn is not None:
            self._watch(entry)
            self._turn.append((entry, batch))
            if self._turnCall is None:
                self._turnCall = self.reactor.callLater(0, self._handTurn)
            return
        try:
            result = self.handler.handle(batch)
        except Exception:
            self._failed(Failure(), entry)
            return
        if isinstance(result, Deferred):
            self._watch(entry)
            entry.deferred = result
            result.addCallbacks(
                self._answered, self._failed, callbackArgs=(entry,), errbackArgs=(entry,)
            )
        else:
            self._answered(result, entry)

    def _watch(self, entry: PendingBatch) -> None:
        """
        C{entry} waits for the handler: L{giveUp} and the timeout see it.
        """
        if self.timeout is not None:
            entry.deadline = self.reactor.seconds() + self.timeout
            if self._timer is None:
                self._timer = self.reactor.callLater(self.timeout, self._timeOut)
        self._atHandler[entry] = None

    def _handTurn(self) -> None:
        """
        The end of the turn: its batches go to the handler in one call.
        """
        self._turnCall = None
        pairs, self._turn = self._turn, []
        entries = []
        batches = []
        for entry, batch in pairs:
            if not entry.finished:  # not given up meanwhile
                entries.append(entry)
                batches.append(batch)
        if not entries:
            return
        turn = Turn(entries)
        for entry in entries:
            entry.turn = turn
        try:
            result = self.handleTurn(batches)  # type: ignore[misc]
        except Exception:
            self._turnFailed(Failure(), turn)
            return
        if isinstance(result, Deferred):
            turn.deferred = result
            result.addCallbacks(
                self._turnAnswered, self._turnFailed, callbackArgs=(turn,), errbackArgs=(turn,)
            )
        else:
            self._turnAnswered(result, turn)

    def _turnAnswered(self, results: object, turn: Turn) -> None:
        turn.deferred = None
        entries = turn.entries
        try:
            data = checkResults(results, sum(entry.count for entry in entries))
        except BadResults:
            self._turnFailed(Failure(), turn)
            return
        offset = 0
        for entry in entries:
            end = offset + entry.count
            if not entry.finished:  # not timed out
                self._finish(entry, data[offset:end])
            offset = end

    def _turnFailed(self, failure: Failure, turn: Turn) -> None:
        turn.deferred = None
        for entry in turn.entries:
            self._failed(failure, entry)

    def _answered(self, results: object, entry: PendingBatch) -> None:
        if entry.acks is not None:
            return  # timed out already: late results are ignored
        try:
            data = checkResults(results, entry.count)
        except BadResults:
            self._failed(Failure(), entry)
            return
        self._finish(entry, data)

    def _failed(self, failure: Failure, entry: PendingBatch) -> None:
        if entry.finished:
            return  # timed out already (or cancelled by the timeout)
        self.metrics.handler_errors.inc()
        self._errors += 1
        self._latest = f"{failure.type.__name__ if failure.type else 'error'}: " + (
            failure.getErrorMessage()
        )
        self._problem()
        self._finish(entry, bytes((RESULT_HANDLER_ERROR,)) * entry.count)

    def _timeOut(self) -> None:
        """
        The timer is due: every batch at the handler past its deadline
        times out, oldest first; the timer is set again for the next one.
        """
        self._timer = None
        atHandler = self._atHandler
        now = self.reactor.seconds()
        while atHandler and self.timeout is not None:
            entry = next(iter(atHandler))
            if entry.finished:  # cannot be (finishing removes it): no loop
                del atHandler[entry]
                continue
            if entry.deadline > now:
                if self._timer is not None:  # set meanwhile by a hand-over
                    self._timer.cancel()
                self._timer = self.reactor.callLater(entry.deadline - now, self._timeOut)
                return
            self._timedOut(entry)

    def _timedOut(self, entry: PendingBatch) -> None:
        if entry.finished:
            return
        self._timeouts += 1
        self._latest = f"a batch of {entry.count} took more than {self.timeout}s"
        self._problem()
        self._expire(entry)

    def _expire(self, entry: PendingBatch) -> None:
        """
        Give C{entry} result 2 now, counted as a timeout, and cancel the
        handler's Deferred for it.
        """
        self.metrics.handler_timeouts.inc()
        deferred = entry.deferred
        self._finish(entry, bytes((RESULT_TIMEOUT,)) * entry.count)
        if deferred is not None:
            # Lets the handler free what the batch holds; its failure (or
            # any late result) lands in _failed/_answered and is ignored.
            try:
                deferred.cancel()
            except Exception:
                self.log.failure("cancelling a timed-out handler batch")

    def _finish(self, entry: PendingBatch, results: bytes) -> None:
        entry.deferred = None
        atHandler = self._atHandler
        if atHandler.pop(entry, False) is None and not atHandler:
            self._cancelTimer()
        entry.results = results
        entry.acks = encodeAcks(entry.ids, results)
        entry.ids = []
        self.outstanding -= 1
        self.tally.batchTook(time.monotonic() - entry.started)
        protocol, entry.protocol = entry.protocol, None
        if entry.orphaned or protocol is None:
            self.release(entry.count, entry.size)
        else:
            protocol.batchAnswered()
        if not self.outstanding and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)
        turn = entry.turn
        if turn is not None:
            entry.turn = None
            turn.unfinished -= 1
            if not turn.unfinished and turn.deferred is not None:
                # Every batch of the call timed out: let the handler free
                # what it holds (its late answer is ignored).
                deferred, turn.deferred = turn.deferred, None
                try:
                    deferred.cancel()
                except Exception:
                    self.log.failure("cancelling a timed-out handler turn")

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # Bounds

    def release(self, count: int, size: int) -> None:
        """
        C{count} Submits of C{size} bytes were acked (or dropped with their
        connection).
        """
        if not count:
            return
        self.waiting -= count
        self.waitingBytes -= size
        tally = self.tally
        tally.pending -= count
        tally.changed()
        if self.heldForTotal and not self.overTotal():
            held = list(self.heldForTotal)
            self.heldForTotal.clear()
            for protocol in held:
                protocol.checkBounds()

    def overTotal(self) -> bool:
        return self.waiting >= self.maxPendingTotal or self.waitingBytes >= self.maxPendingBytes

    # Shutdown

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once every batch handed over so far has been answered.
        """
        d: Deferred[None] = Deferred()
        if self.outstanding:
            self._idleWaiters.append(d)
        else:
            d.callback(None)
        return d

    def giveUp(self) -> tuple[int, int]:
        """
        The grace period is over: every batch still at the handler gets
        result 2 now (counted as a timeout; its acks are written at once,
        its Deferred cancelled), and L{whenIdle} fires.  Returns how many
        batches and Submits that was, for the shutdown's log line.
        """
        abandoned = list(self._atHandler)
        for entry in abandoned:
            if not entry.finished:
                self._expire(entry)
        waiters, self._idleWaiters = self._idleWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        return len(abandoned), sum(entry.count for entry in abandoned)

    # Logging, at a bounded rate

    def _problem(self) -> None:
        now = float(self.reactor.seconds())
        last = self._lastLog
        if self._stopped or last is None or now - last >= self.problemLogInterval:
            self._logProblems(now)
        elif self._logCall is None:
            self._logCall = self.reactor.callLater(
                last + self.problemLogInterval - now, self._logLater
            )

    def _logLater(self) -> None:
        self._logCall = None
        if self._errors or self._timeouts:
            self._logProblems(float(self.reactor.seconds()))

    def _logProblems(self, now: float) -> None:
        self.log.warn(
            "handler problems since the last such line: {errors} batch(es) got "
            "result 1 (handler error), {timeouts} got result 2 (timeout); latest: "
            "{latest}",
            errors=self._errors,
            timeouts=self._timeouts,
            latest=self._latest,
        )
        self._errors = self._timeouts = 0
        self._lastLog = now

    def stop(self) -> tuple[int, int]:
        """
        At the end of a shutdown, normally once no batch is at the handler:
        no timer of the runner's is left in the reactor.  Problems counted
        and not yet logged are logged now, not lost.  Batches still at the
        handler, or waiting for the end of the turn, when it is called
        anyway are given up (L{giveUp}) with one warning line: none is left
        without an answer.  Returns how many batches and Submits that was.
        """
        given = (0, 0)
        if self._atHandler:
            given = self.giveUp()
            self.log.warn(
                "stopped with {batches} batch(es) of {submits} Submit(s) still at the "
                "handler: given up (result 2)",
                batches=given[0],
                submits=given[1],
            )
        self._stopped = True
        # None after a graceful stop or giveUp; batches handed over without
        # either must not keep the timer.
        self._cancelTimer()
        call, self._turnCall = self._turnCall, None
        if call is not None and call.active():
            call.cancel()
        if self._logCall is not None and self._logCall.active():
            self._logCall.cancel()
        self._logCall = None
        if self._errors or self._timeouts:
            self._logProblems(float(self.reactor.seconds()))
        return given


class HandlerServerProtocol(TcpDemoServerProtocol):
    """
    A connection whose Submits go to the factory's L{HandlerRunner}.

    The parent's hooks are kept: C{_moveIdsToOut} (called before every
    ConnAck and at the end of every read) closes the current batch and
    queues whatever the parent put in C{_out}; C{endOfRead} writes the
    answered prefix of the queue.
    """

    factory: HandlerServerFactory

    _frames: list[bytes]
    _queue: deque[PendingBatch]
    #: Submits of this connection handed over and not yet acked.
    _waiting = 0
    #: Bytes of ConnAcks queued behind a batch still at the handler: a
    #: Conn flood stops being read past --write-buffer-limit of them.
    _readyBytes = 0
    #: Reading stopped for a pending bound, or by the transport (writes).
    _heldByBounds = False
    _heldByWrites = False
    _lost = False
    _draining = False
    #: In L{HandlerRunner.hand}: a batch answered there at once is sent by
    #: the L{endOfRead} that follows every hand-over, not by itself.
    _handing = False
    number = 0
    peer = ""

    def connectionMade(self) -> None:
        self._frames = []
        self._queue = deque()
        self.number = self.factory.nextConnectionNumber()
        self.peer = describePeer(self.transport.getPeer())
        TcpDemoServerProtocol.connectionMade(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        runner = self.factory.runner
        runner.heldForTotal.pop(self, None)
        released = releasedBytes = 0
        for entry in self._queue:
            if entry.finished:
                released += entry.count
                releasedBytes += entry.size
            else:
                entry.orphaned = True
        self._queue.clear()
        runner.release(released, releasedBytes)
        if reason is None:
            TcpDemoServerProtocol.connectionLost(self)
        else:
            TcpDemoServerProtocol.connectionLost(self, reason)

    # Receiving: the parent's read path, but Submits are kept whole for the
    # batch instead of being answered at once.

    def takeSubmits(self, data: bytes) -> bytes:
        offset = scanSubmits(data, self.MAX_LENGTH, self._ids)
        if not offset:
            return data
        self._frames.append(data[:offset])
        return data[offset:]

    def stringReceived(self, string: bytes) -> None:
        if string[0] == SUBMIT and len(string) > ID_SIZE and self.authenticated:
            self._ids.append(string[1 : ID_SIZE + 1])
            self._frames.append(frame(string))
        else:
            self.otherPacketReceived(string)

    def _moveIdsToOut(self) -> None:
        """
        Queue what the parent put in C{_out} (ConnAcks, which come before
        any Submit collected since), then hand the collected Submits over.
        """
        queue = self._queue
        out = self._out
        if out:
            ready = b"".join(out)
            queue.append(PendingBatch.ready(ready))
            self._readyBytes += len(ready)
            self._out = []
        ids = self._ids
        if not ids:
            return
        collected = self._frames
        frames = collected[0] if len(collected) == 1 else b"".join(collected)
        self._ids = []
        self._frames = []
        entry = PendingBatch(self, ids, len(frames))
        queue.append(entry)
        count = entry.count
        self._waiting += count
        self.factory.tally.received += count
        batch = SubmitBatch(frames, count, self.number, self.peer, time.time())
        self._handing = True
        try:
            self.factory.runner.hand(entry, batch)
        finally:
            self._handing = False

    def endOfRead(self) -> None:
        self._moveIdsToOut()
        deliverReady = self.factory.runner.deliverReady
        if deliverReady is not None:
            deliverReady()
        self._sendAnswered()
        self.factory.tally.changed()
        if not self._closing:
            self.checkBounds()

    # Sending, in order

    def batchAnswered(self) -> None:
        """
        The runner has results for one of this connection's batches.
        """
        if self._handing:
            return
        self._sendAnswered()
        self.factory.tally.changed()
        # An answer only lowers what the bounds count: it can end a hold,
        # never start one.
        if self._heldByBounds and not self._closing:
            self.checkBounds()

    def _sendAnswered(self) -> None:
        queue = self._queue
        if not queue or queue[0].acks is None:
            if self._closing and not self._closed and not queue:
                self._finish()
            return
        chunks = []
        released = releasedBytes = 0
        acked = self.factory.tally.acked
        while queue and queue[0].acks is not None:
            entry = queue.popleft()
            assert entry.acks is not None
            chunks.append(entry.acks)
            count = entry.count
            if not count:
                self._readyBytes -= len(entry.acks)
            else:
                released += count
                releasedBytes += entry.size
                results = entry.results
                first = results[0]
                if results.count(first) == count:
                    acked[first] = acked.get(first, 0) + count
                else:
                    for result in set(results):
                        acked[result] = acked.get(result, 0) + results.count(result)
        self._waiting -= released
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not self._lost and not self._closed:
            self._write(data)
            self.factory.tally.bytesSent += len(data)
            if self.timeOut is not None:
                # A client waiting for a slow handler's acks is not idle.
                self.resetTimeout()
        self.factory.runner.release(released, releasedBytes)
        if self._closing and not self._closed and not queue:
            self._finish()

    def timeoutConnection(self) -> None:
        # A client whose Submits are still at the handler is waiting for
        # their acks, not idle: closing now would lose acks owed.  The
        # handler's own timeout bounds the wait (result 2).
        if self._queue:
            self.setTimeout(self.timeOut)  # the expired call is gone: a new one
            return
        TcpDemoServerProtocol.timeoutConnection(self)

    def drain(self) -> None:
        # The parent parses what is buffered, then closes once every ack is
        # out (see _sendAnswered): reading must not resume meanwhile.
        self._draining = True
        TcpDemoServerProtocol.drain(self)

    # Flow control: the pending bounds and the transport's buffer.

    def checkBounds(self) -> None:
        """
        Stop reading past a pending bound; read again below both.
        """
        if self._lost or self._closing or self._draining:
            return
        runner = self.factory.runner
        if self._waiting >= runner.maxPending or self._readyBytes > self.factory.writeBufferLimit:
            self._hold()
        elif runner.overTotal():
            runner.heldForTotal[self] = None
            self._hold()
        elif self._heldByBounds:
            self._heldByBounds = False
            if not self._heldByWrites:
                FrameReceiver.resumeProducing(self)

    def _hold(self) -> None:
        if not self._heldByBounds:
            self._heldByBounds = True
            self.paused = True
            self.transport.pauseProducing()

    def pauseProducing(self) -> None:
        self._heldByWrites = True
        TcpDemoServerProtocol.pauseProducing(self)

    def resumeProducing(self) -> None:
        self._heldByWrites = False
        if not self._heldByBounds:
            TcpDemoServerProtocol.resumeProducing(self)


@attrs.define(eq=False, slots=False, repr=False)
class HandlerServerFactory(TcpDemoServerFactory):
    """
    The factory for a handler other than C{ack}: its connections hand their
    Submits to C{handler} through one L{HandlerRunner}.
    """

    handler: ISubmitHandler | None = None
    #: The --handler NAME[:ARG] it came from, for log lines.
    handlerName: str = "handler"
    handlerTimeout: float | None = DEFAULT_HANDLER_TIMEOUT
    maxPending: int = DEFAULT_MAX_PENDING
    maxPendingTotal: int = DEFAULT_MAX_PENDING_TOTAL
    maxPendingBytes: int = DEFAULT_MAX_PENDING_BYTES

    protocol = HandlerServerProtocol

    runner: HandlerRunner = attrs.field(init=False)
    _connectionNumber: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        TcpDemoServerFactory.__attrs_post_init__(self)
        if self.handler is None:
            raise ValueError("HandlerServerFactory needs a handler")
        self.runner = HandlerRunner(
            self.handler,
            self.metrics,
            self.reactor,
            timeout=self.handlerTimeout,
            maxPending=self.maxPending,
            maxPendingTotal=self.maxPendingTotal,
            maxPendingBytes=self.maxPendingBytes,
            tally=self.tally,
        )

    def nextConnectionNumber(self) -> int:
        self._connectionNumber += 1
        return self._connectionNumber


__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_TOTAL",
    "HandlerRunner",
    "HandlerServerFactory",
    "HandlerServerProtocol",
    "PendingBatch",
    "encodeAcks",
]
