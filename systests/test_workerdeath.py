"""
C{--workers 2} with the default SO_REUSEPORT sockets while one worker is
SIGKILLed again and again: every new connection is answered, within a
bound, by the live worker, including while the dead one waits out a long
restart backoff.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    LOOPBACK,
    TwistdServer,
    ackFrame,
    metric,
    perWorker,
    recvExactly,
    submitFrame,
    waitFor,
    waitForWorkers,
    workerPids,
)

#: Seconds within which every new connection must get its ack.
BOUND = 2.0
#: New connections tried after each kill.
CONNECTIONS = 40
#: SIGKILLs of worker 1; its restart delay is then 0.5 * 2**(KILLS-1) s.
KILLS = 4


class WorkerDeathTests(SynchronousTestCase):
    def startServer(self) -> TwistdServer:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        server = TwistdServer(path, ["--workers", "2"])
        self.addCleanup(self.killAll, server)
        waitForWorkers(server, 2)
        return server

    def killAll(self, server: TwistdServer) -> None:
        for pid in workerPids(server.log()).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server.kill()

    def answeredWithin(self, server: TwistdServer, number: int) -> float:
        """
        Connect, send one Submit and read its ack, from a new source port;
        return the seconds it took (failing past L{BOUND}).
        """
        began = time.monotonic()
        with socket.create_connection((LOOPBACK, server.port), timeout=BOUND) as sock:
            sock.sendall(submitFrame(number))
            try:
                ack = recvExactly(sock, 14)
            except (socket.timeout, OSError) as e:
                raise self.failureException(
                    f"connection {number}: no ack within {BOUND}s ({e!r})"
                ) from e
        self.assertEqual(ack, ackFrame(number))
        return time.monotonic() - began

    def test_newConnectionsNeverWaitForADeadWorker(self) -> None:
        server = self.startServer()
        self.assertRegex(server.log(), r"2 SO_REUSEPORT sockets, one per worker")
        answered = 0
        slowest = 0.0
        for kill in range(1, KILLS + 1):
            pid = workerPids(server.log())[1]
            os.kill(pid, signal.SIGKILL)
            server.waitForLog(rf"worker 1 \(pid {pid}\) was killed by SIGKILL")
            # Worker 1 is dead and waits out its backoff: every connection
            # made now must reach worker 2.
            for _ in range(CONNECTIONS):
                answered += 1
                slowest = max(slowest, self.answeredWithin(server, answered))
            if kill < KILLS:
                waitFor(
                    lambda kill=kill: (
                        len(
                            [
                                line
                                for line in server.log().splitlines()
                                if "worker 1: tcpdemo worker accepting" in line
                            ]
                        )
                        == kill + 1
                    ),
                    timeout=60,
                    what="worker 1's replacement to accept",
                )
        # The last backoff (4 s) has not run out yet: still no worker 1.
        self.assertNotIn("worker 1 restarted", server.log().split("was killed by SIGKILL")[-1])
        # Every connection was served, by worker 2 while worker 1 was dead,
        # and counted: the live worker loses no count.
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_req_recv_total") >= answered,
            what="the counts",
        )
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), answered)
        self.assertEqual(perWorker(samples, "tcpdemo_worker_req_recv_total")[2], answered)
        self.assertEqual(metric(samples, "tcpdemo_worker_restarts_total"), KILLS - 1)
        self.assertLess(slowest, BOUND)

        # The replacement gets a fresh socket and takes its share again.
        waitForWorkers(server, 2)
        waitFor(
            lambda: (
                len(
                    [
                        line
                        for line in server.log().splitlines()
                        if "worker 1: tcpdemo worker accepting" in line
                    ]
                )
                == KILLS + 1
            ),
            timeout=60,
            what="the last replacement to accept",
        )
        for _ in range(CONNECTIONS):
            answered += 1
            self.answeredWithin(server, answered)
        waitFor(
            lambda: perWorker(server.scrape(), "tcpdemo_worker_req_recv_total").get(1, 0) > 0,
            what="worker 1 to serve again",
        )
        self.assertEqual(server.terminate(), 0)
