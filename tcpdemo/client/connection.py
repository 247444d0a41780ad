"""
The client library: C{connect()} and C{submit()} with Deferreds, in the
manner of treq::

    client = await connect(reactor, "tcp:127.0.0.1:8888")
    result = await client.submit(b"payload")      # the SubmitAck's result byte
    await client.close()                          # waits for the acks owed

Submits pipeline: at most C{window} are on the wire, awaiting their acks;
more wait in a queue of at most C{maxQueued}, and are written as acks come
back.  Past that bound C{submit} fails at once with L{QueueFull} (it does
not wait: a caller that wants to wait awaits earlier results first).  The
server acks in order, so each ack must carry the id of the oldest Submit on
the wire; anything else (a wrong id, command byte or length, or an ack
nothing awaits) fails every outstanding Submit with L{ServerProtocolError}
and closes the connection.  A lost connection fails them with
L{ConnectionLost}.  Nothing is retried: a Submit whose ack was lost may or
may not have been handled by the server.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo.client.checker import BAD_LENGTH, UNEXPECTED_ACK, WRONG_COMMAND, WRONG_ID, showId
from tcpdemo.client.endpoint import TrustRoot, clientEndpoint, isTLS
from tcpdemo.client.errors import (
    ClientClosed,
    ConnectFailed,
    ConnRefused,
    QueueFull,
    ServerProtocolError,
)
from tcpdemo.client.ids import idBytes
from tcpdemo.client.wire import ACK_SIZE, NotAConnAck, connFrame, readConnAck, submitFrame
from tcpdemo.frame import HEADER_SIZE, LENGTH, MIN_FRAME_LENGTH
from tcpdemo.packet import ID_SIZE, SUBMIT_ACK, abbreviate

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_WINDOW", "Client", "connect"]

#: Submits on the wire awaiting their acks: deep enough to keep a server busy.
DEFAULT_WINDOW = 1000
#: Submits waiting for room in the window before C{submit} fails fast.
DEFAULT_MAX_QUEUED = 100_000

_ID_END = HEADER_SIZE + 1 + ID_SIZE


class _Pending:
    """
    One Submit: its id, its payload until written, and the caller's Deferred.
    """

    __slots__ = ("id", "payload", "deferred", "written")

    def __init__(self, id: bytes, payload: bytes) -> None:
        self.id = id
        self.payload = payload
        self.written = False
        self.deferred: defer.Deferred[int] = defer.Deferred()


@implementer(IHandshakeListener)
class SubmitProtocol(Protocol):
    """
    One connection of the library: writes Submits, matches their acks.
    """

    log = Logger()
    #: Any stream transport; TCP and TLS ones also have abortConnection.
    transport: Any

    def __init__(self, window: int, maxQueued: int, token: bytes | None, tls: bool) -> None:
        self.window = window
        self.maxQueued = maxQueued
        self.token = token
        self._awaitingHandshake = tls
        self._awaitingConnAck = token is not None
        #: Submits written, oldest first, and those waiting for room.
        self._onWire: deque[_Pending] = deque()
        self._queued: deque[_Pending] = deque()
        #: Queued Submits cancelled before they were written, skipped later.
        self._queuedCancelled = 0
        self._buffer = b""
        self._nextNumber = 1
        self._failure: Failure | None = None
        self._closing = False
        self._connected = False
        self._drained: list[defer.Deferred[None]] = []
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    # Set-up: TLS handshake, then the optional Conn.

    def connectionMade(self) -> None:
        self._connected = True
        if not self._awaitingHandshake:
            self._secured()

    def handshakeCompleted(self) -> None:
        if self.transport.disconnecting:
            # The certificate's name did not verify: Twisted aborts the
            # connection (connectionLost brings the reason) yet, in some
            # versions, still reports the handshake as done.
            return
        if self._awaitingHandshake:
            self._awaitingHandshake = False
            self._secured()

    def _secured(self) -> None:
        if self.token is not None:
            self.transport.write(connFrame(self.token))
        else:
            self.ready.callback(None)

    # Submitting

    def submit(self, payload: bytes, id: bytes | None) -> defer.Deferred[int]:
        if self._failure is not None:
            return defer.fail(ClientClosed(f"the connection is gone: {self._failure.value}"))
        if self._closing:
            return defer.fail(ClientClosed("submit after close()"))
        if id is None:
            id = idBytes(self._nextNumber)
            self._nextNumber += 1
        elif not isinstance(id, bytes) or len(id) != ID_SIZE:
            raise ValueError(f"a Submit id is {ID_SIZE} bytes, not {id!r}")
        if not isinstance(payload, bytes):
            raise TypeError(f"a payload is bytes, not {type(payload).__name__}")
        if len(self._onWire) >= self.window or self._queued:
            if len(self._queued) - self._queuedCancelled >= self.maxQueued:
                return defer.fail(
                    QueueFull(
                        f"{len(self._onWire)} Submits on the wire and {self.maxQueued} "
                        f"queued (maxQueued={self.maxQueued})"
                    )
                )
            pending = _Pending(id, payload)
            pending.deferred = defer.Deferred(lambda _: self._cancel(pending))
            self._queued.append(pending)
            return pending.deferred
        pending = _Pending(id, b"")
        pending.written = True
        self._onWire.append(pending)
        self.transport.write(submitFrame(id, payload))
        return pending.deferred

    def _cancel(self, pending: _Pending) -> None:
        """
        A queued Submit was cancelled (or timed out) before it was written:
        it will not be.  (One on the wire stays there until its ack comes,
        which is then dropped: its Deferred has fired.)
        """
        if pending.written or self._failure is not None:
            return
        pending.payload = b""
        self._queuedCancelled += 1
        if self._queuedCancelled == len(self._queued):
            self._queued.clear()
            self._queuedCancelled = 0
            self._checkDrained()

    def _fill(self) -> None:
        """
        Write queued Submits while the window has room, in one write.
        """
        queued = self._queued
        onWire = self._onWire
        room = self.window - len(onWire)
        if room <= 0 or not queued:
            return
        frames = []
        while room and queued:
            pending = queued.popleft()
            if pending.deferred.called:  # cancelled while queued
                self._queuedCancelled -= 1
                continue
            frames.append(submitFrame(pending.id, pending.payload))
            pending.payload = b""
            pending.written = True
            onWire.append(pending)
            room -= 1
        if frames:
            self.transport.write(b"".join(frames))

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        buffer = self._buffer + data if self._buffer else data
        if self._awaitingConnAck:
            try:
                result, buffer = readConnAck(buffer)
            except NotAConnAck as e:
                self._protocolError(WRONG_COMMAND, str(e))
                return
            if result is None:
                self._buffer = buffer
                return
            self._awaitingConnAck = False
            if result != 0:
                self._fail(Failure(ConnRefused(result)))
                self.transport.loseConnection()
                return
            self.ready.callback(None)
        offset = 0
        size = len(buffer)
        onWire = self._onWire
        unpack_from = LENGTH.unpack_from
        while size - offset >= HEADER_SIZE:
            (length,) = unpack_from(buffer, offset)
            if length != ACK_SIZE:
                why = (
                    "not a valid frame length"
                    if length < MIN_FRAME_LENGTH
                    else f"a SubmitAck frame is {ACK_SIZE} bytes"
                )
                self._protocolError(
                    BAD_LENGTH,
                    f"bad length {length} ({why}); bytes {abbreviate(buffer[offset:])}",
                )
                return
            end = offset + ACK_SIZE
            if end > size:
                break
            command = buffer[offset + HEADER_SIZE]
            ackId = buffer[offset + HEADER_SIZE + 1 : offset + _ID_END]
            if command != SUBMIT_ACK:
                self._protocolError(
                    WRONG_COMMAND,
                    f"command byte 0x{command:02x} where a SubmitAck (0x{SUBMIT_ACK:02x}) "
                    f"was owed; frame {buffer[offset:end].hex()}",
                )
                return
            if not onWire:
                self._protocolError(
                    UNEXPECTED_ACK,
                    f"ack for id {showId(ackId)} but no Submit is awaiting one; "
                    f"frame {buffer[offset:end].hex()}",
                )
                return
            pending = onWire[0]
            if ackId != pending.id:
                self._protocolError(
                    WRONG_ID,
                    f"expected the ack for id {showId(pending.id)}, got "
                    f"{showId(ackId)}; frame {buffer[offset:end].hex()}",
                )
                return
            onWire.popleft()
            offset = end
            d = pending.deferred
            if not d.called:  # else cancelled or timed out: the ack is dropped
                d.callback(buffer[end - 1])
            if self.failed():  # a callback aborted the client
                return
        self._buffer = buffer[offset:] if offset < size else b""
        if self._queued:
            self._fill()
        if not onWire:
            self._checkDrained()

    # Ending

    def _protocolError(self, kind: str, message: str) -> None:
        owed = self.outstanding()
        self.log.warn(
            "tcpdemo client: {kind}: {message}; closing with {owed} Submit(s) outstanding",
            kind=kind,
            message=message,
            owed=owed,
        )
        self._fail(Failure(ServerProtocolError(kind, message)))
        self.transport.abortConnection()

    def _fail(self, failure: Failure) -> None:
        """
        Fail the set-up, if not done, and every outstanding Submit.
        """
        if self._failure is not None:
            return
        self._failure = failure
        self._buffer = b""
        outstanding = list(self._onWire) + list(self._queued)
        self._onWire.clear()
        self._queued.clear()
        self._queuedCancelled = 0
        if not self.ready.called:
            self.ready.errback(failure)
        for pending in outstanding:
            if not pending.deferred.called:
                pending.deferred.errback(failure)
        self._checkDrained()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        owed = self.outstanding()
        why = reason.getErrorMessage()
        if not self.ready.called:
            self._fail(Failure(ConnectFailed(describeSetupFailure(reason))))
        self._fail(
            Failure(ConnectionLost(f"connection lost with {owed} Submit(s) outstanding: {why}"))
        )
        for d in self._drained:
            if not d.called:
                d.callback(None)
        self._drained = []
        self.lost.callback(None)

    def failed(self) -> bool:
        """
        Whether the connection has failed (protocol error, refusal, loss).
        """
        return self._failure is not None

    def outstanding(self) -> int:
        return len(self._onWire) + len(self._queued) - self._queuedCancelled

    def close(self) -> defer.Deferred[None]:
        """
        Stop taking Submits; once every ack owed has come (or the connection
        is gone), close the connection.  Fires when it is closed.
        """
        self._closing = True
        if self._connected:
            drained: defer.Deferred[None] = defer.Deferred()
            self._drained.append(drained)
            self._checkDrained()
            drained.addCallback(lambda _: self._loseConnection())
        return self._whenLost()

    def _whenLost(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.lost.called:
            d.callback(None)
        else:
            self.lost.addBoth(lambda _: d.callback(None))
        return d

    def _loseConnection(self) -> None:
        if self._connected:
            self.transport.loseConnection()

    def _checkDrained(self) -> None:
        if self._drained and not self._onWire and not self._queued:
            drained, self._drained = self._drained, []
            for d in drained:
                if not d.called:
                    d.callback(None)


def describeSetupFailure(reason: Failure) -> str:
    """
    Why a connection closed before it was ready, in one line: say plainly
    when the TLS certificate was not trusted.
    """
    why = str(reason.value) or reason.getErrorMessage()
    if type(reason.value).__module__.startswith("service_identity"):
        return (
            "TLS handshake failed: the server's certificate is trusted but not for "
            f"this host name: {why}"
        )
    if "certificate verify failed" in why:
        return (
            "TLS handshake failed: the server's certificate could not be verified "
            f"(not trusted, or not for this host name): {why}"
        )
    if "SSL" in type(reason.value).__name__ or "ssl" in type(reason.value).__module__.lower():
        return f"TLS handshake failed: {why}"
    return f"closed before it was ready: {why}"


class Client:
    """
    A connection to a tcpdemo (or reference) server, from L{connect}.
    """

    def __init__(self, protocol: SubmitProtocol, endpoint: str) -> None:
        self._protocol = protocol
        self.endpoint = endpoint
        self._timeout: float | None = None
        self._reactor: Any = None

    def submit(
        self, payload: bytes, id: bytes | None = None, *, timeout: float | None = None
    ) -> defer.Deferred[int]:
        """
        Send a Submit; the Deferred fires with its SubmitAck's result byte
        (0 ok, 1 handler error, 2 timeout, others the server's own).

        @param id: the 8-byte id; by default C{"%08d"} of a per-connection
            counter from 1, as the reference client.
        @param timeout: seconds to wait for the ack, overriding the
            C{timeout} given to L{connect}; past it the Deferred fails with
            L{defer.TimeoutError} (a Submit still queued is then not sent).
        @raise ValueError: C{id} is not 8 bytes.
        """
        d = self._protocol.submit(payload, id)
        seconds = self._timeout if timeout is None else timeout
        if seconds is not None and not d.called:
            d.addTimeout(seconds, self._reactor)
        return d

    @property
    def outstanding(self) -> int:
        """
        Submits not yet answered: on the wire or queued.
        """
        return self._protocol.outstanding()

    def close(self, timeout: float | None = None) -> defer.Deferred[None]:
        """
        Take no more Submits; wait for the acks owed, then close.  Fires
        when the connection is closed.

        @param timeout: seconds to wait for the acks owed; past them the
            connection is aborted (the Submits still outstanding fail with
            L{ConnectionLost}).  By default it waits as long as it takes.
        """
        closed = self._protocol.close()
        if timeout is not None and not closed.called:
            call = self._reactor.callLater(timeout, self.abort)
            closed.addBoth(lambda result: call.cancel() if call.active() else None)
        return closed

    def abort(self) -> None:
        """
        Close at once; outstanding Submits fail with L{ConnectionLost}.
        """
        if self._protocol._connected:
            self._protocol.transport.abortConnection()


def connect(
    reactor: Any,
    endpoint: str,
    *,
    token: bytes | None = None,
    window: int = DEFAULT_WINDOW,
    maxQueued: int = DEFAULT_MAX_QUEUED,
    timeout: float | None = None,
    connectTimeout: float | None = 30.0,
    tlsVerify: bool = True,
    trustRoot: TrustRoot | None = None,
) -> defer.Deferred[Client]:
    """
    Connect to a server; the Deferred fires with a L{Client} once the
    connection is up (TLS handshake done, and with a C{token}, the
    authenticating Conn answered by ConnAck result 0).

    @param endpoint: a Twisted client endpoint string (C{tcp:HOST:PORT},
        C{unix:PATH}, C{ssl:HOST:PORT}, C{tls:HOST:PORT}, ...).
    @param token: send a Conn carrying it first; without one no Conn is
        sent, as the reference client (the Go server sends no ConnAck then).
    @param window: Submits on the wire awaiting their acks, at most.
    @param maxQueued: Submits waiting for room in the window, at most;
        beyond them C{submit} fails with L{QueueFull}.
    @param timeout: default seconds each Submit may wait for its ack
        (C{None}: no limit).
    @param connectTimeout: seconds for connecting, the TLS handshake and
        the Conn; past them the Deferred fails with L{ConnectFailed}.
    @param tlsVerify: for C{ssl:} and C{tls:}, verify the server's
        certificate and host name (the default).  C{False} turns it off.
    @param trustRoot: the CAs to verify against: a PEM file, a directory of
        C{*.pem}, or a Twisted trust root; by default the platform's.

    Fails with L{ConnectFailed}, L{ConnRefused}, or
    L{tcpdemo.client.endpoint.EndpointError} for an unusable description.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    if maxQueued < 0:
        raise ValueError(f"maxQueued must be >= 0, not {maxQueued}")
    try:
        target = clientEndpoint(reactor, endpoint, tlsVerify=tlsVerify, trustRoot=trustRoot)
    except Exception:
        return defer.fail()
    protocol = SubmitProtocol(window, maxQueued, token, isTLS(endpoint))

    def connected(_: object) -> defer.Deferred[None]:
        return protocol.ready

    def failed(failure: Failure) -> Failure:
        if failure.check(ConnRefused, ConnectFailed, ServerProtocolError):
            return failure
        if failure.check(defer.CancelledError, defer.TimeoutError):
            if protocol._connected:
                protocol.transport.abortConnection()
            return Failure(ConnectFailed(f"{endpoint}: timed out after {connectTimeout:g}s"))
        return Failure(ConnectFailed(f"could not connect to {endpoint}: {failure.value}"))

    def ready(_: object) -> Client:
        client = Client(protocol, endpoint)
        client._timeout = timeout
        client._reactor = reactor
        return client

    d = connectProtocol(target, protocol)
    d.addCallback(connected)
    if connectTimeout is not None:
        d.addTimeout(connectTimeout, reactor)
    d.addErrback(failed)
    result: defer.Deferred[Client] = d.addCallback(ready)
    return result
