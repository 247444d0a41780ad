"""
The memory budget for incoming data (--max-incoming-memory) and the
gathering of long frames in O(their size).

  - Long partial frames are gathered in one buffer that only grows: the
    bytes already read are never joined again with each new read.
  - Against a real C{twistd -n tcpdemo}: connections that hold partial
    frames past the budget are closed, the largest first, counted under
    C{memory_budget}, after the acks they are owed; the others complete
    their frames and get their acks; a clean connection is unaffected.
"""

from __future__ import annotations

import mmap
import platform
import socket
import struct
import time

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.frame import GATHER_THRESHOLD, MAP_THRESHOLD, FrameReceiver, frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory

from .reliability import PipelinedLoad, ServerTestCase, errorCounts, report, waitForProgress
from .support import ackFrame, metric, recvExactly, submitFrame, waitFor, waitUntilSteady
from .test_protocol import PEER, RecordingTransport


class Collector(FrameReceiver):
    def __init__(self, maxLength: int) -> None:
        self.MAX_LENGTH = maxLength
        self.payloads: list[bytes] = []
        self.held: list[int] = []

    def stringReceived(self, string: bytes) -> None:
        self.payloads.append(string)

    def gatheredChanged(self, held: int) -> None:
        self.held.append(held)


class GatheringTests(SynchronousTestCase):
    def feed(self, size: int, chunk: int) -> Collector:
        """
        A frame of C{size} bytes then a short one, C{chunk} bytes a read;
        checks after every read that nothing is re-joined.
        """
        payload = (bytes(range(256)) * (size // 256 + 1))[: size - 4]
        stream = frame(payload) + frame(b"\x02after!!")
        receiver = Collector(size)
        buffers = set()
        for start in range(0, len(stream), chunk):
            receiver.dataReceived(stream[start : start + chunk])
            if receiver._gathered is not None:
                buffers.add(id(receiver._gathered))
                # What was read so far is in the buffer, not joined anew.
                self.assertEqual(receiver._unprocessed, b"")
        self.assertEqual(receiver.payloads, [payload, b"\x02after!!"])
        self.assertEqual(len(buffers), 1, "one buffer for the whole frame")
        self.assertEqual(receiver.held[-1], 0)
        return receiver

    def test_smallReads(self) -> None:
        """
        A frame above the threshold, 7 bytes a read: one buffer, every
        read added to it, the frame delivered whole once.
        """
        receiver = self.feed(GATHER_THRESHOLD * 3, 7)
        self.assertGreater(max(receiver.held), GATHER_THRESHOLD * 3 - 7)

    def test_mapped(self) -> None:
        """
        A frame of MAP_THRESHOLD or more is gathered in a memory map, which
        is closed (its memory given back) once the frame is delivered.
        """
        receiver = Collector(MAP_THRESHOLD * 2)
        stream = frame(b"m" * (MAP_THRESHOLD * 2 - 4))
        receiver.dataReceived(stream[:1000])
        mapped = receiver._gathered
        self.assertIsInstance(mapped, mmap.mmap)
        receiver.dataReceived(stream[1000:])
        self.assertEqual(receiver.payloads, [b"m" * (MAP_THRESHOLD * 2 - 4)])
        assert isinstance(mapped, mmap.mmap)
        self.assertTrue(mapped.closed)
        self.feed(MAP_THRESHOLD + 1000, 65536)

    def test_largeReads(self) -> None:
        self.feed(GATHER_THRESHOLD + 10, 4000)
        self.feed(MAP_THRESHOLD * 4, 65536)


class BudgetUnitTests(SynchronousTestCase):
    """
    The factory's accounting, on a fake clock and transports.
    """

    def test_closesTheLargest(self) -> None:
        factory = TcpDemoServerFactory(
            metrics=ServerMetrics.create(CollectorRegistry()),
            reactor=Clock(),
            maxIncomingMemory=100_000,
        )
        pairs = []
        for _ in range(3):
            protocol = factory.buildProtocol(PEER)
            assert protocol is not None
            transport = RecordingTransport()
            protocol.makeConnection(transport)
            pairs.append((protocol, transport))
        head = struct.pack("!i", 200_000) + b"\x02" + b"%08d" % 1
        (a, ta), (b, tb), (c, tc) = pairs
        a.dataReceived(submitFrame(7) + head + b"a" * 60_000)
        b.dataReceived(head + b"b" * 30_000)
        self.assertEqual(factory.incomingHeld, 60_013 + 30_013)
        c.dataReceived(head + b"c" * 20_000)
        # 110 039 bytes held: the largest, a's, goes, after the ack it is owed.
        self.assertTrue(ta.disconnecting)
        self.assertEqual(ta.value(), ackFrame(7))
        self.assertFalse(tb.disconnecting or tc.disconnecting)
        self.assertEqual(factory.incomingHeld, 30_013 + 20_013)
        counted = factory.metrics.registry.get_sample_value(
            "tcpdemo_protocol_errors_total", {"reason": "memory_budget"}
        )
        self.assertEqual(counted, 1)
        b.connectionLost()
        self.assertEqual(factory.incomingHeld, 20_013)
        c.dataReceived(b"c" * (200_000 - 20_013))
        self.assertEqual(factory.incomingHeld, 0)
        self.assertEqual(tc.value(), ackFrame(1))


LIMIT = 4 * 1024 * 1024
#: What RSS may keep after the attackers left: allocator and interpreter
#: noise.  On PyPy the clean connection's load also grows the heap until the
#: first major collection (a sawtooth, not a leak: docs/reliability.md,
#: "Soak on PyPy"), 7.4 to 17.3 MiB by the end of this test (measured; once
#: 19 MiB with PYPY_GC_MAJOR_COLLECT=1.3, so that does not help here).  That
#: is more than the 8 MiB the attackers hold, so on PyPy this bound catches
#: only a gross leak; the exact check is CPython's 4 MiB, and PyPy's reuse
#: of what it keeps is checked by systests/test_hostile_figures.py.
RSS_NOISE = (32 if platform.python_implementation() == "PyPy" else 4) * 1024 * 1024
ATTACKERS = 8
FRAME = 1024 * 1024
MISSING = 1000


class BudgetTests(ServerTestCase):
    def test_largestPartialFramesAreClosed(self) -> None:
        """
        Eight connections each send all but 1000 bytes of a 1 MiB Submit
        (and one whole Submit before it) to a server whose budget is 4 MiB:
        four are closed, each after its ack, counted and logged; the four
        left complete their frames and get both acks; a clean connection
        pipelining throughout loses nothing; the budget's memory comes back.
        """
        server = self.startServer("--max-incoming-memory", str(LIMIT))
        clean = PipelinedLoad(server.port, connections=1, window=32)
        clean.start()
        self.addCleanup(clean.stop)
        waitForProgress(clean, 100)
        rssBefore = server.rssBytes()
        body = b"\x02" + b"%08d" % 2 + b"x" * (FRAME - 13)
        big = struct.pack("!i", FRAME) + body
        attackers = []
        for _ in range(ATTACKERS):
            sock = server.connect()
            sock.sendall(submitFrame(1) + big[:-MISSING])
            attackers.append(sock)
        waitFor(
            lambda: errorCounts(server.scrape())["memory_budget"] >= ATTACKERS - 4,
            timeout=20,
            what="the budget to close connections",
        )
        rssHolding = server.rssBytes()
        closed, alive = [], []
        for sock in attackers:
            self.assertEqual(recvExactly(sock, 14), ackFrame(1))
            sock.settimeout(0.5)
            try:
                rest = sock.recv(100)
            except socket.timeout:
                alive.append(sock)
            else:
                self.assertEqual(rest, b"")
                closed.append(sock)
        self.assertEqual((len(closed), len(alive)), (ATTACKERS - 4, 4))
        for sock in alive:
            sock.settimeout(10)
            sock.sendall(big[-MISSING:])
            self.assertEqual(recvExactly(sock, 14), ackFrame(2))
        for sock in attackers:
            sock.close()
        samples = server.scrape()
        self.assertEqual(errorCounts(samples)["memory_budget"], ATTACKERS - 4)
        lines = [line for line in server.log().splitlines() if ": memory_budget: " in line]
        self.assertEqual(len(lines), ATTACKERS - 4, lines)
        self.assertIn("above --max-incoming-memory 4194304", lines[0])
        time.sleep(0.5)
        rssAfter = server.rssBytes()
        result = clean.stop()
        self.assertEqual(result.errors, [])
        self.assertEqual(result.acked, result.sent)
        # Held: four frames of 1 MiB, in maps the kernel fills as they come.
        self.assertLess(rssHolding - rssBefore, LIMIT + 4 * 1024 * 1024)
        self.assertLess(rssAfter - rssBefore, RSS_NOISE)
        self.assertHealthy(server)
        report(
            "memory budget",
            limit=LIMIT,
            closed=len(closed),
            rssHoldingGrowth=rssHolding - rssBefore,
            rssAfterGrowth=rssAfter - rssBefore,
        )

    def test_defaultBudgetBoundsMemory(self) -> None:
        """
        On the defaults, 100 connections each holding a 1 MiB partial frame
        (100 MiB): the server holds at most the 64 MiB default, and its
        memory returns when they leave.
        """
        server = self.startServer()
        rssBefore = server.rssBytes()
        head = struct.pack("!i", FRAME) + b"\x02" + b"%08d" % 1
        partial = head + b"p" * (FRAME - len(head) - MISSING)
        attackers = []
        for _ in range(100):
            sock = server.connect()
            sock.sendall(partial)
            attackers.append(sock)
        waitFor(
            lambda: errorCounts(server.scrape())["memory_budget"] >= 100 - 64,
            timeout=30,
            what="the budget to close connections",
        )
        waitUntilSteady(
            lambda: metric(server.scrape(), "tcpdemo_bytes_received_total"),
            0.5,
            "every partial frame to be read",
        )
        rssHolding = server.rssBytes()
        closedByBudget = errorCounts(server.scrape())["memory_budget"]
        for sock in attackers:
            sock.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0, timeout=20)
        rssAfter = server.rssBytes()
        # 64 of them fit in 64 MiB: 36 closed.
        self.assertEqual(closedByBudget, 100 - 64)
        self.assertLess(rssHolding - rssBefore, 72 * 1024 * 1024)
        self.assertLess(rssAfter - rssBefore, RSS_NOISE)
        self.assertHealthy(server)
        report(
            "default memory budget",
            closed=closedByBudget,
            rssHoldingGrowth=rssHolding - rssBefore,
            rssAfterGrowth=rssAfter - rssBefore,
        )
