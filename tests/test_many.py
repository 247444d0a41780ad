"""
Many connections against a real C{twistd -n tcpdemo}: 10 000 at once, each
submitting and getting its acks, with the server's RSS per connection
measured; and C{--max-connections} refusing the excess cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from .reliability import (
    ServerTestCase,
    openFds,
    raiseOwnFileLimit,
    report,
    waitForScrapesClosed,
)
from .support import (
    LOOPBACK,
    ackFrame,
    metric,
    recvExactly,
    recvUntilClosed,
    submitFrame,
    waitFor,
)

CONNECTIONS = int(os.environ.get("TCPDEMO_MANY_CONNECTIONS", "10000"))
#: Connects in flight before waiting for the server to accept them: well
#: under the listen backlog (4096), so no SYN is ever dropped and retried.
BATCH = 1000


def closeAll(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


class ManyConnectionsTests(ServerTestCase):
    def test_tenThousandConnections(self) -> None:
        """
        10 000 concurrent connections: each sends two Submits in one write
        and gets both acks; the server holds them all (the gauge says so),
        its RSS per idle connection is measured and reported; a SIGTERM
        then closes them all and exits 0.
        """
        # This process holds one socket per connection, the server one more.
        needed = CONNECTIONS + 200
        if raiseOwnFileLimit(needed) < needed:
            self.fail(
                f"RLIMIT_NOFILE hard limit is below {needed}: raise it (ulimit -Hn) "
                "to run this test; it is not skipped"
            )
        server = self.startServer("--grace-period", "30")
        warm = server.connect()
        warm.sendall(b"".join(submitFrame(i, b"warm") for i in range(1000)))
        recvExactly(warm, 14 * 1000)
        warm.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0)
        # As before fdsHeld below: let the server close its side of the
        # scrape's HTTP connection, which would otherwise count here.
        waitForScrapesClosed(server)
        before = server.rssBytes()
        fdsBefore = openFds(server.pid)

        started = time.monotonic()
        socks: list[socket.socket] = []
        self.addCleanup(closeAll, socks)
        while len(socks) < CONNECTIONS:
            batch = min(BATCH, CONNECTIONS - len(socks))
            for _ in range(batch):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(30)
                socks.append(sock)
                sock.connect((LOOPBACK, server.port))
            target = len(socks)
            waitFor(
                lambda target=target: (
                    metric(server.scrape(), "tcpdemo_connections_total") >= target + 1
                ),
                timeout=30,
                what=f"the server to accept {target} connections",
            )
        connected = time.monotonic() - started

        # Each submits twice, in one write; then each reads its two acks.
        for k, sock in enumerate(socks):
            sock.sendall(submitFrame(2 * k, b"many") + submitFrame(2 * k + 1, b"many"))
        for k, sock in enumerate(socks):
            self.assertEqual(
                recvExactly(sock, 28),
                ackFrame(2 * k) + ackFrame(2 * k + 1),
                f"connection {k}",
            )
        exchanged = time.monotonic() - started

        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_client_connected"), CONNECTIONS)
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), 1000 + 2 * CONNECTIONS)
        self.assertEqual(metric(samples, "tcpdemo_connections_refused_total"), 0)
        waitForScrapesClosed(server)
        held = server.rssBytes()
        fdsHeld = openFds(server.pid)
        self.assertGreaterEqual(fdsHeld - fdsBefore, CONNECTIONS)
        perConnection = (held - before) / CONNECTIONS
        report(
            "many connections",
            connections=CONNECTIONS,
            rss_before=before,
            rss_held=held,
            rss_per_connection=round(perConnection),
            fds_held=fdsHeld,
            connect_seconds=round(connected, 2),
            connect_and_exchange_seconds=round(exchanged, 2),
        )
        # A generous sanity bound: a connection is a protocol object, a
        # transport and a socket, a few KiB in all, not hundreds.
        self.assertLess(perConnection, 64 * 1024)

        # A stop closes every one of them and still exits 0.
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for k, sock in enumerate(socks):
            self.assertEqual(recvUntilClosed(sock, timeout=30), b"", f"connection {k}")
            sock.close()
        self.assertEqual(server.process.wait(60), 0)
        report("many connections: stop", seconds=round(time.monotonic() - stopped, 2))


class MaxConnectionsTests(ServerTestCase):
    def test_refusesTheExcess(self) -> None:
        """
        With --max-connections 100, of 150 connections opened one after the
        other the first 100 are served and the last 50 closed at once
        without a byte; the refusals are counted, logged once (the log line
        is rate-limited), and once connections close new ones are served.
        """
        server = self.startServer("--max-connections", "100")
        socks: list[socket.socket] = []
        self.addCleanup(closeAll, socks)
        for _ in range(150):
            socks.append(server.connect())
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_connections_refused_total") == 50,
            what="50 refusals",
        )
        # The refused ones were closed without a byte, before sending any.
        for k, sock in enumerate(socks[100:]):
            self.assertEqual(recvUntilClosed(sock, timeout=10), b"", f"refused {k}")
        # The served ones are served.
        for k, sock in enumerate(socks[:100]):
            sock.sendall(submitFrame(k, b"served"))
        for k, sock in enumerate(socks[:100]):
            self.assertEqual(recvExactly(sock, 14), ackFrame(k), f"served {k}")
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_client_connected"), 100)
        self.assertEqual(metric(samples, "tcpdemo_connections_total"), 100)
        self.assertEqual(metric(samples, "tcpdemo_connections_refused_total"), 50)
        self.assertEqual(metric(samples, "tcpdemo_max_connections"), 100)
        refusals = [line for line in server.log().splitlines() if "refused" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("refused 1 connection(s)", refusals[0])
        self.assertIn("--max-connections", refusals[0])

        # Closing ten makes room for ten more, and only ten.
        for sock in socks[:10]:
            sock.close()
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 90)
        more = [server.connect() for _ in range(11)]
        socks.extend(more)
        for k, sock in enumerate(more[:10]):
            sock.sendall(submitFrame(k, b"again"))
            self.assertEqual(recvExactly(sock, 14), ackFrame(k))
        self.assertEqual(recvUntilClosed(more[10], timeout=10), b"")
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_connections_refused_total"), 51)
        self.assertEqual(metric(samples, "tcpdemo_client_connected"), 100)
        self.assertHealthy(server)
