"""
The server side of the protocol: dispatch, acks, backpressure, shutdown.

Acks are batched: the frames of one read are all handled before anything is
written, then every ack they earned goes out in one C{transport.write} in
the same reactor turn; the counts of a read are plain additions to the
factory's L{ReadTally}, which moves them into the counters in bulk.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

import attrs
from twisted.internet import defer, tcp
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo import readinto
from tcpdemo.endpoints import describePeer
from tcpdemo.frame import DEFAULT_MAX_FRAME_LENGTH, FrameReceiver, frame
from tcpdemo.lograte import LineBudget
from tcpdemo.metrics import ReadTally, ServerMetrics
from tcpdemo.packet import (
    COMMANDS,
    ID_SIZE,
    RESULT_ERROR,
    RESULT_OK,
    SUBMIT,
    BadLength,
    Conn,
    ConnAck,
    FrameTooLarge,
    ProtocolError,
    Submit,
    SubmitAck,
    UnexpectedCommand,
    abbreviate,
    decode,
    encode,
)
from tcpdemo.readinto import installReadInto
from tcpdemo.scan import MIN_RUN
from tcpdemo.scan import acks as _acks
from tcpdemo.scan import submitAcks as submitAcks
from tcpdemo.twistedinternals import CONNECTION_BUFFER_ATTRIBUTES, sendBufferEmpty

#: The protocol_errors reason of a connection closed because its partial
#: frame was the largest when partial frames held more than
#: --max-incoming-memory.
MEMORY_BUDGET = "memory_budget"

#: Commands only a server sends: a client sending one is refused.
_SENT_BY_SERVERS = (ConnAck, SubmitAck)

DEFAULT_WRITE_BUFFER_LIMIT = 256 * 1024

#: The default bound on the bytes held in partial frames over all
#: connections (--max-incoming-memory): 64 frames of the default
#: --max-frame-length at once.
DEFAULT_MAX_INCOMING_MEMORY = 64 * 1024 * 1024

#: The most frames of one connection the general path (everything but the
#: bulk Submit paths, which one read already bounds) handles per reactor
#: turn: a few milliseconds of Conns, so a flood of them cannot hold the
#: reactor from the other connections.
FRAMES_PER_TURN = 256

#: What the direct send (L{TcpDemoServerProtocol._write}) reads of a
#: C{tcp.Connection}: Twisted's private buffer state and its send method.
DIRECT_SEND_ATTRIBUTES = CONNECTION_BUFFER_ATTRIBUTES + (
    "connected",
    "disconnecting",
    "writeSomeData",
)

#: The most one read takes from a TCP or unix socket: Twisted's default.
READ_SIZE = 64 * 1024


def directSendMissing(transport: object) -> list[str] | None:
    """
    Whether L{TcpDemoServerProtocol._write} may send on C{transport} itself:
    None if it is not a plain TCP or unix connection (TLS, whose wrapper
    must see every byte, say), else the names in L{DIRECT_SEND_ATTRIBUTES}
    it lacks -- none on the Twisted versions this project supports.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    return [name for name in DIRECT_SEND_ATTRIBUTES if not hasattr(transport, name)]


#: The two ConnAcks, framed once.
_CONNACK_OK = frame(encode(ConnAck(RESULT_OK)))
_CONNACK_ERROR = frame(encode(ConnAck(RESULT_ERROR)))


class ServerTransport(Protocol):
    """
    What the server uses of its transport.  Twisted annotates a protocol's
    transport as C{ITransport | None}; the ones it is given (TCP, TLS, unix
    sockets, the tests' transports) all provide these.
    """

    bufferSize: int
    disconnecting: bool

    def write(self, data: bytes) -> None: ...
    def getPeer(self) -> IAddress: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


@implementer(IHalfCloseableProtocol)
class TcpDemoServerProtocol(FrameReceiver, TimeoutMixin):
    """
    One client connection: answers every Submit with a SubmitAck, in order.

    It registers itself as a streaming producer on its transport, so when
    the unsent acks exceed the factory's write-buffer limit the transport
    pauses it (and reading stops) until they drain.

    It is half-closeable: a client that shuts down its sending side after
    its last Submit still gets every ack before the server closes.

    A subclass that answers Submits its own way (L{tcpdemo.pending}'s
    handler path, the benchmark's historical steps) keeps the rest --
    Conn, bad input, backpressure, closing -- through these: C{takeSubmits}
    (the bulk path of a read), C{authenticated}, C{closing},
    L{otherPacketReceived} (any frame but an authenticated Submit),
    L{queueReply} (bytes to write in order after the acks owed),
    L{parseReceived} (the frames already received, at shutdown) and
    L{finishIfClosing} (the end of a read, once the acks are written).
    """

    factory: TcpDemoServerFactory
    transport: ServerTransport  # type: ignore[assignment]
    log = Logger()

    _ids: list[bytes]
    _out: list[bytes]
    #: A Conn with the right token arrived, or none is needed.
    authenticated = True
    _closing = False
    _closed = False
    _readClosed = False
    _linger: IDelayedCall | None = None
    _answered = 0
    _sendsDirectly = False
    #: Bytes held in the partial frame being gathered, as last counted in
    #: the factory's budget.
    _held = 0
    #: The call that handles the rest of a read on the next turn, if the
    #: general path stopped at L{FRAMES_PER_TURN} frames.
    _nextTurnCall: IDelayedCall | None = None
    #: The most one read takes (see L{connectionMade}).
    readSize = READ_SIZE
    #: The shortest run of equal Submits the pure L{submitAcks} answers in bulk.
    minRun = MIN_RUN

    def connectionMade(self) -> None:
        factory = self.factory
        self.MAX_LENGTH = factory.maxFrameLength
        self._ids = []
        self._out = []
        self.authenticated = factory.authToken is None
        self.framesPerTurn = factory.framesPerTurn
        transport = self.transport
        # Plain TCP and unix sockets: see _write.
        missing = directSendMissing(transport)
        self._sendsDirectly = missing == []
        if missing:
            factory.directSendUnavailable(transport, missing)
        # The threshold at which the transport calls pauseProducing.  On TCP
        # and unix sockets it is also what each recv() asks for, and a
        # 256 KiB buffer per read costs PyPy several times the system call;
        # the transport compares it with its unsent bytes only inside
        # write(), so there it is the read size but while _write writes.
        transport.bufferSize = self.readSize if self._sendsDirectly else factory.writeBufferLimit
        if self._sendsDirectly and factory.readInto:
            installReadInto(cast(tcp.Connection, transport), factory.readBuffer)
        transport.registerProducer(self, True)
        factory.connectionOpened(self)
        if factory.idleTimeout is not None:
            self.setTimeout(factory.idleTimeout)

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Idle timeouts run on the factory's clock (a fake one in tests).
        """
        call: IDelayedCall = self.factory.reactor.callLater(period, func)
        return call

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._cancelNextTurn()
        self.dropGathered()
        self.factory.connectionClosed(self)

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if data:
            # endOfRead, which every read ends with, sees it to the counters.
            self.factory.tally.bytesReceived += len(data)
            if self.timeOut is not None:
                self.resetTimeout()
        if self._gathered is not None:
            # A long partial frame: add to it, and deliver it if complete.
            rest = self.gather(data)
            if rest is None:
                self.endOfRead()
                return
            data = rest
            if self._isClosing():
                # The frame it completed closed the connection.
                self.endOfRead()
                return
        if self.authenticated and not self.paused:
            # Take the plain Submits off the front in bulk; the frame layer
            # parses whatever is left (a partial frame, anything else).
            data = self.takeSubmits(self.takeUnprocessed(data))
        FrameReceiver.dataReceived(self, data)

    def takeSubmits(self, data: bytes) -> bytes:
        """
        Answer the well-formed Submits at the front of C{data} in bulk, and
        return the rest for the frame layer.  The handler path
        (L{tcpdemo.pending}) keeps them for its handler instead.
        """
        end, count, acks = submitAcks(data, self.MAX_LENGTH, 0, self.minRun)
        if count:
            self._moveIdsToOut()
            self._out.append(acks)
            self._answered += count
        return data[end:] if end else data

    def stringReceived(self, string: bytes) -> None:
        # The fast path: an authenticated, well-formed Submit is just its id.
        if string[0] == SUBMIT and len(string) > ID_SIZE and self.authenticated:
            self._ids.append(string[1 : ID_SIZE + 1])
        else:
            self.otherPacketReceived(string)

    @property
    def closing(self) -> bool:
        """
        Reading has stopped: the connection closes once the acks owed so
        far are written.
        """
        return self._closing

    def otherPacketReceived(self, payload: bytes) -> None:
        """
        Everything but the fast path: decode fully, then act or refuse.
        """
        try:
            command = COMMANDS.get(payload[0])
            if command in _SENT_BY_SERVERS:
                # Refused for its direction, whatever its body looks like.
                raise UnexpectedCommand(
                    f"{command.__name__} is sent by servers, not to them: " + abbreviate(payload)
                )
            packet = decode(payload)
            if isinstance(packet, Submit):
                if not self.authenticated:
                    raise UnexpectedCommand(
                        "Submit before an authenticating Conn: " + abbreviate(payload)
                    )
                self._ids.append(packet.id)
            elif isinstance(packet, Conn):
                self._connReceived(packet)
        except ProtocolError as error:
            self.protocolError(error)

    def _connReceived(self, conn: Conn) -> None:
        """
        Answer a Conn.  Every Conn is answered, the first or not: without
        a token, ConnAck 0; with one, each Conn's token is checked again,
        and a wrong one closes the connection even after a right one.  A
        flood of Conns costs its sender its own turns only (L{FRAMES_PER_TURN}).
        """
        token = self.factory.authToken
        accepted = token is None or hmac.compare_digest(conn.token, token)
        self.queueReply(_CONNACK_OK if accepted else _CONNACK_ERROR)
        if accepted:
            self.authenticated = True
        else:
            self.factory.metrics.protocol_errors.labels("auth_failed").inc()
            self.factory.errorLines.emit(
                "auth_failed",
                "closing {peer}: auth_failed: Conn with a wrong token",
                peer=describePeer(self.transport.getPeer()),
            )
            self._close()

    def badLengthReceived(self, length: int) -> None:
        if length > self.MAX_LENGTH:
            error: ProtocolError = FrameTooLarge(
                f"frame length {length} is above the limit of {self.MAX_LENGTH}"
            )
        else:
            error = BadLength(f"frame length {length} is below the minimum of 5")
        self.protocolError(error)

    def protocolError(self, error: ProtocolError) -> None:
        """
        Count and log C{error} once, send the acks owed so far, then close.
        """
        self.factory.metrics.protocol_errors.labels(error.reason).inc()
        self.factory.errorLines.emit(
            error.reason,
            "closing {peer}: {reason}: {error}",
            peer=describePeer(self.transport.getPeer()),
            reason=error.reason,
            error=str(error),
        )
        self._close()

    # Sending

    def queueReply(self, data: bytes, answered: int = 0) -> None:
        """
        Queue C{data} (acks, a ConnAck) to be written at the end of this
        read, after every ack owed so far; it answers C{answered} Submits.
        """
        self._moveIdsToOut()
        self._out.append(data)
        self._answered += answered

    def _moveIdsToOut(self) -> None:
        ids = self._ids
        if ids:
            self._out.append(_acks(ids))
            self._answered += len(ids)
            self._ids = []

    def endOfRead(self) -> None:
        """
        Write every ack the latest read earned, in one write, and count them.
        """
        if self._ids:
            self._moveIdsToOut()
        out = self._out
        tally = self.factory.tally
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            self._write(data)
            tally.bytesSent += len(data)
            tally.answered += self._answered
            self._answered = 0
        tally.changed()
        # finishIfClosing, inline: this runs once per read.
        if self._closing and not self._closed:
            self._finish()

    def finishIfClosing(self) -> None:
        """
        The end of a read whose acks are written: if the connection is
        closing, close it now (once).
        """
        if self._closing and not self._closed:
            self._finish()

    def _write(self, data: bytes) -> None:
        """
        Write C{data}, sending it at once if nothing is waiting before it.

        Twisted's TCP transport only buffers on write and sends on the next
        reactor iteration, registering for writability and unregistering
        again: two epoll_ctl calls and a loop turn per read, which is most of
        the cost of a request/response exchange (upstream: Twisted issue
        #5303, "Default transport implementation doesn't write out bytes
        immediately", https://github.com/twisted/twisted/issues/5303, open).
        When its buffer is empty the bytes are sent right away with its own
        C{writeSomeData}; what the kernel does not take, or any error, goes
        through C{write} as usual.

        The emptiness check is what keeps acks in order: bytes Twisted
        still holds must go before these.  tests/test_fence.py fails without
        it.  A Twisted without the private state it reads gets plain
        C{write}s (L{directSendMissing}).
        """
        transport: Any = self.transport  # a tcp.Connection when sending directly
        if not self._sendsDirectly:
            transport.write(data)
            return
        if sendBufferEmpty(transport) and transport.connected and not transport.disconnecting:
            sent = transport.writeSomeData(data)
            if sent == len(data):
                return
            if isinstance(sent, int) and sent > 0:
                data = data[sent:]
        # The pause threshold is --write-buffer-limit while writing, the read
        # size otherwise (see connectionMade).
        transport.bufferSize = self.factory.writeBufferLimit
        try:
            transport.write(data)
        finally:
            transport.bufferSize = self.readSize

    def _finish(self) -> None:
        """
        Close once the acks written so far are flushed.

        Closing a socket whose peer is still sending makes the kernel send
        a reset, which can destroy acks the peer has received but not yet
        read.  So the write side is shut first (the peer reads the acks,
        then end-of-file), and input is read and dropped until the peer
        closes too, for at most C{lingerTimeout} seconds.
        """
        self._closed = True
        transport = self.transport
        # A registered producer would keep the connection open forever.
        transport.unregisterProducer()
        # Looked up on the class: a TLS transport passes unknown attributes
        # on to the TCP transport beneath it, whose half-close would cut the
        # TLS layer off mid-stream.
        loseWriteConnection = getattr(type(transport), "loseWriteConnection", None)
        if self._readClosed:
            transport.loseConnection()
        elif loseWriteConnection is None:
            # No half-close here (TLS): close, but wait for the peer's part
            # of the closing handshake for a bounded time only.
            transport.loseConnection()
            self._lingerThenAbort()
        else:
            loseWriteConnection(transport)
            transport.resumeProducing()

    def _lingerThenAbort(self) -> None:
        self._linger = self.factory.reactor.callLater(
            self.factory.lingerTimeout, self.transport.abortConnection
        )

    def _isClosing(self) -> bool:
        # A method, so that type checkers do not assume it unchanged.
        return self._closing

    def _close(self) -> None:
        """
        Stop reading; once the acks owed so far are written, close.
        """
        self._closing = True
        self.paused = True
        self._cancelNextTurn()
        # Nothing more is parsed: a partial frame will never be complete.
        self.dropGathered()

    # The memory budget: the factory counts what partial frames hold.

    def gatheredChanged(self, held: int) -> None:
        factory = self.factory
        grown = held - self._held
        self._held = held
        factory.gatheredChanged(self, grown)

    def overMemoryBudget(self, total: int) -> None:
        """
        Partial frames hold more than --max-incoming-memory and this
        connection's is the largest: close it, after the acks it is owed.
        """
        held = self._held
        self.factory.metrics.protocol_errors.labels(MEMORY_BUDGET).inc()
        self.factory.errorLines.emit(
            MEMORY_BUDGET,
            "closing {peer}: {reason}: its partial frame of {held} bytes is the "
            "largest while partial frames hold {total} bytes, above "
            "--max-incoming-memory {limit}",
            peer=describePeer(self.transport.getPeer()),
            reason=MEMORY_BUDGET,
            held=held,
            total=total,
            limit=self.factory.maxIncomingMemory,
        )
        self._close()
        self.endOfRead()

    # Fairness: at most framesPerTurn frames per turn through the general path.

    def turnEnded(self) -> None:
        """
        The general path handled its frames for this turn: read nothing
        more until the rest of what was read is handled, on the next turn.
        """
        self.transport.pauseProducing()
        if self._nextTurnCall is None:
            self._nextTurnCall = self.factory.reactor.callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        self._nextTurnCall = None
        if self._closing or self.paused:
            # Closing: nothing more is handled.  Paused for unsent acks:
            # resumeProducing carries on from the buffer.
            return
        self.dataReceived(b"")
        if self._nextTurnCall is None and not self.paused and not self._closing:
            self.transport.resumeProducing()

    def _cancelNextTurn(self) -> None:
        call, self._nextTurnCall = self._nextTurnCall, None
        if call is not None and call.active():
            call.cancel()

    # Flow control: the transport calls these as its buffer fills and drains.

    def pauseProducing(self) -> None:
        self.factory.metrics.backpressure_pauses.inc()
        FrameReceiver.pauseProducing(self)

    def resumeProducing(self) -> None:
        if not self._closing:
            FrameReceiver.resumeProducing(self)

    def readConnectionLost(self) -> None:
        """
        The client will send no more: answer what it sent, then close.
        """
        self._readClosed = True
        if self._closed:
            self.transport.loseConnection()
        else:
            self._close()
            self.endOfRead()

    def writeConnectionLost(self) -> None:
        """
        Every ack is out and the peer has been sent end-of-file: drop its
        input until it closes too, for at most C{lingerTimeout} seconds.
        """
        self._lingerThenAbort()

    def timeoutConnection(self) -> None:
        self.factory.metrics.idle_timeouts.inc()
        self.factory.errorLines.emit(
            "idle_timeout",
            "closing {peer}: idle for {seconds}s",
            level="info",
            peer=describePeer(self.transport.getPeer()),
            seconds=self.timeOut,
        )
        self.transport.abortConnection()

    def drain(self) -> None:
        """
        For shutdown: stop reading, answer every complete frame already
        received (even while paused), and close once those acks are written.
        """
        if self._closing:
            return
        self._cancelNextTurn()
        self.transport.pauseProducing()
        self.paused = False
        # Everything already read is answered now, however many frames.
        self.framesPerTurn = None
        self.parseReceived()
        self._close()
        self.endOfRead()

    def parseReceived(self) -> None:
        """
        Deliver every complete frame received and not yet parsed (for
        L{drain}: reading has stopped).
        """
        FrameReceiver.dataReceived(self, b"")


if TYPE_CHECKING:
    _Factory = ServerFactory[TcpDemoServerProtocol]
else:  # Twisted before 26 (PyPy 3.9's) has no generic Factory at run time.
    _Factory = ServerFactory


@attrs.define(eq=False, slots=False, repr=False)
class TcpDemoServerFactory(_Factory):
    """
    Shared configuration, metrics and the set of open connections.
    """

    metrics: ServerMetrics
    maxFrameLength: int = DEFAULT_MAX_FRAME_LENGTH
    maxConnections: int | None = None
    idleTimeout: float | None = None
    writeBufferLimit: int = DEFAULT_WRITE_BUFFER_LIMIT
    authToken: bytes | None = None
    lingerTimeout: float = 5.0
    reactor: Any = attrs.field(default=None)
    refusalLogInterval: float = 10.0
    #: The bound on the bytes all partial frames hold (--max-incoming-memory).
    maxIncomingMemory: int = DEFAULT_MAX_INCOMING_MEMORY
    framesPerTurn: int | None = FRAMES_PER_TURN
    #: Plain TCP and unix sockets read with recv_into one shared buffer
    #: (see L{tcpdemo.readinto}): by default on PyPy only.
    readInto: bool = readinto.DEFAULT

    protocol = TcpDemoServerProtocol
    noisy = False
    log = Logger()

    connections: dict[TcpDemoServerProtocol, None] = attrs.field(factory=dict, init=False)
    _closed: dict[TcpDemoServerProtocol, defer.Deferred[None]] = attrs.field(
        factory=dict, init=False
    )
    #: The counts of every read, moved into C{metrics} in bulk.
    tally: ReadTally = attrs.field(init=False)
    _refusedSinceLog: int = attrs.field(default=0, init=False)
    #: What every connection reads into when C{readInto} is set.
    readBuffer: bytearray = attrs.field(factory=lambda: bytearray(READ_SIZE), init=False)
    _lastRefusalLog: float | None = attrs.field(default=None, init=False)
    #: The per-connection error lines, rate-limited (the counters are not).
    errorLines: LineBudget = attrs.field(init=False)
    #: Bytes held in partial frames being gathered, over all connections,
    #: and the connections that hold them.
    incomingHeld: int = attrs.field(default=0, init=False)
    _gathering: dict[TcpDemoServerProtocol, None] = attrs.field(factory=dict, init=False)
    _directSendLogged: bool = attrs.field(default=False, init=False)

    def buildProtocol(self, addr: IAddress | None) -> TcpDemoServerProtocol | None:
        if self.maxConnections is not None and len(self.connections) >= self.maxConnections:
            self._refused(addr)
            return None
        return super().buildProtocol(addr)

    def _refused(self, addr: IAddress | None) -> None:
        """
        Count a refusal; log at most one line per C{refusalLogInterval}.
        """
        self.metrics.connections_refused.inc()
        self._refusedSinceLog += 1
        now = self._now()
        last = self._lastRefusalLog
        if last is None or now - last >= self.refusalLogInterval:
            self.log.warn(
                "refused {count} connection(s), latest from {peer}: "
                "{limit} connections are open (--max-connections)",
                count=self._refusedSinceLog,
                peer=describePeer(addr),
                limit=self.maxConnections,
            )
            self._refusedSinceLog = 0
            self._lastRefusalLog = now

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        self.tally = ReadTally(self.metrics)
        # Logged under the protocol's namespace, as they were before.
        self.errorLines = LineBudget(self.protocol.log, self.reactor)

    def gatheredChanged(self, protocol: TcpDemoServerProtocol, grown: int) -> None:
        """
        C{protocol}'s partial frame grew by C{grown} bytes (or shrank): if
        partial frames now hold more than C{maxIncomingMemory}, close the
        connections with the largest ones until they do not.

        Closing the largest rather than the newest: a slow client cannot
        keep the memory from everyone else by arriving first, and clients
        of small frames are never the ones closed.
        """
        self.incomingHeld += grown
        if protocol._held:
            self._gathering[protocol] = None
        else:
            self._gathering.pop(protocol, None)
        if grown > 0:
            while self.incomingHeld > self.maxIncomingMemory and self._gathering:
                largest = max(self._gathering, key=lambda p: p._held)
                largest.overMemoryBudget(self.incomingHeld)

    def directSendUnavailable(self, transport: object, missing: list[str]) -> None:
        """
        This Twisted's TCP transport lacks what the direct send reads: say
        so once; acks go through C{transport.write}.
        """
        if not self._directSendLogged:
            self._directSendLogged = True
            self.log.warn(
                "{cls} has no {missing}: acks are sent with transport.write",
                cls=type(transport).__name__,
                missing=", ".join(missing),
            )

    def startFactory(self) -> None:
        # Listening: counts may wait a moment to be moved in bulk.  Before
        # and after (tests, the drain at shutdown) they are moved at once.
        self.tally.start(self.reactor.callLater)

    def stopFactory(self) -> None:
        self.tally.stop()
        self.errorLines.flush()

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def connectionOpened(self, protocol: TcpDemoServerProtocol) -> None:
        self.connections[protocol] = None
        self.metrics.connections.inc()
        self.metrics.client_connected.inc()

    def connectionClosed(self, protocol: TcpDemoServerProtocol) -> None:
        if protocol in self.connections:
            del self.connections[protocol]
            self.metrics.client_connected.dec()
        waiting = self._closed.pop(protocol, None)
        if waiting is not None:
            waiting.callback(None)

    def drainAll(self) -> defer.Deferred[None]:
        """
        Answer everything already received on every connection, then close
        them all; fires when the last one has closed.
        """
        waits = []
        for protocol in list(self.connections):
            d: defer.Deferred[None] = defer.Deferred()
            self._closed[protocol] = d
            waits.append(d)
            protocol.drain()
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def abortAll(self) -> None:
        """
        Close every connection now, written or not.
        """
        for protocol in list(self.connections):
            protocol.transport.abortConnection()
