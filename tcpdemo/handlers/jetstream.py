"""
The C{jetstream} handler: every Submit stored in a NATS JetStream stream (a
replicated, RAFT-based store) before it is acked with result 0.

C{--handler jetstream:URLS[?stream=NAME&subject=S&replicas=N&timeout=T]},
URLS a comma-separated list of C{nats://host:port}.  The stream is created
when missing (file storage; 3 replicas when 3 or more servers are listed,
else 1).

Throughput comes from the batch message format (docs/jetstream.md): one
JetStream message per handler batch, whose body is the batch's Submit frames
exactly as they came on the wire, with headers for the count, the peer and
the time received.  One PubAck then covers hundreds of Submits, and many
publishes are in flight at once (one per batch handed over).

nats-py is an asyncio library; it runs in a private loop in one thread
(L{tcpdemo.handlers.asyncio_thread}), so twistd keeps its default reactor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qsl

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo.handlers import HandlerArgumentError, ISubmitHandler, Results, SubmitBatch
from tcpdemo.handlers.asyncio_thread import AsyncioThread

#: The stored format's version (header C{Tcpdemo-Format}); docs/jetstream.md.
FORMAT_VERSION = "1"
HEADER_FORMAT = "Tcpdemo-Format"
HEADER_COUNT = "Tcpdemo-Count"
HEADER_PEER = "Tcpdemo-Peer"
HEADER_RECEIVED = "Tcpdemo-Received"
#: JetStream's own de-duplication id: a batch re-published after a timeout
#: is stored once (within the stream's duplicate window).
HEADER_MSG_ID = "Nats-Msg-Id"

DEFAULT_STREAM = "TCPDEMO"
DEFAULT_SUBJECT = "tcpdemo.submits"
#: Seconds a batch is retried (publish timeouts, no leader, reconnecting)
#: before it fails with result 1; the server's --handler-timeout (30 s by
#: default), when shorter, answers 2 first and cancels the retries.
DEFAULT_TIMEOUT = 120.0
#: Seconds one publish waits for its PubAck before it is sent again.
PUBLISH_TIMEOUT = 2.0

log = Logger()
T = TypeVar("T")


@attrs.frozen
class JetStreamSpec:
    """
    What C{jetstream:URLS?...} says.
    """

    servers: tuple[str, ...]
    stream: str = DEFAULT_STREAM
    subject: str = DEFAULT_SUBJECT
    replicas: int = 1
    timeout: float = DEFAULT_TIMEOUT


def parseSpec(argument: str | None) -> JetStreamSpec:
    """
    Parse C{URLS[?stream=NAME&subject=S&replicas=N&timeout=T]}, or raise
    L{HandlerArgumentError} saying what is wrong.
    """
    usage = "jetstream:nats://HOST:PORT[,nats://HOST:PORT...][?stream=S&subject=S&replicas=N]"
    if not argument:
        raise HandlerArgumentError(f"jetstream needs server URLs: {usage}")
    urls, _, query = argument.partition("?")
    servers = tuple(url.strip() for url in urls.split(",") if url.strip())
    if not servers:
        raise HandlerArgumentError(f"jetstream needs server URLs: {usage}")
    for url in servers:
        scheme, sep, hostPort = url.partition("://")
        if not sep or scheme not in ("nats", "tls") or not hostPort:
            raise HandlerArgumentError(f"jetstream: {url!r} is not a nats://HOST:PORT URL")
    fields: dict[str, Any] = {"replicas": 3 if len(servers) >= 3 else 1}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in ("stream", "subject"):
            if not value or any(c in value for c in " \t\r\n"):
                raise HandlerArgumentError(f"jetstream: bad {key} {value!r}")
            if key == "stream" and any(c in value for c in ".*>"):
                raise HandlerArgumentError(
                    f"jetstream: a stream name has no '.', '*', '>': {value!r}"
                )
            fields[key] = value
        elif key == "replicas":
            if not value.isdigit() or not 1 <= int(value) <= 5:
                raise HandlerArgumentError(f"jetstream: replicas is 1 to 5, not {value!r}")
            fields[key] = int(value)
        elif key == "timeout":
            try:
                fields[key] = float(value)
            except ValueError:
                fields[key] = -1.0
            if not fields[key] > 0:
                raise HandlerArgumentError(f"jetstream: timeout is seconds > 0, not {value!r}")
        else:
            raise HandlerArgumentError(
                f"jetstream: unknown option {key!r} (stream, subject, replicas, timeout)"
            )
    return JetStreamSpec(servers=servers, **fields)


def batchHeaders(batch: SubmitBatch, messageId: str) -> dict[str, str]:
    """
    The headers of the JetStream message that stores C{batch}.
    """
    return {
        HEADER_FORMAT: FORMAT_VERSION,
        HEADER_COUNT: str(batch.count),
        HEADER_PEER: batch.peer,
        HEADER_RECEIVED: repr(batch.received),
        HEADER_MSG_ID: messageId,
    }


def decodeMessage(
    data: bytes, headers: dict[str, str] | None, sequence: int
) -> list[dict[str, Any]]:
    """
    The Submits one stored message holds, as C{tcpdemo-dump} prints them;
    L{ValueError} when it is not a batch message of a known format.
    """
    headers = headers or {}
    version = headers.get(HEADER_FORMAT)
    if version != FORMAT_VERSION:
        raise ValueError(f"stream message {sequence}: unknown {HEADER_FORMAT} {version!r}")
    count = int(headers[HEADER_COUNT])
    received = float(headers[HEADER_RECEIVED])
    peer = headers.get(HEADER_PEER, "")
    batch = SubmitBatch(frames=data, count=count, connection=0, peer=peer, received=received)
    rows = [
        {
            "id": submitId.hex(),
            "payload": payload.hex(),
            "received": received,
            "peer": peer,
            "stream_seq": sequence,
        }
        for submitId, payload in batch.submits()
    ]
    if len(rows) != count:
        raise ValueError(f"stream message {sequence}: {HEADER_COUNT} {count}, holds {len(rows)}")
    return rows


def _retryable(error: BaseException) -> bool:
    """
    Whether a failed publish may succeed if sent again: no PubAck in time, no
    stream leader or responder for now, the client reconnecting.
    """
    import nats.errors
    import nats.js.errors

    if isinstance(error, nats.js.errors.APIError):
        return error.code == 503
    return isinstance(
        error,
        (
            nats.errors.TimeoutError,
            asyncio.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.FlushTimeoutError,
        ),
    )


class _Connection:
    """
    The asyncio side: one nats-py connection and its JetStream context.
    Every method runs in the handler's loop thread.
    """

    def __init__(self, spec: JetStreamSpec, report: Callable[[str], None]) -> None:
        self._spec = spec
        self._report = report
        self._nc: Any = None
        self._js: Any = None
        self._lastError = 0.0

    async def open(self, createStream: bool = True) -> str:
        import nats

        async def onError(error: Exception) -> None:
            # Reconnect attempts fail every reconnect_time_wait while the
            # cluster is away: one line per 10 s at most.
            now = time.monotonic()
            if now - self._lastError >= 10.0:
                self._lastError = now
                self._report(f"jetstream: connection error: {error!r}")

        async def onDisconnected() -> None:
            self._report("jetstream: disconnected from NATS, reconnecting")

        async def onReconnected() -> None:
            self._report(f"jetstream: reconnected to {self._nc.connected_url.netloc}")

        connecting = nats.connect(
            servers=list(self._spec.servers),
            name="tcpdemo",
            error_cb=onError,
            disconnected_cb=onDisconnected,
            reconnected_cb=onReconnected,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            # Publishes made while reconnecting wait here (then flush):
            # bounded, beyond it they are retried.
            pending_size=64 * 1024 * 1024,
        )
        # With reconnects unbounded, nats-py would try the first connection
        # for ever too: the spec's timeout bounds it.
        try:
            self._nc = await asyncio.wait_for(connecting, self._spec.timeout)
        except asyncio.TimeoutError:
            raise ConnectionError(
                f"no NATS server answered within {self._spec.timeout:g} s "
                f"({', '.join(self._spec.servers)})"
            ) from None
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT)
        if not createStream:
            return ""
        # A cluster just started may still be electing its leaders.
        return await self.retrying(self._ensureStream)

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """
        C{call()}, again after transient failures (no leader yet, a node
        just lost, no answer in time) until the spec's timeout.
        """
        deadline = time.monotonic() + self._spec.timeout
        while True:
            try:
                return await call()
            except Exception as error:
                if not _retryable(error) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.2)

    async def _ensureStream(self) -> str:
        import nats.js.errors
        from nats.js.api import StorageType

        spec = self._spec
        try:
            info = await self._js.stream_info(spec.stream)
            what = "using"
        except nats.js.errors.NotFoundError:
            info = await self._js.add_stream(
                name=spec.stream,
                subjects=[spec.subject],
                num_replicas=spec.replicas,
                storage=StorageType.FILE,
            )
            what = "created"
        config = info.config
        if spec.subject not in (config.subjects or []):
            raise HandlerArgumentError(
                f"jetstream: stream {spec.stream} takes subjects {config.subjects}, "
                f"not {spec.subject!r}"
            )
        return (
            f"jetstream: {what} stream {spec.stream} (subject {spec.subject}, "
            f"{config.num_replicas} replicas) on {self._nc.connected_url.netloc}"
        )

    async def publish(self, frames: bytes, headers: dict[str, str]) -> int:
        """
        Publish one batch message until JetStream acks it; its stream
        sequence.  Transient failures are retried until the spec's timeout.
        """
        deadline = time.monotonic() + self._spec.timeout
        pause = 0.05
        while True:
            try:
                ack = await self._js.publish(
                    self._spec.subject, frames, timeout=PUBLISH_TIMEOUT, headers=headers
                )
                return int(ack.seq)
            except Exception as error:
                if not _retryable(error) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def close(self) -> None:
        """
        Close the connection, flushing what is buffered; bounded, as the
        cluster may be unreachable at shutdown.
        """
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.close(), 5.0)
            except asyncio.TimeoutError:
                self._report("jetstream: NATS connection not closed within 5 s; leaving it")

    async def streamState(self) -> tuple[int, int]:
        """
        The stream's (message count, last sequence).
        """
        info = await self.retrying(lambda: self._js.stream_info(self._spec.stream))
        return int(info.state.messages), int(info.state.last_seq)

    async def subscribeAll(self) -> Any:
        """
        An ordered consumer over the whole stream, from its first message.
        """
        from nats.js.api import DeliverPolicy

        return await self.retrying(
            lambda: self._js.subscribe(
                self._spec.subject,
                stream=self._spec.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
        )


@implementer(ISubmitHandler)
class JetStreamHandler:
    """
    Store every batch as one JetStream message; result 0 once it is acked.
    """

    def __init__(self, spec: JetStreamSpec, reactor: Any) -> None:
        self.spec = spec
        self._reactor = reactor
        self._thread = AsyncioThread(reactor, "tcpdemo-jetstream")
        self._connection = _Connection(spec, self._report)
        # Nats-Msg-Id: this handler's own prefix and a counter.
        self._idPrefix = uuid.uuid4().hex[:16] + "."
        self._published = 0

    def _report(self, line: str) -> None:
        """
        Log one line from the loop thread (twisted.logger is the reactor's).
        """
        self._reactor.callFromThread(log.info, "{line}", line=line)

    def startHandler(self) -> Deferred[None]:
        """
        Connect and make sure of the stream, waiting here: the server may
        start its handler before the reactor runs, and listens only once
        this has returned.  Each step is bounded by the spec's timeout.
        """
        self._thread.start()
        try:
            line = self._thread.runBlocking(2 * self.spec.timeout + 10, self._connection.open)
        except BaseException:
            failure = Failure()
            try:
                self._thread.runBlocking(5, self._connection.close)
            except Exception:
                pass  # failing already: the first error is the one to tell
            self._thread.stopNow()
            return fail(failure)
        log.info("{line}", line=line)
        return succeed(None)

    def handle(self, batch: SubmitBatch) -> Deferred[Results]:
        self._published += 1
        headers = batchHeaders(batch, f"{self._idPrefix}{self._published}")
        allOk: Results = bytes(batch.count)

        def stored(sequence: int) -> Results:
            return allOk

        return self._thread.run(self._connection.publish, batch.frames, headers).addCallback(stored)

    def stopHandler(self) -> Deferred[None]:
        if not self._thread.running:
            return succeed(None)
        d = self._thread.run(self._connection.close)
        d.addErrback(lambda reason: log.failure("jetstream: closing NATS", reason))
        d.addCallback(lambda _: self._thread.stop())
        return d


def _requireClient() -> None:
    """
    nats-py is an extra: say how to get it, in one line.
    """
    try:
        import nats  # noqa: F401
    except ImportError:
        raise HandlerArgumentError(
            "jetstream needs nats-py: pip install tcpdemo[jetstream]"
        ) from None


def makeHandler(argument: str | None, reactor: Any) -> JetStreamHandler:
    spec = parseSpec(argument)
    _requireClient()
    return JetStreamHandler(spec, reactor)


def readStored(argument: str | None, idleTimeout: float = 10.0) -> Iterator[dict[str, Any]]:
    """
    Every Submit the stream holds, oldest first, for C{tcpdemo-dump}; runs
    its own asyncio loop (not inside a reactor).
    """
    spec = parseSpec(argument)
    _requireClient()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    connection = _Connection(spec, lambda line: None)
    subscription: Any = None
    try:
        loop.run_until_complete(connection.open(createStream=False))
        messages, lastSeq = loop.run_until_complete(connection.streamState())
        if messages == 0:
            return
        subscription = loop.run_until_complete(connection.subscribeAll())
        while True:
            msg = loop.run_until_complete(subscription.next_msg(timeout=idleTimeout))
            sequence = msg.metadata.sequence.stream
            yield from decodeMessage(msg.data, msg.headers, sequence)
            if msg.metadata.num_pending == 0 or sequence >= lastSeq:
                break
    finally:
        if subscription is not None:
            loop.run_until_complete(subscription.unsubscribe())
        loop.run_until_complete(connection.close())
        asyncio.set_event_loop(None)
        loop.close()
