"""
The Go load generator of the benchmark harness (benchmarks/loadgen, used by
C{bench --client go}): built with the real toolchain, run against a real
C{twistd -n tcpdemo} in both loop shapes, and against fake servers that
answer wrongly, so that its checks are seen to fail.  Without C{go} these
tests fail: the generator is part of the harness.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import goclient
from tests.support import LOOPBACK, TwistdServer, ackFrame, recvExactly, runForReport

ID_SIZE = 8


def loadgen() -> str:
    return goclient.build()


def runLoadgen(port: int, *args: str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """
    Run the generator with C{--json}; return its exit status and report.
    """
    return runForReport([loadgen(), "--port", f"tcp:{LOOPBACK}:{port}", "--json", *args], timeout)


class FakeServer:
    """
    A loopback server whose every connection is handled by C{answer}, which
    gets each Submit's id in turn and returns the bytes to send back.
    """

    def __init__(self, answer: Callable[[int, bytes], bytes]) -> None:
        self.answer = answer
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn: socket.socket) -> None:
        with conn:
            number = 0
            try:
                while True:
                    length = int.from_bytes(recvExactly(conn, 4), "big")
                    body = recvExactly(conn, length - 4)
                    number += 1
                    conn.sendall(self.answer(number, body[1 : 1 + ID_SIZE]))
            except (OSError, AssertionError, EOFError):
                return

    def close(self) -> None:
        self.listener.close()


class LoadgenTwistdTests(SynchronousTestCase):
    """
    Against the real server: zero errors and every Submit acked.
    """

    def setUp(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.server = TwistdServer(workdir, metrics=False)
        self.addCleanup(self.server.terminate)

    def test_openLoop(self) -> None:
        """
        At 2000 Submits/s over 4 connections for 1 s after a 0.5 s warm-up,
        it sends about the scheduled 3000, all acked, and measures the 2000
        scheduled after the warm-up.
        """
        status, report = runLoadgen(
            self.server.port,
            "--connections", "4", "--rate", "2000", "--duration", "1", "--warmup", "0.5",
        )  # fmt: skip
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])
        self.assertEqual(report["sent"], 3000)
        self.assertEqual(report["acked"], 3000)
        self.assertEqual(report["results"], {"0": 3000})
        self.assertEqual(report["latency_us"]["count"], 2000)
        self.assertEqual(report["send_rate_per_s"], 2000.0)
        self.assertGreater(report["latency_us"]["p50"], 0)
        self.assertIsNotNone(report["max_tick_gap_ms"])

    def test_closedLoop(self) -> None:
        """
        A window of 10 over 3 connections with varied payloads: every
        Submit acked, each latency measured once.
        """
        status, report = runLoadgen(
            self.server.port, "--connections", "3", "--window", "10", "--duration", "0.5"
        )
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])
        self.assertGreater(report["sent"], 30)
        self.assertEqual(report["acked"], report["sent"])
        self.assertEqual(report["latency_us"]["count"], report["sent"])
        self.assertIsNone(report["max_tick_gap_ms"])

    def test_unboundedWindow(self) -> None:
        """
        Window 0 with a fixed payload size: as fast as the socket takes them.
        """
        status, report = runLoadgen(
            self.server.port,
            "--connections", "2", "--window", "0", "--duration", "0.3", "--payload-size", "7",
        )  # fmt: skip
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])
        self.assertEqual(report["acked"], report["sent"])
        self.assertGreater(report["sent"], 1000)


class LoadgenCheckTests(SynchronousTestCase):
    """
    Against fake servers that answer wrongly: the generator names the error.
    """

    def runAgainst(self, answer: Callable[[int, bytes], bytes], *args: str) -> dict[str, Any]:
        server = FakeServer(answer)
        self.addCleanup(server.close)
        status, report = runLoadgen(
            server.port, "--connections", "2", "--duration", "0.3", "--drain-timeout", "1", *args
        )
        self.assertEqual(status, 1, report)
        return report

    def test_wrongId(self) -> None:
        """
        The fifth ack of each connection carries another id.
        """

        def answer(number: int, ident: bytes) -> bytes:
            return ackFrame(b"99999999" if number == 5 else ident)

        report = self.runAgainst(answer, "--window", "1")
        self.assertEqual(report["errors"]["by_kind"]["wrong_id"], 2, report["errors"])
        self.assertEqual(report["errors"]["total"], 2)
        self.assertIn('expected "00000005", got "99999999"', report["errors"]["messages"][0])
        self.assertEqual(report["acked"], 8)

    def test_wrongCommand(self) -> None:
        """
        The third answer is a ConnAck-shaped frame: command 0x80.
        """

        def answer(number: int, ident: bytes) -> bytes:
            ack = ackFrame(ident)
            return ack[:4] + b"\x80" + ack[5:] if number == 3 else ack

        report = self.runAgainst(answer, "--rate", "200")
        self.assertEqual(report["errors"]["by_kind"]["wrong_command"], 2, report["errors"])
        self.assertIn("wrong command byte 0x80 (a ConnAck)", report["errors"]["messages"][0])
        self.assertEqual(report["acked"], 4)

    def test_badLengthAndResult(self) -> None:
        """
        A frame of the wrong length is fatal; a non-zero result is an error
        only with --fail-on-result.
        """

        def short(number: int, ident: bytes) -> bytes:
            return b"\x00\x00\x00\x0d\x81" + ident if number == 2 else ackFrame(ident)

        report = self.runAgainst(short, "--window", "1")
        self.assertEqual(report["errors"]["by_kind"]["bad_length"], 2, report["errors"])

        def refused(number: int, ident: bytes) -> bytes:
            return ackFrame(ident, result=1)

        report = self.runAgainst(refused, "--window", "1", "--fail-on-result")
        self.assertEqual(report["errors"]["by_kind"]["bad_result"], report["answered"])
        self.assertEqual(report["acked"], 0)

    def test_silentServer(self) -> None:
        """
        A server that never answers: the acks owed are reported missing.
        """
        report = self.runAgainst(lambda number, ident: b"", "--window", "3")
        self.assertEqual(report["errors"]["by_kind"]["missing_acks"], 2, report["errors"])
        self.assertEqual(report["sent"], 6)
        self.assertEqual(report["acked"], 0)
