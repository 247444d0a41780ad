"""
Generating load: connections, the three load shapes, the end of a run.

Load shapes:
  - window W > 0: each connection keeps W Submits awaiting an ack, topping
    up as acks arrive (W = 1 is request/response);
  - window 0: each connection writes as fast as its transport takes the
    bytes, as the reference client does;
  - rate R: open loop, R Submits per second across all connections on a
    fixed schedule, whether or not acks came back.

Submits are encoded in batches, one C{transport.write} per batch.  A
window batch's send time is taken once, just before that write; in the open
loop each Submit's latency counts from the time the schedule gave it, so a
sender that falls behind (a pause of the client itself) does not hide the
wait from the figures (no "coordinated omission").
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo.client.checker import (
    BAD_RESULT,
    EARLY_CLOSE,
    FATAL_KINDS,
    MISSING_ACKS,
    AckChecker,
    Problem,
    showId,
)
from tcpdemo.client.connection import describeSetupFailure
from tcpdemo.client.endpoint import EndpointError, clientEndpoint, isTLS
from tcpdemo.client.ids import BLOCK, SUFFIXES, idBlocks, idBytes
from tcpdemo.client.stats import MAX_MESSAGES, LoadStats, Report, cpuSeconds
from tcpdemo.client.wire import NotAConnAck, connFrame, readConnAck, submitHeader
from tcpdemo.endpoints import describePeer

#: Submits awaiting an ack per connection, unless told otherwise: deep enough
#: to keep a server busy, bounded so that latency means something.
DEFAULT_WINDOW = 1000

#: Submits per write when the window is unbounded; the transport pauses us
#: once its buffer is full, so this only sets the size of each write.
UNBOUNDED_BATCH = 512

#: How often the open-loop sender wakes up (at most), in seconds.
MAX_TICK = 0.001

#: How many different payloads the reference-style generator cycles through
#: (it must divide the id block size, see L{SubmitEncoder}).
CODENAME_POOL = 1000

_WORDS = (
    ("amber", "brisk", "calm", "dusky", "eager", "fuzzy", "gentle", "hollow"),
    ("iron", "jolly", "lunar", "mellow", "noble", "olive", "proud", "quiet"),
    ("raven", "salmon", "tiger", "walrus", "falcon", "badger", "otter", "lynx"),
    ("anchor", "beacon", "canyon", "delta", "ember", "fjord", "glacier", "harbor"),
)


def codenames(count: int, rng: random.Random) -> list[bytes]:
    """
    Random four-part codenames of 15 to 30 ASCII bytes, like the payloads
    of the reference client.
    """
    names: list[bytes] = []
    while len(names) < count:
        name = "-".join(rng.choice(words) for words in _WORDS)
        if 15 <= len(name) <= 30:
            names.append(name.encode("ascii"))
    return names


def fixedPayload(size: int) -> bytes:
    """
    A payload of exactly C{size} printable bytes.
    """
    pattern = b"tcpdemo-payload-"
    return (pattern * (size // len(pattern) + 1))[:size]


class SubmitEncoder:
    """
    Encodes runs of Submits with consecutive ids into one byte string.

    Submit number C{n} carries C{payloads[n % len(payloads)]}.  Every
    Submit frame is cut into pieces that do not depend on the id prefix:
    C{[header] prefix [suffix, payload, next header] prefix [...]}, so a
    run of up to 1000 Submits is one join of precomputed pieces with the
    prefix as the separator (see L{tcpdemo.client.ids}).
    """

    def __init__(self, payloads: Sequence[bytes]) -> None:
        if not payloads or BLOCK % len(payloads):
            raise ValueError(f"the number of payloads must divide {BLOCK}")
        cycle = [payloads[k % len(payloads)] for k in range(BLOCK)]
        self.headers = [submitHeader(len(p)) for p in cycle]
        #: Suffix, payload and the next Submit's header, by suffix position.
        self.pieces = [SUFFIXES[k] + cycle[k] + self.headers[(k + 1) % BLOCK] for k in range(BLOCK)]

    def encode(self, first: int, count: int) -> bytes:
        """
        Submits number C{first} to C{first + count - 1}, back to back.
        """
        pieces = self.pieces
        parts = [self.headers[first % BLOCK]]
        for prefix, lo, hi in idBlocks(first, count):
            parts += (prefix, prefix.join(pieces[lo:hi]))
        # The last piece ends with the header of the Submit after the run.
        return b"".join(parts)[: -len(self.headers[(first + count) % BLOCK])]


@attrs.frozen
class LoadConfig:
    """
    What to run.  C{endpoint} is a Twisted client endpoint string.  A run
    stops sending at C{duration} seconds or after C{count} Submits in all,
    whichever comes first; with neither, when L{LoadRun.interrupt} is called.
    """

    endpoint: str
    connections: int = 100
    window: int = DEFAULT_WINDOW
    rate: float | None = None
    duration: float | None = None
    count: int | None = None
    payloadSize: int | None = None
    conn: bool = False
    token: bytes = b""
    drainTimeout: float = 5.0
    connectTimeout: float = 10.0
    #: A non-zero result is a C{bad_result} error, not just counted.
    failOnResult: bool = False
    #: Seconds of the same load sent first and left out of the figures
    #: (latency, throughput, CPU, sender pauses): a JIT compiles the client's
    #: hot loops then, not while it measures.  Acks are checked throughout.
    #: A C{count} reached inside the warm-up leaves nothing measured (the
    #: command line refuses C{--warmup} with C{--count}).
    warmup: float = 0.0
    #: For C{ssl:} and C{tls:}: verify the server's certificate (and name)
    #: against C{trustRoot} (a PEM file or a directory of C{*.pem}), or
    #: the description's own CAs, or the platform's.
    tlsVerify: bool = True
    trustRoot: str | None = None

    def asJSON(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "connections": self.connections,
            "shape": "rate" if self.rate is not None else "window",
            "window": None if self.rate is not None else self.window,
            "rate": self.rate,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "count": self.count,
            "payload_size": self.payloadSize,
            "conn": self.conn,
            "drain_timeout_s": self.drainTimeout,
            "fail_on_result": self.failOnResult,
            "tls_verify": self.tlsVerify if isTLS(self.endpoint) else None,
        }


class SetupError(Exception):
    """
    The run could not start: a connection or a Conn handshake failed.
    """


def quotas(count: int | None, connections: int) -> list[int | None]:
    """
    Share C{count} Submits among the connections as evenly as possible.
    """
    if count is None:
        return [None] * connections
    share, extra = divmod(count, connections)
    return [share + (1 if i < extra else 0) for i in range(connections)]


@implementer(IHandshakeListener)
class LoadProtocol(Protocol):
    """
    One connection of a run: writes Submits, checks every ack.

    It is a streaming producer for its own transport, so in the window
    shapes it stops writing while the transport's buffer is full.
    """

    log = Logger()
    #: A TCP, TLS or UNIX transport: also an IProducer/IConsumer with
    #: abortConnection, which Twisted's ITransport does not declare.
    transport: Any

    def __init__(self, run: LoadRun, index: int, quota: int | None) -> None:
        self.run = run
        self.index = index
        self.quota = quota
        self.name = f"connection {index}"
        self.stats: LoadStats = run.stats
        self.encoder = run.encoder
        self.window = run.config.window
        self.checker = AckChecker(failOnResult=run.config.failOnResult)
        #: [send time, Submits in that write still awaiting acks], oldest first.
        self.pending: deque[list[Any]] = deque()
        self.nextId = 1
        self.sending = False
        self.openLoop = run.config.rate is not None
        self.paused = False
        self.connected = False
        self.closing = False
        self.handshake: defer.Deferred[None] | None = None
        self._handshakeBuffer = b""
        #: Fires once a TLS connection's handshake is done (see L{LoadRun}).
        self.secured: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    # Connection set-up

    def connectionMade(self) -> None:
        self.connected = True
        self.name = f"connection {self.index} ({describePeer(self.transport.getHost())})"
        self.transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        # Aborted for a name that did not verify: connectionLost says why.
        if not self.secured.called and not self.transport.disconnecting:
            self.secured.callback(None)

    def sendConn(self, token: bytes) -> defer.Deferred[None]:
        """
        Send a Conn; the result fires once an accepting ConnAck arrived.
        """
        self.handshake = defer.Deferred()
        self.transport.write(connFrame(token))
        return self.handshake

    def _handshakeData(self, data: bytes) -> None:
        buffer = self._handshakeBuffer + data
        try:
            result, rest = readConnAck(buffer)
        except NotAConnAck as e:
            result, rest, why = None, b"", str(e)
        else:
            if result is None:
                self._handshakeBuffer = buffer
                return
            why = f"ConnAck result {result}: the server refused the Conn (check --token-file)"
        self._handshakeBuffer = b""
        handshake, self.handshake = self.handshake, None
        assert handshake is not None
        if result == 0:
            handshake.callback(None)
            if rest:
                self.dataReceived(rest)
            return
        handshake.errback(SetupError(f"{self.name}: {why}"))

    # Sending

    def send(self, count: int, scheduled: float | None = None, step: float = 0.0) -> None:
        """
        Write the next C{count} Submits (fewer if the quota ends) in one write.
        Their latency counts from now, or in the open loop from the times the
        schedule gave them: C{scheduled} for the first, C{step} apart.
        """
        if not self.connected:
            self._doneSending()
            return
        first = self.nextId
        quotaReached = False
        if self.quota is not None and count >= self.quota - first + 1:
            count = self.quota - first + 1
            quotaReached = True
        if count > 0:
            data = self.encoder.encode(first, count)
            self.nextId = first + count
            self.checker.owed += count
            self.stats.sent += count
            if scheduled is None:
                self.pending.append([perf_counter(), count])
            elif count == 1 or not step:
                self.pending.append([scheduled, count])
            else:
                # Only when the sender fell behind: several due at once.
                self.pending.extend([scheduled + k * step, 1] for k in range(count))
            self.transport.write(data)
        if quotaReached:
            self._doneSending()

    def _doneSending(self) -> None:
        """
        This connection will send no more: its quota is written or it closed.
        """
        if self.sending:
            self.sending = False
            self.run.senderDone(self)

    def start(self) -> None:
        """
        Begin sending, in a window shape (the open-loop sender drives itself).
        """
        self.sending = True
        if not self.openLoop:
            self._topUp()

    def stopSending(self) -> None:
        """
        The run is over: send no more.
        """
        self.sending = False

    def _topUp(self) -> None:
        """
        Fill the window, or in the unbounded shape the transport's buffer.
        """
        if self.window:
            if not self.paused:
                self.send(self.window - self.checker.owed)
            return
        while self.sending and not self.paused:
            self.send(UNBOUNDED_BATCH)  # stops at the quota or on close

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.sending and not self.openLoop:
            self._topUp()

    def stopProducing(self) -> None:
        self.paused = True

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self.handshake is not None:
            self._handshakeData(data)
            return
        now = perf_counter()
        checker = self.checker
        answered = checker.feed(data)
        if answered:
            self._recordLatency(answered, now)
            stats = self.stats
            stats.answered += answered
            stats.acked += answered
            stats.lastAckTime = now
        if checker.problems:
            self._problems()
            if checker.fatal:
                self.transport.abortConnection()
                return
        if self.sending:
            if not self.openLoop:
                self._topUp()
        elif not checker.owed:
            self.run.drained(self)

    def _recordLatency(self, count: int, now: float) -> None:
        """
        Pop C{count} Submits off the oldest writes, one histogram record per write.
        """
        pending = self.pending
        stats = self.stats
        record = stats.recordLatency
        measureFrom = stats.measureFrom
        while count:
            entry = pending[0]
            inWrite = entry[1]
            if inWrite <= count:
                pending.popleft()
                taken = inWrite
            else:
                entry[1] = inWrite - count
                taken = count
            count -= taken
            if entry[0] >= measureFrom:  # else sent in the warm-up: not measured
                record(now - entry[0], taken)

    def _problems(self) -> None:
        """
        Count what the checker found; a bad result is an answer, not an ack.
        """
        stats = self.stats
        checker = self.checker
        for problem in checker.problems:
            if problem.kind == BAD_RESULT:
                stats.acked -= 1
            elif checker.fatal and self.connected and problem.kind in FATAL_KINDS:
                # The stream is not understood any more: say what is given up.
                problem = attrs.evolve(
                    problem,
                    message=f"{problem.message}; closing the connection with "
                    f"{checker.owed} ack(s) owed",
                )
            if stats.errors < MAX_MESSAGES:
                self.log.warn(
                    "{connection}: {kind}: {message}",
                    connection=self.name,
                    kind=problem.kind,
                    message=problem.message,
                )
            stats.error(self.name, problem)
        checker.problems = []

    def reportMissing(self) -> None:
        """
        The drain timeout ran out: the acks still owed are missing.
        """
        owed = self.checker.owed
        if owed and not self.checker.fatal:
            first = idBytes(self.checker.nextId)
            self.stats.error(
                self.name,
                Problem(
                    MISSING_ACKS,
                    f"{owed} ack(s) missing: none arrived in the "
                    f"{self.run.config.drainTimeout:g}s drain timeout; first missing id "
                    f"{showId(first)}",
                ),
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        checker = self.checker
        checker.atClose()
        if not self.closing and not checker.fatal:
            owed = checker.owed
            checker.problems.append(
                Problem(
                    EARLY_CLOSE,
                    f"closed by the server ({reason.getErrorMessage()}) with {owed} ack(s) "
                    f"owed, after {checker.nextId - 1} answered",
                )
            )
        if checker.problems:
            self._problems()
        if self.handshake is not None:
            handshake, self.handshake = self.handshake, None
            handshake.errback(
                SetupError(
                    f"{self.name}: closed during the Conn handshake: {reason.getErrorMessage()}"
                )
            )
        if self.run.tls and not self.secured.called:
            self.secured.errback(SetupError(f"{self.name}: {describeSetupFailure(reason)}"))
        self._doneSending()
        self.run.connectionGone(self)
        self.lost.callback(None)


class LoadRun:
    """
    One run: connect, optionally handshake, send until the duration or the
    count is reached, wait for the acks still owed, close, report.
    """

    def __init__(
        self,
        reactor: Any,
        config: LoadConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.tls = isTLS(config.endpoint)
        self.stats = LoadStats()
        payloads = (
            codenames(CODENAME_POOL, rng or random.Random())
            if config.payloadSize is None
            else [fixedPayload(config.payloadSize)]
        )
        self.encoder = SubmitEncoder(payloads)
        self.protocols: list[LoadProtocol] = []
        self.interrupted = False
        self._sendingOver: defer.Deferred[None] = defer.Deferred()
        self._drained: defer.Deferred[None] | None = None
        self._ticker: LoopingCall | None = None
        self._tickStart = 0.0
        self._scheduled = 0
        self._lastTick: float | None = None
        self.maxTickGap: float | None = None
        self._cursor = 0
        self._sendersLeft = 0
        self._senders: list[LoadProtocol] | None = None
        self._started = False
        self._stopTimer: Any = None
        self._warmupTimer: Any = None

    # Progress, for the live display

    def inFlight(self) -> int:
        return sum(p.checker.owed for p in self.protocols if p.connected)

    # Phases

    @defer.inlineCallbacks
    def run(self) -> Any:
        """
        Do the whole run; fires with a L{Report}, or fails with L{SetupError}.
        """
        yield self._connectAll()
        if self.config.conn:
            yield self._handshakeAll()
        self._startSending()
        yield self._sendingOver
        # Let the callback that ended sending finish before draining.
        yield task.deferLater(self.reactor, 0, lambda: None)
        yield self._drain()
        report = self._report()
        yield self._closeAll()
        return report

    def _connectAll(self) -> defer.Deferred[None]:
        config = self.config
        try:
            endpoint = clientEndpoint(
                self.reactor,
                config.endpoint,
                tlsVerify=config.tlsVerify,
                trustRoot=config.trustRoot,
            )
        except EndpointError as e:
            return defer.fail(SetupError(str(e)))
        tls = self.tls
        attempts = []
        # The open-loop sender counts for all connections; the others share it.
        count = config.count if config.rate is None else None
        for index, quota in enumerate(quotas(count, config.connections)):
            protocol = LoadProtocol(self, index, quota)
            self.protocols.append(protocol)
            d = connectProtocol(endpoint, protocol)
            if tls:
                # Connected is not enough: the certificate must pass too.
                d.addCallback(lambda _, p=protocol: p.secured)
            d.addTimeout(config.connectTimeout, self.reactor)
            attempts.append(d)
        return self._allOrFail(attempts, "could not connect to " + config.endpoint)

    def _handshakeAll(self) -> defer.Deferred[None]:
        attempts = []
        for protocol in self.protocols:
            d = protocol.sendConn(self.config.token)
            d.addTimeout(self.config.connectTimeout, self.reactor)
            attempts.append(d)
        return self._allOrFail(attempts, "Conn handshake failed")

    def _allOrFail(self, attempts: list[defer.Deferred[Any]], what: str) -> defer.Deferred[None]:
        """
        Wait for every attempt; if any failed, close all and raise L{SetupError}.
        """
        done = defer.DeferredList(attempts, consumeErrors=True)

        def check(results: list[tuple[bool, Any]]) -> Any:
            failures = [r for ok, r in results if not ok]
            if not failures:
                return None
            first = failures[0].value
            detail = str(first) or type(first).__name__
            if isinstance(first, defer.TimeoutError):
                detail = f"timed out after {self.config.connectTimeout:g}s"
            message = f"{what}: {detail}"
            if len(failures) > 1:
                message += f" ({len(failures)} of {len(results)} connections failed)"
            d = self._closeAll()
            d.addCallback(lambda _: Failure(SetupError(message)))
            return d

        return done.addCallback(check)

    def _startSending(self) -> None:
        config = self.config
        now = perf_counter()
        self._started = True
        self.stats.start(now)
        if self._sendingOver.called:
            return  # interrupted while connecting
        if config.warmup:
            self.stats.measureFrom = float("inf")  # nothing is measured yet
            self._warmupTimer = self.reactor.callLater(config.warmup, self._endWarmup)
        self._sendersLeft = len(self.protocols)
        for protocol in self.protocols:
            protocol.start()
        if config.rate is not None:
            self._tickStart = now
            interval = min(max(1.0 / config.rate, MAX_TICK), 0.1)
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = self.reactor
            self._ticker.start(interval, now=True)
        if config.duration is not None:
            self._stopTimer = self.reactor.callLater(
                config.warmup + config.duration, self.stopSending
            )
        if not self.live():
            self.stopSending()

    def _endWarmup(self) -> None:
        """
        The warm-up is over: the figures start from here, for Submits sent
        (or, in the open loop, scheduled) from now on.
        """
        self._warmupTimer = None
        self.stats.restart(perf_counter())
        self.maxTickGap = None
        self._lastTick = None
        # The measured window lasts --duration from here, even if a pause
        # made the warm-up end late.
        timer = self._stopTimer
        if timer is not None and timer.active() and self.config.duration is not None:
            timer.reset(self.config.duration)

    def _tick(self) -> None:
        """
        Open loop: write every Submit the schedule says is due by now.
        """
        config = self.config
        assert config.rate is not None
        now = perf_counter()
        if self._lastTick is not None:
            gap = now - self._lastTick
            if self.maxTickGap is None or gap > self.maxTickGap:
                self.maxTickGap = gap
        self._lastTick = now
        due = int((now - self._tickStart) * config.rate) + 1
        if config.count is not None and due > config.count:
            due = config.count
        first = self._scheduled
        count = due - first
        if count > 0:
            self._scheduled = due
            self._share(count, first)
        if config.count is not None and self._scheduled >= config.count:
            self.stopSending()

    def _share(self, count: int, first: int) -> None:
        """
        Send C{count} Submits, numbers C{first} on of the schedule, spread
        evenly over the connections; the remainder goes round robin, so that
        none is favoured.  Submit C{j} of the batch goes to the C{j}th
        connection from the cursor (modulo their number), and keeps the time
        the schedule gave it for its latency.
        """
        senders = self._senders
        if senders is None:
            senders = self._senders = [p for p in self.protocols if p.sending]
        size = len(senders)
        if not size:
            return
        rate = self.config.rate
        assert rate is not None
        origin = self._tickStart + first / rate
        step = size / rate
        share, extra = divmod(count, size)
        start = self._cursor % size
        if share:
            for i, protocol in enumerate(senders):
                position = (i - start) % size
                protocol.send(
                    share + (1 if position < extra else 0), origin + position / rate, step
                )
        else:
            for position in range(extra):
                senders[(start + position) % size].send(1, origin + position / rate)
        self._cursor = start + extra

    def live(self) -> list[LoadProtocol]:
        return [p for p in self.protocols if p.connected and not p.checker.fatal]

    def stopSending(self) -> None:
        """
        Stop writing Submits: the duration or count was reached, or the user
        interrupted.  Safe to call more than once.
        """
        if self._sendingOver.called:
            return
        if self.stats.sendEndTime is None:
            self.stats.sendEndTime = perf_counter()
        for timer in (self._stopTimer, self._warmupTimer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        for protocol in self.protocols:
            protocol.stopSending()
        self._sendingOver.callback(None)

    def interrupt(self) -> defer.Deferred[None]:
        """
        Stop early (Ctrl-C): drain and report as at a normal end.
        """
        self.interrupted = True
        self.stopSending()
        return self._sendingOver

    def senderDone(self, protocol: LoadProtocol) -> None:
        """
        A connection stopped sending on its own: it wrote its share of
        C{--count}, or it closed.  When none is left, sending is over.
        """
        self._senders = None
        self._sendersLeft -= 1
        if self._started and self._sendersLeft <= 0:
            self.stopSending()

    def drained(self, protocol: LoadProtocol) -> None:
        """
        A connection has no ack owed any more, after sending stopped.
        """
        if self._drained is not None and not self._drained.called and self._allAnswered():
            self._drained.callback(None)

    def connectionGone(self, protocol: LoadProtocol) -> None:
        if self._drained is not None:
            self.drained(protocol)

    def _allAnswered(self) -> bool:
        return not any(p.checker.owed for p in self.live())

    def _drain(self) -> defer.Deferred[None]:
        """
        Wait for the acks still owed; give up once none has arrived for the
        drain timeout.  A server still answering is slow, not wrong: with a
        deep pipeline, the kernel's socket buffers alone can hold seconds of
        work.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._drained = d
        if self._allAnswered():
            d.callback(None)
            return d
        timeout = self.config.drainTimeout
        stats = self.stats

        def check() -> None:
            if d.called:
                return
            last = max(stats.lastAckTime or 0.0, stats.sendEndTime or 0.0)
            quiet = perf_counter() - last
            if quiet >= timeout:
                d.callback(None)
            else:
                timer[0] = self.reactor.callLater(timeout - quiet, check)

        timer = [self.reactor.callLater(timeout, check)]

        def stopTimer(result: object) -> object:
            if timer[0].active():
                timer[0].cancel()
            return result

        return d.addBoth(stopTimer)

    def _report(self) -> Report:
        """
        Snapshot the figures, counting acks still owed as missing.
        """
        cpuUser, cpuSystem = cpuSeconds()
        for protocol in self.live():
            protocol.reportMissing()
        stats = self.stats
        assert stats.startTime is not None
        # The run lasts until sending stopped or the last ack came, whichever
        # is later; the quiet wait of a drain timeout is not part of it.
        sendEnd = stats.sendEndTime if stats.sendEndTime is not None else perf_counter()
        end = max(sendEnd, stats.lastAckTime or 0.0)
        return Report(
            config=self.config.asJSON(),
            connections=len(self.protocols),
            sent=stats.sent,
            acked=stats.acked,
            windowSent=stats.sent - stats.sentBefore,
            windowAcked=stats.acked - stats.ackedBefore,
            warmup=self.config.warmup,
            answered=stats.answered,
            unanswered=stats.sent - stats.answered,
            errors=stats.errors,
            errorsByKind=dict(stats.errorsByKind),
            messages=list(stats.messages),
            duration=max(end - stats.startTime, 0.0),
            sendDuration=max(sendEnd - stats.startTime, 0.0),
            latencyUs=stats.latency(),
            cpuUser=cpuUser - stats.cpuStart[0],
            cpuSystem=cpuSystem - stats.cpuStart[1],
            interrupted=self.interrupted,
            maxTickGap=self.maxTickGap,
            results=self.results(),
        )

    def results(self) -> dict[str, int]:
        """
        Acks by result byte over every connection, only those that occurred.
        """
        totals = [0] * 256
        for protocol in self.protocols:
            for result, n in enumerate(protocol.checker.results):
                totals[result] += n
        return {str(result): n for result, n in enumerate(totals) if n}

    def _closeAll(self, grace: float = 2.0) -> defer.Deferred[None]:
        """
        Close every connection; abort those not closed after C{grace} seconds.
        """
        waits = []
        for protocol in self.protocols:
            protocol.closing = True
            if protocol.connected:
                protocol.transport.loseConnection()
                waits.append(protocol.lost)
        if not waits:
            return defer.succeed(None)
        done = defer.DeferredList(waits)

        def abort() -> None:
            for protocol in self.protocols:
                if protocol.connected:
                    protocol.transport.abortConnection()

        timer = self.reactor.callLater(grace, abort)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(finished)
