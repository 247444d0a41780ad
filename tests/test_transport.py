"""
The product on Twisted's real TCP transport: how much each read asks for,
when unsent acks pause reading, and reading into a shared buffer.  Twisted
keeps the first two in one attribute, C{bufferSize}; the product reads at
most L{READ_SIZE} at a time whatever C{--write-buffer-limit} is, and pauses
only past that limit.
"""

from __future__ import annotations

import platform
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from tcpdemo.frame import HEADER_SIZE
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import READ_SIZE, TcpDemoServerFactory, TcpDemoServerProtocol
from tcpdemo.twistedinternals import bufferedBytes

from .support import LOOPBACK, ackFrame, pushUntilBlocked, recvUntilClosed, submitFrame

#: The global reactor, typed loosely: it provides many interfaces at once.
reactor: Any = _reactor


class Recording(TcpDemoServerProtocol):
    """
    Notes what the transport's C{bufferSize} is at each read and at each
    pause, and how many bytes were unsent at a pause.
    """

    seen: list[tuple[str, int, int]]

    def dataReceived(self, data: bytes) -> None:
        self.seen.append(("read", self.transport.bufferSize, len(data)))
        super().dataReceived(data)

    def pauseProducing(self) -> None:
        transport: Any = self.transport
        unsent = bufferedBytes(transport)
        self.seen.append(("pause", transport.bufferSize, unsent))
        super().pauseProducing()


class ReadSizeTests(TestCase):
    async def pushAgainst(self, limit: int) -> list[tuple[str, int, int]]:
        """
        Serve one client that sends Submits without reading an ack until
        the server stops reading; return what L{Recording} saw.
        """
        seen: list[tuple[str, int, int]] = []

        class Recorder(Recording):
            pass

        Recorder.seen = seen
        factory = TcpDemoServerFactory(
            metrics=ServerMetrics.create(CollectorRegistry()), writeBufferLimit=limit
        )
        factory.protocol = Recorder
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect((LOOPBACK, port.getHost().port))
        frames = b"".join(submitFrame(i, b"p" * 19) for i in range(1, 20001))
        try:
            await threads.deferToThread(pushUntilBlocked, sock, frames)
        finally:
            closed = factory.drainAll()
            factory.abortAll()
            sock.close()
            await closed
        return seen

    def check(self, seen: list[tuple[str, int, int]], limit: int) -> None:
        reads = [entry for entry in seen if entry[0] == "read"]
        pauses = [entry for entry in seen if entry[0] == "pause"]
        self.assertTrue(reads)
        for _, bufferSize, size in reads:
            self.assertEqual(bufferSize, READ_SIZE)
            self.assertLessEqual(size, READ_SIZE)
        # The client never reads: its acks pile up until reading pauses.
        self.assertTrue(pauses, "reading never paused")
        for _, bufferSize, unsent in pauses:
            self.assertEqual(bufferSize, limit)
            self.assertGreater(unsent, limit)

    async def test_defaultLimit(self) -> None:
        """
        With the default 256 KiB limit, reads take at most 64 KiB, and
        reading pauses only past 256 KiB of unsent acks.
        """
        limit = 256 * 1024
        self.check(await self.pushAgainst(limit), limit)

    async def test_smallLimit(self) -> None:
        """
        A limit below the read size: reads still take up to 64 KiB, and
        reading pauses past the limit.
        """
        limit = 16 * 1024
        self.check(await self.pushAgainst(limit), limit)


def exchange(port: int, frames: bytes, pieces: list[int]) -> bytes:
    """
    Send C{frames} in pieces of the given sizes (the rest in one piece),
    shut down the sending side, and read every ack until the server closes.
    """
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    try:
        offset = 0
        for size in pieces:
            sock.sendall(frames[offset : offset + size])
            offset += size
            time.sleep(0.005)  # separate reads on the server
        sock.sendall(frames[offset:])
        sock.shutdown(socket.SHUT_WR)
        return recvUntilClosed(sock, 30)
    finally:
        sock.close()


class ReadIntoTests(TestCase):
    """
    Reading with recv_into one buffer shared by every connection (the
    default on PyPy, see L{tcpdemo.readinto}), and with Twisted's recv:
    the same acks, in order, on several connections at once; a half-close
    still ends the connection cleanly.
    """

    async def serve(self, readInto: bool) -> None:
        factory = TcpDemoServerFactory(
            metrics=ServerMetrics.create(CollectorRegistry()), readInto=readInto
        )
        transports: list[Any] = []

        class Noting(TcpDemoServerProtocol):
            def connectionMade(self) -> None:
                super().connectionMade()
                transports.append(self.transport)

        factory.protocol = Noting
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # Varied sizes, 3000 Submits (~130 KB: more than one 64 KiB read).
        counts = (3000, 1000, 2000)
        frames = [
            b"".join(submitFrame(i, b"v" * (i % 17)) for i in range(1, count + 1))
            for count in counts
        ]
        splits = [[7, 1, 5, 13], [], [HEADER_SIZE, 65536 + 3]]
        results = await defer.gatherResults(
            [
                threads.deferToThread(exchange, number, data, split)
                for data, split in zip(frames, splits)
            ]
        )
        for count, acks in zip(counts, results):
            self.assertEqual(acks, b"".join(ackFrame(i) for i in range(1, count + 1)))
        self.assertEqual(len(transports), 3)
        for transport in transports:
            # Installed on the transport itself, reading into the one buffer.
            self.assertEqual("doRead" in vars(transport), readInto)
        await factory.drainAll()

    async def test_readInto(self) -> None:
        await self.serve(True)

    async def test_recv(self) -> None:
        await self.serve(False)

    def test_defaultOnPyPyOnly(self) -> None:
        """
        CPython's recv shrinks its buffer in place: only PyPy reads into.
        """
        factory = TcpDemoServerFactory(metrics=ServerMetrics.create(CollectorRegistry()))
        self.assertEqual(factory.readInto, platform.python_implementation() == "PyPy")
        self.assertEqual(len(factory.readBuffer), READ_SIZE)
