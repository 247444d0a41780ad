"""
The seed article's Go servers as the benchmark runs them (benchmarks/peers/go,
kinds go-demo3 and go-demo2 of benchmarks/servers.py): built with the real
C{go build}, run as real processes on loopback, they answer the test vectors
of docs/protocol.md as the reference servers do, and tcpdemo's client
library (L{tcpdemo.client.connect}) and load generator (C{tcpdemo-client},
as C{python -m tcpdemo.client}) drive them without a single wrong or missing
ack.  Also the article's own flushing (C{-flush end}) and the three counters.

Without Go these tests FAIL, they do not skip: scripts/test installs Debian's
golang-go.  They are here, not in tests/, because C{go build} takes a while
the first time, and the benchmark's smoke run (every env) must not need Go.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from benchmarks import vectors
from benchmarks.servers import LOOPBACK, BenchError, Server, goPeerBinary
from tcpdemo.client import connect
from tests.support import ackFrames, runLoadClient, submitFrames


def builtPeer(case: SynchronousTestCase) -> str:
    """
    The Go peers' binary, built if needed; the test fails without Go.
    """
    try:
        return str(goPeerBinary())
    except BenchError as e:
        case.fail(f"cannot build the Go peers: {e}")


def startPeer(case: SynchronousTestCase, kind: str) -> Server:
    builtPeer(case)
    logs = os.path.abspath(case.mktemp())
    os.makedirs(logs)
    server = Server(kind, sys.executable, logDir=logs).start(timeout=30)
    case.addCleanup(server.stop)
    return server


class GoBuildTests(SynchronousTestCase):
    def test_builtOnceAndCached(self) -> None:
        """
        The binary is built into the gitignored cache, the same file on the
        second request; a wrong C{-variant} is refused with exit status 2.
        """
        first = builtPeer(self)
        stat = os.stat(first)
        self.assertEqual(str(goPeerBinary()), first)
        self.assertEqual(os.stat(first).st_mtime_ns, stat.st_mtime_ns)
        self.assertIn(os.path.join("benchmarks", ".cache", "go"), first)
        result = subprocess.run(
            [first, "-variant", "nonsense"], capture_output=True, text=True, timeout=30
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("demo3-syncpool", result.stderr)


class GoDemo3Tests(TestCase):
    """
    go-demo3: tcp-server-demo3-with-syncpool.
    """

    kind = "go-demo3"

    def setUp(self) -> None:
        self.server = startPeer(self, self.kind)
        assert self.server.port is not None
        self.port = self.server.port

    def test_vectors(self) -> None:
        """
        docs/protocol.md's vectors (two frames in one write, one split byte
        by byte): the acks in order; an unknown command, and a Conn, close
        the connection after the acks owed, as the reference does.
        """
        vectors.checkReference(self.server)
        # The same dispatch as the benchmark's smoke run.
        vectors.check(self.server)

    def test_badInputKillsIt(self) -> None:
        """
        As the reference (PROTOCOL.md, "Bad input"): a Submit shorter than
        its id panics the whole process.  The peer is a reference, not a
        hardened server.
        """
        with socket.create_connection((LOOPBACK, self.port), timeout=10) as sock:
            sock.sendall(bytes.fromhex("00000008 02 303030"))
        assert self.server.process is not None
        status = self.server.process.wait(timeout=30)
        self.assertNotEqual(status, 0)
        self.assertIn("panic", self.server.logTail(60))

    async def test_clientLibrary(self) -> None:
        """
        L{tcpdemo.client.connect}: 200 Submits pipelined on one connection,
        empty and 1 KiB payloads included, each answered with result 0.
        """
        client = await connect(reactor, f"tcp:{LOOPBACK}:{self.port}", window=64, timeout=30)
        payloads = [b"", b"x" * 1024] + [b"codename-%d" % i for i in range(198)]
        results = await defer.gatherResults([client.submit(p) for p in payloads])
        self.assertEqual(results, [0] * len(payloads))
        self.assertEqual(await client.submit(b"last", id=b"zzzzzzzz"), 0)
        self.assertEqual(client.outstanding, 0)
        await client.close(timeout=10)

    def test_loadClient(self) -> None:
        """
        tcpdemo-client, pipelined with the reference client's codenames and
        in an open loop: every Submit acked, in order, no error.
        """
        for args in (
            ("--connections", "10", "--window", "200", "--duration", "1"),
            ("--connections", "5", "--window", "1", "--duration", "1"),
            ("--connections", "10", "--rate", "2000", "--duration", "1", "--payload-size", "20"),
        ):
            status, report = runLoadClient(self.port, *args, "--drain-timeout", "10")
            self.assertEqual(status, 0, report)
            errors = report["errors"]
            assert isinstance(errors, dict)
            self.assertEqual(errors["total"], 0, report)
            acked = report["acked"]
            assert isinstance(acked, int)
            self.assertGreater(acked, 0, report)
            self.assertEqual(acked, report["sent"], report)


class GoDemo2Tests(GoDemo3Tests):
    """
    go-demo2: no bufio, each ack written straight to the connection.
    """

    kind = "go-demo2"


class GoArticleFlushTests(SynchronousTestCase):
    """
    C{-flush end}: the article's demo3 exactly, which flushes its
    bufio.Writer only when it fills and when the connection ends; and the
    three counters on C{-metrics}.
    """

    def test_acksWaitForTheEnd(self) -> None:
        binary = builtPeer(self)
        log = open(os.path.abspath(self.mktemp()), "w+b")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [binary, "-port", "0", "-flush", "end", "-metrics", f"{LOOPBACK}:0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        ports: dict[str, int] = {}
        while len(ports) < 2 and time.monotonic() < deadline:
            log.seek(0)
            text = log.read().decode(errors="replace")
            for what, port in re.findall(r"^(listening|metrics) on [\d.]+:(\d+)", text, re.M):
                ports[what] = int(port)
            time.sleep(0.05)
        self.assertEqual(set(ports), {"listening", "metrics"})
        with socket.create_connection((LOOPBACK, ports["listening"]), timeout=10) as sock:
            sock.sendall(submitFrames(range(1, 4), b"hello"))
            sock.settimeout(0.5)
            self.assertRaises(socket.timeout, sock.recv, 4096)
            counters = scrape(ports["metrics"])
            self.assertEqual(counters["tcp_server_demo_client_connected"], 1)
            self.assertEqual(counters["tcp_server_demo_req_recv_total"], 3)
            self.assertEqual(counters["tcp_server_demo_rsp_send_total"], 3)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            received = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        self.assertEqual(received, ackFrames(range(1, 4)))
        deadline = time.monotonic() + 10
        while scrape(ports["metrics"])["tcp_server_demo_client_connected"] and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        self.assertEqual(scrape(ports["metrics"])["tcp_server_demo_client_connected"], 0)
        process.terminate()
        self.assertEqual(process.wait(timeout=30), 0)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line[0] == "#"
        )
    }
