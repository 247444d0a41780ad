"""
Hostile input against a real C{twistd -n tcpdemo}, over loopback sockets.

  - Hypothesis draws byte streams that mix valid Submits with every kind of
    bad frame, splits them down to single bytes, and sends them on several
    connections at once while a clean connection runs pipelined load.  A
    reference model (L{tests.reliability.expectedFor}) says what each
    connection must get back and why it must be closed; the server's
    C{tcpdemo_protocol_errors_total{reason}} and its log must agree.
  - A slow reader writes 200 MiB of Submits and reads nothing: the server's
    RSS stays within its write-buffer limit plus a stated constant, and when
    the client finally reads, every ack arrives, in order.

Examples: C{settings(max_examples=25)} per Hypothesis test, against ONE
server process per test method; each example opens fresh connections.  Set
C{TCPDEMO_HOSTILE_EXAMPLES} for more.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .reliability import (
    REASONS,
    HostileMixin,
    PipelinedLoad,
    Plan,
    ServerTestCase,
    errorCounts,
    loggedOrLeftOut,
    report,
    waitForProgress,
)
from .support import (
    ACK_SIZE,
    TwistdServer,
    ackFrame,
    lengthField,
    metric,
    rawFrame,
    recvUntilClosed,
    rssOf,
    submitFrame,
    waitFor,
)

MAX_FRAME = 4096
EXAMPLES = int(os.environ.get("TCPDEMO_HOSTILE_EXAMPLES", "25"))

# Strategies: one frame (or frame-like bytes) at a time.

_ids = st.binary(min_size=8, max_size=8)
_payloads = st.one_of(
    st.binary(max_size=40),
    st.just(b"p" * (MAX_FRAME - 13)),  # exactly at the limit
    st.integers(1000, MAX_FRAME - 13).map(lambda n: b"q" * n),
)
validSubmits = st.builds(lambda i, p: rawFrame(0x02, i + p), _ids, _payloads)
conns = st.binary(max_size=12).map(lambda token: rawFrame(0x01, token))
unknownCommands = st.builds(
    rawFrame,
    st.integers(0, 255).filter(lambda c: c not in (0x01, 0x02, 0x80, 0x81)),
    st.binary(max_size=20),
)
shortSubmits = st.binary(max_size=7).map(lambda body: rawFrame(0x02, body))
# ConnAck and SubmitAck, well-formed or not: refused for their direction.
serverCommands = st.one_of(
    st.binary(min_size=1, max_size=1).map(lambda body: rawFrame(0x80, body)),
    st.binary(min_size=9, max_size=9).map(lambda body: rawFrame(0x81, body)),
    st.builds(rawFrame, st.sampled_from([0x80, 0x81]), st.binary(max_size=12)),
)
_tails = st.binary(max_size=8)
badLengths = st.builds(
    lambda n, tail: lengthField(n) + tail,
    st.one_of(st.integers(-(2**31), -1), st.integers(0, 4), st.just(-1), st.just(-(2**31))),
    _tails,
)
tooLarge = st.builds(
    lambda n, tail: lengthField(n) + tail,
    st.one_of(
        st.just(MAX_FRAME + 1),
        st.integers(MAX_FRAME + 1, MAX_FRAME + 64),
        st.just(2**31 - 1),
        st.integers(MAX_FRAME + 1, 2**31 - 1),
    ),
    _tails,
)
items = st.one_of(
    validSubmits,
    validSubmits,
    validSubmits,
    conns,
    unknownCommands,
    shortSubmits,
    serverCommands,
    badLengths,
    tooLarge,
)


@st.composite
def connectionPlans(draw: st.DrawFn) -> Plan:
    """
    One hostile connection: its whole byte stream (possibly cut short in
    the middle of a frame), how to split it into writes (chunk sizes used
    in turn; empty: one write), and how the client ends it.
    """
    stream = b"".join(draw(st.lists(items, max_size=10)))
    if stream and draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    splits = draw(st.one_of(st.just([]), st.lists(st.integers(1, 48), min_size=1, max_size=6)))
    ending = draw(st.sampled_from(["halfclose", "halfclose", "halfclose", "close", "reset"]))
    return stream, splits, ending


class HostileStreamTests(HostileMixin):
    def setUp(self) -> None:
        self.server = self.startServer("--max-frame-length", str(MAX_FRAME))
        self.clean = PipelinedLoad(self.server.port, connections=1, window=32)
        self.clean.start()
        self.addCleanup(self.clean.stop)
        waitForProgress(self.clean, 100)
        self.expectedErrors = {reason: 0 for reason in REASONS}
        self.examples = 0

    def runPlans(self, plans: list[Plan], slow: bool) -> None:
        errors = self.exchangePlans(
            self.server, plans, maxFrameLength=MAX_FRAME, slow=slow, clean=self.clean
        )
        self.examples += 1
        for reason, count in errors.items():
            self.expectedErrors[reason] += count

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plans=st.lists(connectionPlans(), min_size=1, max_size=4), slow=st.booleans())
    def _hostileStreams(self, plans: list[Plan], slow: bool) -> None:
        self.runPlans(plans, slow)

    def test_hostileStreams(self) -> None:
        """
        Hypothesis-drawn hostile streams on 1-4 connections at a time: each
        gets exactly the replies the model owes it, in order, then is
        closed; the counters and the log lines match; the server lives and
        the clean connection gets every ack, in order.
        """
        self._hostileStreams()
        self.checkEnd()

    def test_everyKindOfBadInput(self) -> None:
        """
        Each bad input named by the issue, after valid Submits on its own
        connection, all at once.
        """
        valid = b"".join(submitFrame(i, b"v%d" % i) for i in range(1, 4))
        bad = [
            lengthField(-1),
            lengthField(-(2**31)),
            *(lengthField(n) for n in range(5)),
            lengthField(MAX_FRAME + 1),
            lengthField(2**31 - 1) + b"\x02" * 100,
            rawFrame(0x07, b"12345678"),
            rawFrame(0xFF, b""),
            rawFrame(0x02, b""),
            rawFrame(0x02, b"1234567"),
            rawFrame(0x80, b"\x00"),
            rawFrame(0x81, b"12345678\x00"),
        ]
        plans: list[Plan] = [(valid + b + submitFrame(9, b"after"), [], "halfclose") for b in bad]
        # Byte by byte, too, and truncated in the middle of a frame.
        plans += [(valid + b, [1], "halfclose") for b in bad[:3]]
        plans.append((valid + submitFrame(4, b"cut short")[:-3], [3, 1], "halfclose"))
        plans.append((valid[:2], [1], "halfclose"))
        self.runPlans(plans, slow=True)
        self.assertEqual(self.expectedErrors["bad_length"], 7 + 3)
        self.assertEqual(self.expectedErrors["frame_too_large"], 2)
        self.checkEnd()

    def checkEnd(self) -> None:
        # One line per closed connection, or, past the rate limit's burst,
        # counted in a "left out" line at the end of its 10 s interval.
        waitFor(
            lambda: loggedOrLeftOut(self.server.log()) == self.expectedErrors,
            timeout=20,
            what=f"one log line per closed connection: {self.expectedErrors}",
        )
        result = self.clean.stop()
        self.assertEqual(result.errors, [])
        self.assertEqual(result.acked, result.sent)
        self.assertHealthy(self.server)
        report(
            f"hostile streams ({self.id().rsplit('.', 1)[-1]})",
            examples=self.examples,
            errors=self.expectedErrors,
            cleanAcks=result.acked,
        )


class ServerToClientCommandTests(ServerTestCase):
    def test_malformedAcksAreUnexpected(self) -> None:
        """
        docs/protocol.md: a ConnAck or SubmitAck sent to the server is refused
        "like an unknown command" -- it is the direction that is wrong, so
        its reason is unexpected_command whatever its body.
        """
        server = self.startServer()
        before = errorCounts(server.scrape())
        for body in (rawFrame(0x80, b""), rawFrame(0x81, b"1234")):
            sock = server.connect()
            sock.sendall(submitFrame(1, b"") + body)
            self.assertEqual(recvUntilClosed(sock), ackFrame(1))
            sock.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        after = errorCounts(server.scrape())
        self.assertEqual(after["unexpected_command"] - before["unexpected_command"], 2)
        self.assertEqual(after["malformed_packet"] - before["malformed_packet"], 0)


# The slow reader


FRAME_SIZE = 64
PAYLOAD = b"s" * (FRAME_SIZE - 13)
CYCLE = 102400  # ids 00000000..00102399, then again
TOTAL_BYTES = 200 * 1024 * 1024  # 200 MiB: 32 cycles
WRITE_BUFFER_LIMIT = 65536
#: What RSS may grow by beyond the write-buffer limit and one read's acks:
#: allocator slack and the interpreter's own noise.  PyPy's garbage
#: collector lets garbage reach a threshold proportional to the heap before a
#: major collection, so its peak RSS under heavy traffic varies by several
#: MiB from run to run (measured: 146-156 MiB over three identical runs).
RSS_CONSTANT = (16 if platform.python_implementation() == "PyPy" else 4) * 1024 * 1024


class RssSampler(threading.Thread):
    """
    The peak RSS of a process, sampled every C{interval} seconds.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(name="RssSampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, rssOf(self.pid))
            except (OSError, AssertionError):
                return
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


class SlowReaderTests(ServerTestCase):
    def push(
        self, server: TwistdServer, block: bytes, acks: bytes, repeats: int, slow: bool
    ) -> dict[str, int]:
        """
        Write C{block} C{repeats} times on a new connection from a thread,
        and read every ack, checking each against C{acks} (one per frame of
        C{block}, cyclically).  If C{slow}, read nothing until the writes
        have stalled.  Returns RSS figures of the server.
        """
        sampler = RssSampler(server.pid)
        sampler.start()
        self.addCleanup(sampler.stop)
        before = server.rssBytes()
        sock = server.connect(timeout=120)
        written = [0]
        failure: list[BaseException] = []

        def writer() -> None:
            view = memoryview(block)
            step = 1 << 18
            try:
                for _ in range(repeats):
                    for offset in range(0, len(block), step):
                        sock.sendall(view[offset : offset + step])
                        written[0] += len(view[offset : offset + step])
            except BaseException as e:
                failure.append(e)

        thread = threading.Thread(target=writer, name="pusher", daemon=True)
        thread.start()
        figures = {"rss_before": before}
        if slow:

            def stalled() -> bool:
                before = written[0]
                time.sleep(1.0)
                return written[0] == before

            waitFor(stalled, timeout=60, what="the writer to stall")
            figures["stalled_after_bytes"] = written[0]
            self.assertLess(written[0], TOTAL_BYTES // 2, "the server took it all unread")
            self.assertGreater(metric(server.scrape(), "tcpdemo_backpressure_pauses_total"), 0)
            figures["rss_stalled_peak"] = max(sampler.peak, server.rssBytes())

        # Read, while the writer goes on; check every ack as it comes.
        total = repeats * len(acks)
        got = 0
        while got < total:
            data = sock.recv(1 << 20)
            self.assertTrue(data, f"EOF after {got} of {total} ack bytes")
            position = 0
            while position < len(data):
                start = got % len(acks)
                n = min(len(data) - position, len(acks) - start)
                if data[position : position + n] != acks[start : start + n]:
                    self.fail(f"wrong acks at byte {got} of {total}")
                got += n
                position += n
        self.assertEqual(got, total)
        thread.join(60)
        self.assertEqual(failure, [])
        self.assertEqual(written[0], repeats * len(block))
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(recvUntilClosed(sock, timeout=30), b"")
        sock.close()
        figures["rss_peak"] = sampler.stop()
        figures["rss_samples"] = sampler.samples
        return figures

    def test_slowReader(self) -> None:
        """
        A client writes 200 MiB of 64-byte Submits (3.3 million; 45 MiB of
        acks owed) and reads nothing.  The server stops reading once its
        unsent acks pass --write-buffer-limit, so the client's writes stall.
        Then the client reads: every ack arrives, in order, and the rest of
        the 200 MiB goes through.

        The bound: the server's peak RSS, while the client reads nothing and
        over the whole run, exceeds the peak RSS of a well-behaved client
        pushing the same 200 MiB (same server, just before) by less than the
        write-buffer limit + one read's acks + L{RSS_CONSTANT}.  (Measured
        against that reference rather than the idle server, because a
        garbage-collected interpreter -- PyPy -- holds tens of MiB of
        garbage between collections under any heavy traffic; on CPython the
        growth over the idle server is reported too and is tiny.)
        """
        server = self.startServer("--write-buffer-limit", str(WRITE_BUFFER_LIMIT))
        block = b"".join(submitFrame(i, PAYLOAD) for i in range(CYCLE))
        acks = b"".join(ackFrame(i) for i in range(CYCLE))
        self.assertEqual(len(block), CYCLE * FRAME_SIZE)
        repeats = TOTAL_BYTES // len(block)
        self.assertEqual(repeats * len(block), TOTAL_BYTES)

        idle = server.rssBytes()
        started = time.monotonic()
        reference = self.push(server, block, acks, repeats, slow=False)
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        slow = self.push(server, block, acks, repeats, slow=True)
        elapsed = time.monotonic() - started

        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_rsp_send_total"), 2 * CYCLE * repeats)
        perRead = 65536 // FRAME_SIZE * ACK_SIZE
        bound = WRITE_BUFFER_LIMIT + perRead + RSS_CONSTANT
        report(
            "slow reader",
            written_bytes=TOTAL_BYTES,
            acks=CYCLE * repeats,
            stalled_after_bytes=slow["stalled_after_bytes"],
            write_buffer_limit=WRITE_BUFFER_LIMIT,
            bound=bound,
            rss_idle=idle,
            rss_reference_peak=reference["rss_peak"],
            rss_stalled_peak=slow["rss_stalled_peak"],
            rss_slow_peak=slow["rss_peak"],
            growth_over_reference_stalled=slow["rss_stalled_peak"] - reference["rss_peak"],
            growth_over_reference=slow["rss_peak"] - reference["rss_peak"],
            growth_over_idle=slow["rss_peak"] - idle,
            seconds=round(elapsed, 1),
        )
        self.assertLess(
            slow["rss_stalled_peak"] - reference["rss_peak"],
            bound,
            "RSS while the client read nothing",
        )
        self.assertLess(slow["rss_peak"] - reference["rss_peak"], bound, "RSS over the run")
        self.assertHealthy(server)
