"""
The real thing: C{twistd -n tcpdemo} as a subprocess, driven over loopback
TCP with blocking sockets, its C{/metrics} scraped over HTTP.
"""

from __future__ import annotations

import platform
import socket

from twisted.trial.unittest import SynchronousTestCase

from .support import (
    TwistdServer,
    ackFrame,
    metric,
    pushUntilBlocked,
    recvExactly,
    recvUntilClosed,
    submitFrame,
    waitFor,
    waitUntilSteady,
)


class TwistdTests(SynchronousTestCase):
    def startServer(self, *args: str) -> TwistdServer:
        server = TwistdServer(self.mktemp_dir(), args)
        self.addCleanup(server.kill)
        return server

    def mktemp_dir(self) -> str:
        import os

        path: str = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def test_servesAndStopsCleanly(self) -> None:
        """
        Vectors, 10 000 pipelined submits, bad input on other connections
        that closes only them, counters that match, and a SIGTERM that
        delivers every owed ack and exits 0.
        """
        server = self.startServer()
        log = server.log()
        self.assertIn(f"tcpdemo server listening on tcp:127.0.0.1:{server.port}", log)
        self.assertIn(
            f"tcpdemo metrics (/metrics) listening on tcp:127.0.0.1:{server.metricsPort}", log
        )

        good = server.connect()
        good.sendall(bytes.fromhex("00000012023030303030303031") + b"hello")
        self.assertEqual(recvExactly(good, 14), bytes.fromhex("0000000e81303030303030303100"))
        good.sendall(bytes.fromhex("0000000e023030303030303033610000000f0230303030303030346262"))
        self.assertEqual(
            recvExactly(good, 28),
            bytes.fromhex("0000000e813030303030303033000000000e81303030303030303400"),
        )

        pipelined = b"".join(submitFrame(i, b"load-%d" % i) for i in range(5, 10005))
        good.sendall(pipelined)
        self.assertEqual(
            recvExactly(good, 14 * 10000), b"".join(ackFrame(i) for i in range(5, 10005))
        )

        bad = {
            "unknown_command": b"\x00\x00\x00\x0d\x07" + b"x" * 8,
            "malformed_packet": b"\x00\x00\x00\x08\x02abc",
            "bad_length": b"\xff\xff\xff\xf0",
            "frame_too_large": b"\x7f\xff\xff\xff",  # 2 GiB - 1
        }
        for reason, data in bad.items():
            victim = server.connect()
            victim.sendall(submitFrame(1) + data + submitFrame(2))
            self.assertEqual(recvUntilClosed(victim), ackFrame(1), reason)
            victim.close()
            # ... while the good connection keeps being served.
            good.sendall(submitFrame(20000))
            self.assertEqual(recvExactly(good, 14), ackFrame(20000))

        submits = 3 + 10000 + 2 * len(bad)
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 1, what="closes")
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), submits)
        self.assertEqual(metric(samples, "tcpdemo_rsp_send_total"), submits)
        self.assertEqual(metric(samples, "tcpdemo_connections_total"), 1 + len(bad))
        for reason in bad:
            self.assertEqual(
                metric(samples, f'tcpdemo_protocol_errors_total{{reason="{reason}"}}'), 1, reason
            )
        self.assertEqual(metric(samples, "tcpdemo_bytes_sent_total"), 14 * submits)
        self.assertGreater(metric(samples, "process_cpu_seconds_total"), 0)
        self.assertGreater(metric(samples, "process_resident_memory_bytes"), 0)
        self.assertEqual(metric(samples, "tcpdemo_max_connections"), 0)
        for reason in bad:
            self.assertEqual(len([line for line in server.log().splitlines() if reason in line]), 1)

        self.assertEqual(server.terminate(), 0)
        self.assertEqual(recvUntilClosed(good), b"")
        self.assertIn("Server Shut Down", server.log())

    def test_sigtermDeliversOwedAcks(self) -> None:
        """
        SIGTERM while a client has pushed far more than it reads: every
        complete Submit the server had read gets its ack before the close.
        """
        server = self.startServer("--write-buffer-limit", "16384")
        sock = server.connect()
        size = len(submitFrame(1, b"p" * 9))
        count = 200000
        frames = b"".join(submitFrame(i, b"p" * 9) for i in range(1, count + 1))
        sent = pushUntilBlocked(sock, frames)

        waitUntilSteady(
            lambda: metric(server.scrape(), "tcpdemo_bytes_received_total"),
            0.3,
            what="the server to stop reading",
        )
        samples = server.scrape()
        self.assertGreater(metric(samples, "tcpdemo_backpressure_pauses_total"), 0)
        owed = int(metric(samples, "tcpdemo_bytes_received_total")) // size
        self.assertLess(metric(samples, "tcpdemo_rsp_send_total"), owed + 1)

        server.process.send_signal(15)
        acks = recvUntilClosed(sock, timeout=20)
        # Every Submit read before the signal is answered (the server may
        # still have read a little more as the kernel took acks), in order,
        # and nothing is answered that was not sent.
        answered = len(acks) // 14
        self.assertGreaterEqual(answered, owed)
        self.assertLessEqual(answered, sent // size)
        # pushUntilBlocked starts again at id 1 after the last frame.
        self.assertEqual(acks, b"".join(ackFrame(i % count + 1) for i in range(answered)))
        self.assertEqual(server.process.wait(20), 0)

    def test_slowReadersBoundRSS(self) -> None:
        """
        Clients that send without reading cannot push the server's RSS past
        (write-buffer limit x connections + a constant): each connection
        holds at most its limit plus one read's worth of acks.
        """
        limit = 65536
        connections = 20
        server = self.startServer("--write-buffer-limit", str(limit))
        warm = server.connect()
        warm.sendall(b"".join(submitFrame(i) for i in range(1, 20001)))
        recvExactly(warm, 14 * 20000)
        baseline = server.rssBytes()

        frames = b"".join(submitFrame(i, b"x" * 20) for i in range(1, 50001))
        socks: list[socket.socket] = [server.connect() for _ in range(connections)]
        pushed = sum(pushUntilBlocked(s, frames, seconds=0.5) for s in socks)
        growth = server.rssBytes() - baseline

        # One read is at most 64 KiB: its acks (14 of every 34 bytes) can
        # overshoot the limit before the transport pauses the protocol, and
        # a partial frame may wait in the receive buffer.
        perConnection = limit + 65536 * 14 // 34 + 65536
        # CPython frees buffers as soon as they are written; PyPy's GC lets
        # garbage grow to about 1.8x the live heap before a major collection,
        # which is bounded too, but by a larger constant.
        constant = (64 if platform.python_implementation() == "PyPy" else 8) * 1024 * 1024
        bound = connections * perConnection + constant
        self.assertLess(
            growth,
            bound,
            f"RSS grew {growth} bytes for {pushed} bytes pushed; bound {bound}",
        )
        self.assertGreater(pushed, connections * limit, "the clients did not push enough")
        samples = server.scrape()
        self.assertGreaterEqual(metric(samples, "tcpdemo_backpressure_pauses_total"), connections)
        # Then they read, and every ack arrives in order.
        for s in socks:
            s.shutdown(socket.SHUT_WR)
        for s in socks[:3]:
            data = recvUntilClosed(s, timeout=30)
            n = len(data) // 14
            self.assertGreater(n, 0)
            self.assertEqual(data, b"".join(ackFrame((i % 50000) + 1) for i in range(n)))
