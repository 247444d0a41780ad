"""
The product on Twisted's real TCP transport: how much each read asks for,
and when unsent acks pause reading.  Twisted keeps both in one attribute,
C{bufferSize}; the product reads at most L{READ_SIZE} at a time whatever
C{--write-buffer-limit} is, and pauses only past that limit.
"""

from __future__ import annotations

import socket
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import READ_SIZE, TcpDemoServerFactory, TcpDemoServerProtocol

from .support import LOOPBACK, pushUntilBlocked, submitFrame

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
        unsent = len(transport.dataBuffer) + transport._tempDataLen
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
