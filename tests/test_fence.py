"""
The direct send in L{tcpdemo.protocol.TcpDemoServerProtocol._write} is fenced.

It sends acks itself, past Twisted's buffer, only when that buffer is
empty; otherwise new acks would overtake ones Twisted still holds.  These
tests make Twisted hold acks -- a client that keeps sending while it reads
slowly through a small receive buffer, so that the server's kernel send
buffer fills and drains by bits -- and check every ack's order, against a
real C{twistd -n tcpdemo}.  Deleting the emptiness check makes
L{test_acksStayInOrder} fail (checked once by hand: acks out of order
within the first second).

Where C{tcp.Connection} lacks the attributes the direct send reads (a
Twisted that renamed its private buffer state), the server says so once
and sends every ack with C{transport.write}.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from .reliability import ServerTestCase, report
from .support import LOOPBACK, TwistdServer, submitFrame, waitFor

ACK = 14
#: Submits of this size: 20 bytes each, a new id every time.
PAYLOAD = b"fence!!"
SECONDS = 3.0
#: A receive buffer this small keeps the server's kernel send queue full.
RCVBUF = 4096


#: Lines that give every accepted connection of the server a small kernel
#: send buffer, so that its acks often wait in Twisted's buffer.
SMALL_SEND_BUFFERS = (
    "import socket",
    "from twisted.internet import tcp",
    "_init = tcp.Server.__init__",
    "def _smallSendBuffer(self, sock, *args, **kwargs):",
    f"    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, {RCVBUF})",
    "    _init(self, sock, *args, **kwargs)",
    "tcp.Server.__init__ = _smallSendBuffer",
)


class SlowReader:
    """
    One connection that writes Submits continuously (ids 0, 1, 2, ...) from
    one thread and reads acks a little at a time from another, checking
    that each ack carries the next id.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(20)
        self.sock.connect((LOOPBACK, port))
        self.sent = 0
        self.acked = 0
        self.error: str | None = None
        self.halt = threading.Event()

    def write(self) -> None:
        batch = 50
        number = 0
        try:
            while not self.halt.is_set():
                data = b"".join(submitFrame(number + i, PAYLOAD) for i in range(batch))
                self.sock.sendall(data)
                number += batch
                self.sent = number
        except OSError as e:
            if not self.halt.is_set():
                self.error = f"write failed: {e}"

    def read(self, until: float) -> None:
        pending = b""
        while time.monotonic() < until or self.acked < self.sent:
            if self.error:
                return
            # Slowly: a small read, then a pause, so the window opens by bits.
            chunk = self.sock.recv(ACK * 37)
            if not chunk:
                self.error = "closed by the server"
                return
            pending += chunk
            whole = len(pending) // ACK * ACK
            for offset in range(0, whole, ACK):
                ident = pending[offset + 5 : offset + 13]
                if ident != b"%08d" % self.acked:
                    self.error = (
                        f"ack {self.acked} out of order: got id {ident!r} "
                        f"after {self.acked} in-order acks"
                    )
                    return
                self.acked += 1
            pending = pending[whole:]
            if time.monotonic() < until:
                time.sleep(0.0005)
            else:
                self.halt.set()

    def run(self, seconds: float) -> None:
        writer = threading.Thread(target=self.write, daemon=True)
        writer.start()
        try:
            self.read(time.monotonic() + seconds)
        finally:
            self.halt.set()
            self.sock.shutdown(socket.SHUT_WR)
            writer.join(30)
            self.sock.close()


class FenceTests(ServerTestCase):
    def runSlowReaders(self, server: TwistdServer, count: int = 3) -> list[SlowReader]:
        readers = [SlowReader(server.port) for _ in range(count)]
        threads = [threading.Thread(target=r.run, args=(SECONDS,)) for r in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for reader in readers:
            self.assertIsNone(reader.error)
            self.assertGreater(reader.acked, 1000)
        return readers

    def startPatchedServer(self, *patch: str) -> TwistdServer:
        """
        A real twistd, run by a script that first executes the lines
        C{patch}.
        """
        workdir = self.workdir()
        wrapper = os.path.join(workdir, "patched_twistd.py")
        with open(wrapper, "w") as f:
            f.write("\n".join([*patch, "from twisted.scripts.twistd import run", "run()", ""]))
        server = TwistdServer(workdir, (), twistdScript=wrapper)
        self.addCleanup(server.kill)
        return server

    def test_acksStayInOrder(self) -> None:
        """
        Slow readers that keep sending, to a server whose kernel send
        buffers are small (as a host's net.ipv4.tcp_wmem may make them):
        Twisted's buffer holds acks much of the time, and every ack still
        arrives in order.
        """
        server = self.startPatchedServer(*SMALL_SEND_BUFFERS)
        readers = self.runSlowReaders(server)
        self.assertHealthy(server)
        report("fence: slow readers", acks=[r.acked for r in readers])

    def test_fallsBackWithoutTheBufferState(self) -> None:
        """
        A Twisted whose TCP transport lacks what the direct send reads: the
        server logs it once and sends with C{transport.write}, in order.
        """
        # The server under test, started with one more required attribute
        # -- one no tcp.Connection has -- as a Twisted that renamed its
        # private buffer state would look to the guard.
        server = self.startPatchedServer(
            *SMALL_SEND_BUFFERS,
            "import tcpdemo.protocol as p",
            "p.DIRECT_SEND_ATTRIBUTES += ('_tempDataLenRenamed',)",
        )
        self.runSlowReaders(server, count=2)
        waitFor(lambda: "has no _tempDataLenRenamed" in server.log(), what="the warning")
        lines = [line for line in server.log().splitlines() if "has no" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("acks are sent with transport.write", lines[0])
        self.assertHealthy(server)
