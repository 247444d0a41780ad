"""
Helpers for the reliability tests (C{test_hostile}, C{test_many},
C{test_faults}, C{test_soak}, C{test_security}): a test case that runs real
C{twistd -n tcpdemo} processes, a reference model of what the server must
answer to any byte stream, a threaded pipelined load with per-connection
order checks, and process introspection through C{/proc}.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import select
import selectors
import socket
import struct
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

import attrs
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.metrics import PROTOCOL_ERROR_REASONS

from .support import (
    ACK_SIZE,
    LOOPBACK,
    TwistdServer,
    ackFrame,
    connAckFrame,
    fdTargets,
    metric,
    recvUntilClosed,
    submitFrame,
    waitFor,
)

log = Logger(namespace="tcpdemo.reliability")

_LENGTH = struct.Struct("!i")

#: Every reason label of C{tcpdemo_protocol_errors_total}.
REASONS = PROTOCOL_ERROR_REASONS


def report(what: str, **figures: object) -> None:
    """
    Record figures a test measured: in the trial log, and as one JSON line
    appended to the file named by C{$TCPDEMO_RELIABILITY_REPORT}, if set,
    so that CI can keep them.
    """
    log.info("reliability figures: {what}: {figures}", what=what, figures=figures)
    path = os.environ.get("TCPDEMO_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": what, **figures}, sort_keys=True) + "\n")


class ServerTestCase(SynchronousTestCase):
    """
    A test case that starts real servers and stops them at cleanup.
    """

    def workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def startServer(
        self, *args: str, metrics: bool = True, extraEnv: Mapping[str, str] | None = None
    ) -> TwistdServer:
        server = TwistdServer(self.workdir(), args, metrics=metrics, extraEnv=extraEnv)
        self.addCleanup(server.kill)
        return server

    def assertHealthy(self, server: TwistdServer) -> None:
        """
        The server still runs and logged no traceback.
        """
        self.assertIsNone(server.process.poll(), "the server died")
        problems = logProblems(server.log())
        self.assertEqual(problems, [], "the server logged errors")


def logProblems(text: str) -> list[str]:
    """
    Log lines that mean something went wrong inside the server.
    """
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or "Unhandled" in line or "[Failure instance" in line
    ]


def errorCounts(samples: dict[str, float]) -> dict[str, int]:
    """
    C{tcpdemo_protocol_errors_total} by reason.
    """
    return {
        reason: int(metric(samples, f'tcpdemo_protocol_errors_total{{reason="{reason}"}}', 0))
        for reason in REASONS
    }


def closingLines(text: str) -> dict[str, int]:
    """
    How many "closing PEER: REASON: ..." lines the server logged, by reason.
    """
    counts = {reason: 0 for reason in REASONS}
    for match in re.finditer(r"closing \S+: (\w+): ", text):
        if match.group(1) in counts:
            counts[match.group(1)] += 1
    return counts


def leftOutLines(text: str) -> dict[str, int]:
    """
    How many lines the server's rate limit left out, by kind, from its
    lines "left out N connection error line(s) in Ss: KIND N, KIND N; ...".
    """
    counts: dict[str, int] = {}
    for match in re.finditer(r"left out \d+ connection error line\(s\) in \S+: (.*?);", text):
        for part in match.group(1).split(", "):
            kind, count = part.rsplit(" ", 1)
            counts[kind] = counts.get(kind, 0) + int(count)
    return counts


def loggedOrLeftOut(text: str) -> dict[str, int]:
    """
    Per reason: the "closing" lines logged plus those the rate limit left
    out -- one per connection closed for bad input.
    """
    counts = closingLines(text)
    for kind, count in leftOutLines(text).items():
        if kind in counts:
            counts[kind] += count
    return counts


# Processes, through /proc


def openFds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcpSockets(pid: int) -> list[tuple[str, int, str]]:
    """
    The (local host, local port, state) of every TCP socket C{pid} holds;
    the state as C{/proc/net/tcp} writes it (C{0A}: LISTEN, C{01}:
    ESTABLISHED...).
    """
    inodes = {t[len("socket:[") : -1] for t in fdTargets(pid) if t.startswith("socket:[")}
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes:
                continue
            hexHost, hexPort = local.split(":")
            raw = bytes.fromhex(hexHost)
            if family == socket.AF_INET:
                host = socket.inet_ntop(family, raw[::-1])
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                host = socket.inet_ntop(family, words)
            found.append((host, int(hexPort, 16), state))
    return found


def listeningAddresses(pid: int) -> set[tuple[str, int]]:
    """
    The (host, port) of every TCP socket in LISTEN state that C{pid} holds.
    """
    return {(host, port) for host, port, state in tcpSockets(pid) if state == "0A"}


def waitForScrapesClosed(server: TwistdServer) -> None:
    """
    Wait until C{server} has closed its side of every /metrics connection
    (a scrape's), so that they do not count in its descriptors or memory.
    """

    def held() -> list[tuple[str, int, str]]:
        return [s for s in tcpSockets(server.pid) if s[1] == server.metricsPort and s[2] != "0A"]

    waitFor(lambda: not held(), what="the server to close the scrapes' connections")


def raiseOwnFileLimit(wanted: int) -> int:
    """
    Raise this process's soft RLIMIT_NOFILE towards C{wanted} (at most the
    hard limit); return the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(wanted, soft)
    target = min(max(wanted, soft), hard)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# The wire


@attrs.frozen
class Expected:
    """
    What the server must do with one connection's whole byte stream.

    @ivar replies: every byte it must send back, in order.
    @ivar error: the protocol error reason it must close with, or None if
        the stream holds no bad frame (a truncated last frame is none).
    @ivar submits: Submits it must answer.
    """

    replies: bytes
    error: str | None
    submits: int


def expectedFor(stream: bytes, maxFrameLength: int, token: bytes | None = None) -> Expected:
    """
    The reference model of the server (docs/protocol.md, "Bad input"): parse
    C{stream} frame by frame as the server must, and stop at the first bad
    frame.  C{token} is the C{--auth-token-file} secret, if any.
    """
    replies: list[bytes] = []
    submits = 0
    authenticated = token is None
    offset = 0
    size = len(stream)

    def done(error: str | None) -> Expected:
        return Expected(b"".join(replies), error, submits)

    while True:
        if size - offset < 4:
            return done(None)
        (length,) = _LENGTH.unpack_from(stream, offset)
        if length < 5:
            return done("bad_length")
        if length > maxFrameLength:
            return done("frame_too_large")
        if offset + length > size:
            return done(None)
        command = stream[offset + 4]
        body = stream[offset + 5 : offset + length]
        offset += length
        if command == 0x02:
            if len(body) < 8:
                return done("malformed_packet")
            if not authenticated:
                return done("unexpected_command")
            replies.append(ackFrame(body[:8]))
            submits += 1
        elif command == 0x01:
            accepted = token is None or body == token
            replies.append(connAckFrame(0 if accepted else 1))
            if not accepted:
                return done("auth_failed")
            authenticated = True
        elif command in (0x80, 0x81):
            # Sent in the wrong direction, whatever its body.
            return done("unexpected_command")
        else:
            return done("unknown_command")


# Load


class _LoadConnection:
    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.nextSend = 1
        self.nextAck = 1
        self.out = bytearray()
        self.inbuf = bytearray()
        self.draining = False
        self.closedBy: str | None = None

    @property
    def outstanding(self) -> int:
        return self.nextSend - self.nextAck


@attrs.define
class LoadResult:
    sent: int
    acked: int
    errors: list[str]
    connectionsOpened: int
    closedByServer: int
    perConnection: list[tuple[int, int]]


class PipelinedLoad(threading.Thread):
    """
    Pipelined Submits on C{connections} raw sockets from one thread: each
    connection keeps up to C{window} Submits unanswered, and every ack is
    checked to be the next one owed on its connection, in order.

    @param rate: if set, Submits per second across all connections.
    @param churnInterval: if set, every so many seconds the oldest
        connection stops sending, waits for its acks, closes, and a new one
        takes its place.
    @param expectServerClose: a close by the server is the end of that
        connection, not an error (for shutdown tests).
    """

    def __init__(
        self,
        port: int,
        connections: int = 1,
        window: int = 32,
        payload: bytes = b"clean-load-0123456789",
        rate: float | None = None,
        churnInterval: float | None = None,
        expectServerClose: bool = False,
    ) -> None:
        super().__init__(name="PipelinedLoad", daemon=True)
        self.port = port
        self.window = window
        self.payload = payload
        self.rate = rate
        self.churnInterval = churnInterval
        self.expectServerClose = expectServerClose
        self.errors: list[str] = []
        self.sent = 0
        self.acked = 0
        self.opened = 0
        self.closedByServer = 0
        self.finished: list[_LoadConnection] = []
        self._stopping = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._conns: list[_LoadConnection] = []
        for _ in range(connections):
            self._open()

    def _open(self) -> None:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _LoadConnection(sock, self.opened)
        self.opened += 1
        self._conns.append(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _LoadConnection, why: str | None) -> None:
        conn.closedBy = why
        self._conns.remove(conn)
        self.finished.append(conn)
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # reported, not raised: this is a thread
            self.errors.append(f"load thread crashed: {e!r}")
        finally:
            for conn in list(self._conns):
                self._drop(conn, None)
            self._selector.close()

    def _run(self) -> None:
        allowance = 0.0
        last = time.monotonic()
        lastChurn = last
        stopDeadline: float | None = None
        turn = 0
        while True:
            now = time.monotonic()
            if self._stopping.is_set():
                if stopDeadline is None:
                    stopDeadline = now + 15.0
                if not any(c.outstanding for c in self._conns):
                    return
                if now > stopDeadline:
                    for c in self._conns:
                        if c.outstanding:
                            self.errors.append(
                                f"connection {c.index}: {c.outstanding} acks never came"
                            )
                    return
            elif self.churnInterval is not None and now - lastChurn >= self.churnInterval:
                lastChurn = now
                for c in self._conns:
                    if not c.draining:
                        c.draining = True
                        break
            # Retire drained connections and replace them.
            for c in [c for c in self._conns if c.draining and not c.outstanding]:
                self._drop(c, None)
                self._open()
            # Top up.
            if self.rate is not None:
                allowance = min(allowance + (now - last) * self.rate, self.rate)
            last = now
            if not self._stopping.is_set() and self._conns:
                n = len(self._conns)
                for k in range(n):
                    c = self._conns[(turn + k) % n]
                    if c.draining:
                        continue
                    room = self.window - c.outstanding
                    if self.rate is not None:
                        room = min(room, int(allowance))
                    if room <= 0:
                        continue
                    c.out += b"".join(
                        submitFrame(i, self.payload) for i in range(c.nextSend, c.nextSend + room)
                    )
                    c.nextSend += room
                    self.sent += room
                    allowance -= room
                turn += 1
            for c in list(self._conns):
                if c.out:
                    self._send(c)
            for key, _ in self._selector.select(0.005 if self.rate is None else 0.002):
                self._receive(key.data)

    def _send(self, conn: _LoadConnection) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as e:
            self._serverClosed(conn, f"send: {e!r}")
            return
        del conn.out[:n]

    def _receive(self, conn: _LoadConnection) -> None:
        if conn not in self._conns:
            return
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            self._serverClosed(conn, f"recv: {e!r}")
            return
        if not data:
            self._serverClosed(conn, "EOF")
            return
        buf = conn.inbuf
        buf += data
        count = len(buf) // ACK_SIZE
        if not count:
            return
        if count > conn.outstanding:
            self.errors.append(
                f"connection {conn.index}: {count} acks but only {conn.outstanding} owed"
            )
            count = conn.outstanding
        first = conn.nextAck
        expected = b"".join(ackFrame(i) for i in range(first, first + count))
        got = bytes(buf[: count * ACK_SIZE])
        if got != expected:
            for k in range(count):
                actual = got[k * ACK_SIZE : (k + 1) * ACK_SIZE]
                wanted = expected[k * ACK_SIZE : (k + 1) * ACK_SIZE]
                if actual != wanted:
                    self.errors.append(
                        f"connection {conn.index}: ack {first + k}: got {actual.hex()}, "
                        f"expected {wanted.hex()}"
                    )
                    break
        del buf[: count * ACK_SIZE]
        conn.nextAck += count
        self.acked += count

    def _serverClosed(self, conn: _LoadConnection, how: str) -> None:
        # Whatever was already received has been checked; a partial ack
        # left over is a truncated one.
        if conn.inbuf:
            self.errors.append(f"connection {conn.index}: {len(conn.inbuf)} bytes of a partial ack")
        if self.expectServerClose:
            self.closedByServer += 1
        else:
            self.errors.append(f"connection {conn.index} closed by the server ({how})")
        self._drop(conn, how)

    def open(self) -> int:
        return len(self._conns)

    def stop(self, timeout: float = 30.0) -> LoadResult:
        """
        Stop sending, wait for the acks still owed, close; the result.
        """
        self._stopping.set()
        self.join(timeout)
        if self.is_alive():
            self.errors.append("the load thread did not stop")
        conns = self.finished + self._conns
        return LoadResult(
            sent=self.sent,
            acked=self.acked,
            errors=list(self.errors),
            connectionsOpened=self.opened,
            closedByServer=self.closedByServer,
            perConnection=[(c.nextSend - 1, c.nextAck - 1) for c in conns],
        )


def waitForProgress(load: PipelinedLoad, more: int = 1, timeout: float = 20.0) -> None:
    """
    Wait until C{load} has received C{more} further acks.
    """
    start = load.acked
    try:
        waitFor(
            lambda: load.acked >= start + more,
            timeout,
            interval=0.01,
            what=f"{more} more acks",
            unless=lambda: not load.is_alive(),
        )
    except AssertionError:
        if not load.is_alive() and load.acked < start + more:
            raise AssertionError(f"the load thread ended: {load.errors}") from None
        raise AssertionError(
            f"the clean load made no progress: {load.acked - start} acks in {timeout}s; "
            f"errors: {load.errors}"
        ) from None


def sendChunks(sock: socket.socket, chunks: Sequence[bytes]) -> bool:
    """
    Send each chunk; False if the peer closed before all were sent.
    """
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except OSError:
            return False
    return True


def resetClose(sock: socket.socket) -> None:
    """
    Close with a TCP reset rather than a FIN.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def waitUntilDelivered(sock: socket.socket, timeout: float = 10.0) -> None:
    """
    Wait until the peer's kernel has acknowledged every byte written on
    C{sock} (Linux: the SIOCOUTQ ioctl), or the connection is gone.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))
        except OSError:
            return
        if queued[0] == 0:
            return
        time.sleep(0.001)


def refusedNow(port: int) -> bool:
    """
    Nothing accepts connections on C{port} any more.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def waitForLine(stream: IO[bytes], timeout: float) -> bytes:
    """
    One line from a child's pipe, or fail after C{timeout} seconds.
    """
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line within {timeout}s")
    return stream.readline()


#: One hostile connection: its whole byte stream, the sizes of the writes
#: to split it into (used in turn; empty: one write), and how the client
#: ends: "halfclose" (shut its side, read every reply until the server
#: closes), "close" or "reset" (without reading).
Plan = tuple[bytes, list[int], str]


def chunked(stream: bytes, splits: list[int]) -> list[bytes]:
    if not splits:
        return [stream] if stream else []
    chunks = []
    offset = 0
    turn = 0
    while offset < len(stream):
        size = splits[turn % len(splits)]
        chunks.append(stream[offset : offset + size])
        offset += size
        turn += 1
    return chunks


class HostileMixin(ServerTestCase):
    """
    Drive hostile connections and check them against L{expectedFor}.
    """

    def exchangePlans(
        self,
        server: TwistdServer,
        plans: list[Plan],
        maxFrameLength: int,
        token: bytes | None = None,
        slow: bool = False,
        clean: PipelinedLoad | None = None,
    ) -> dict[str, int]:
        """
        Send every plan on its own connection, round robin, chunk by chunk;
        check that each "halfclose" connection gets exactly the replies the
        model owes it and is then closed; wait until they are all gone
        (only C{clean}'s connections remain) and check the change in the
        error counters.  Returns that change.
        """
        before = errorCounts(server.scrape())
        expected = [expectedFor(stream, maxFrameLength, token) for stream, _, _ in plans]
        errors = {reason: 0 for reason in REASONS}
        for outcome in expected:
            if outcome.error is not None:
                errors[outcome.error] += 1
        socks = [server.connect() for _ in plans]
        try:
            self._exchange(plans, socks, expected, slow)
        finally:
            for sock in socks:
                if sock.fileno() != -1:
                    resetClose(sock)
        remaining = clean.open() if clean is not None else 0
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_client_connected") == remaining,
            timeout=15,
            what="the hostile connections to close",
        )
        after = errorCounts(server.scrape())
        self.assertEqual({r: after[r] - before[r] for r in REASONS}, errors)
        self.assertIsNone(server.process.poll(), "the server died")
        if clean is not None:
            waitForProgress(clean, 1)
        return errors

    def _exchange(
        self,
        plans: list[Plan],
        socks: list[socket.socket],
        expected: list[Expected],
        slow: bool,
    ) -> None:
        pending = [chunked(stream, splits) for stream, splits, _ in plans]
        sending = [True] * len(plans)
        steps = max((len(p) for p in pending), default=0)
        for step in range(steps):
            for k, chunks in enumerate(pending):
                if sending[k] and step < len(chunks):
                    try:
                        socks[k].sendall(chunks[step])
                    except OSError:
                        # The server closed it: only ever after a bad frame.
                        self.assertIsNotNone(expected[k].error, "closed a good connection")
                        sending[k] = False
            if slow and step < 100:
                time.sleep(0.001)
        for k, (_, _, ending) in enumerate(plans):
            if ending == "halfclose":
                try:
                    socks[k].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                got = recvUntilClosed(socks[k], timeout=15)
                self.assertEqual(
                    got.hex(),
                    expected[k].replies.hex(),
                    f"connection {k} of {len(plans)} ({expected[k]})",
                )
                socks[k].close()
            else:
                # Closing with bytes still queued (the peer's acks unread, or a
                # reset) would throw them away: let the peer's kernel have
                # them all first, so that the server sees the whole stream.
                waitUntilDelivered(socks[k])
                if ending == "close":
                    socks[k].close()
                else:
                    resetClose(socks[k])
