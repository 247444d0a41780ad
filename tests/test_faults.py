"""
Faults around a real C{twistd -n tcpdemo}: clients killed with SIGKILL in
the middle of their stream, connections that go silent, stall or reset
(reaped by C{--idle-timeout}), and a SIGTERM while 50 connections pipeline.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from .reliability import (
    REASONS,
    PipelinedLoad,
    ServerTestCase,
    errorCounts,
    refusedNow,
    report,
    resetClose,
    waitForLine,
    waitForProgress,
)
from .support import (
    ackFrame,
    metric,
    pushUntilBlocked,
    recvExactly,
    recvUntilClosed,
    submitFrame,
    subprocessEnv,
    waitFor,
)

#: A client process that pipelines Submits in writes of random sizes (so a
#: kill lands in the middle of a frame as often as not), reads its acks as
#: they come, and says "ready" once it has had its first hundred.  It stops
#: by itself after 60 seconds, should nobody kill it.
FLOOD_CLIENT = r"""
import random, socket, struct, sys, time
port, seed = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
frames = b"".join(
    struct.pack("!i", 33) + b"\x02" + b"%08d" % i + b"k" * 20 for i in range(20000)
)
sock.sendall(frames[: 33 * 100])
got = b""
while len(got) < 14 * 100:
    got += sock.recv(65536)
print("ready", flush=True)
sock.setblocking(False)
offset = 33 * 100
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    start = offset % len(frames)
    try:
        offset += sock.send(frames[start : start + rng.randint(1, 4000)])
    except BlockingIOError:
        time.sleep(0.001)
    try:
        while True:
            if not sock.recv(65536):
                sys.exit(3)
    except BlockingIOError:
        pass
    if rng.random() < 0.05:
        time.sleep(rng.random() / 100)
"""


class KilledClientTests(ServerTestCase):
    def spawnClients(self, port: int, count: int, seed: int) -> list[subprocess.Popen[bytes]]:
        procs = []
        for k in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-c", FLOOD_CLIENT, str(port), str(seed + k)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=subprocessEnv(),
            )
            self.addCleanup(self.reap, proc)
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            self.assertEqual(waitForLine(proc.stdout, 30), b"ready\n")
        return procs

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def test_sigkilledClients(self) -> None:
        """
        Clients killed with SIGKILL in the middle of their streams, one by
        one and then all at once: the connected gauge returns to the one
        clean connection, nothing counts as a protocol error, and the clean
        connection, pipelining all along, gets every ack, in order.
        """
        server = self.startServer()
        clean = PipelinedLoad(server.port, connections=1, window=32)
        clean.start()
        self.addCleanup(clean.stop)
        waitForProgress(clean, 100)
        rng = random.Random()
        killed = 0

        def killedGone() -> None:
            """
            The killed clients' connections go, and the clean one goes on.
            """
            waitFor(
                lambda: metric(server.scrape(), "tcpdemo_client_connected") == 1,
                timeout=15,
                what="the killed clients' connections to go",
            )
            waitForProgress(clean, 1000)

        # One by one, at random moments.
        procs = self.spawnClients(server.port, 8, rng.randrange(1 << 30))
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 9)
        for proc in procs:
            time.sleep(rng.uniform(0.02, 0.3))
            proc.send_signal(signal.SIGKILL)
            self.assertEqual(proc.wait(10), -signal.SIGKILL)
            killed += 1
        killedGone()

        # All at once.
        procs = self.spawnClients(server.port, 8, rng.randrange(1 << 30))
        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 9)
        time.sleep(0.3)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            self.assertEqual(proc.wait(10), -signal.SIGKILL)
            killed += 1
        killedGone()

        samples = server.scrape()
        self.assertEqual(errorCounts(samples), {reason: 0 for reason in REASONS})
        self.assertEqual(metric(samples, "tcpdemo_connections_total"), 1 + killed)
        result = clean.stop()
        self.assertEqual(result.errors, [])
        self.assertEqual(result.acked, result.sent)
        self.assertHealthy(server)
        report("sigkilled clients", killed=killed, clean_acks=result.acked)


class IdleTimeoutTests(ServerTestCase):
    def test_reapsSilentStalledAndResetConnections(self) -> None:
        """
        With --idle-timeout 1: a reset connection goes at once; connections
        that say nothing, stop in the middle of a frame, go quiet after an
        ack, or never read (so that the server stops reading them) -- what a
        peer that vanished without a FIN looks like -- are aborted by the
        idle timeout within seconds and counted; a busy connection is not.
        """
        server = self.startServer("--idle-timeout", "1", "--write-buffer-limit", "16384")
        clean = PipelinedLoad(server.port, connections=1, window=4, rate=200)
        clean.start()
        self.addCleanup(clean.stop)
        waitForProgress(clean, 10)
        before = metric(server.scrape(), "tcpdemo_idle_timeouts_total")

        reset = server.connect()
        reset.sendall(submitFrame(1))
        self.assertEqual(recvExactly(reset, 14), ackFrame(1))
        resetClose(reset)
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_client_connected") == 1,
            what="the reset connection to go",
        )
        # It went because of the reset, not the idle timeout.
        self.assertEqual(metric(server.scrape(), "tcpdemo_idle_timeouts_total"), before)

        started = time.monotonic()
        silent = server.connect()
        partial = server.connect()
        partial.sendall(submitFrame(2, b"cut")[:7])
        quiet = server.connect()
        quiet.sendall(submitFrame(3))
        self.assertEqual(recvExactly(quiet, 14), ackFrame(3))
        stalled = server.connect()
        frames = b"".join(submitFrame(i, b"z" * 10) for i in range(20000))
        pushUntilBlocked(stalled, frames, seconds=0.3)
        idle = [silent, partial, quiet, stalled]
        self.assertGreaterEqual(metric(server.scrape(), "tcpdemo_client_connected"), 1)
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_client_connected") == 1,
            timeout=15,
            what="the idle connections to be reaped",
        )
        reaped = time.monotonic() - started
        for sock in idle:
            recvUntilClosed(sock, timeout=10)
            sock.close()
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_idle_timeouts_total") - before, len(idle))
        self.assertEqual(errorCounts(samples), {reason: 0 for reason in REASONS})
        lines = [line for line in server.log().splitlines() if "idle for" in line]
        self.assertEqual(len(lines), len(idle), lines)
        result = clean.stop()
        self.assertEqual(result.errors, [])
        self.assertEqual(result.acked, result.sent)
        self.assertHealthy(server)
        report("idle timeout", idle_timeout=1, reaped=len(idle), seconds=round(reaped, 2))


class GracefulStopTests(ServerTestCase):
    def test_sigtermUnderLoad(self) -> None:
        """
        SIGTERM while 50 connections pipeline (up to 100 Submits each in
        flight) and one more has pushed far more than it reads: the server
        stops accepting, answers every complete Submit it had read -- the
        acks the clients get add up to the server's own final count, each
        connection's in order -- closes them all, and exits 0 within the
        grace period.
        """
        grace = 30.0
        server = self.startServer("--grace-period", str(grace), "--write-buffer-limit", "16384")
        # The holder keeps the drain going (its acks wait for it to read)
        # so that the final counters can be scraped before the exit.
        holder = server.connect()
        holderFrames = b"".join(submitFrame(i, b"h" * 10) for i in range(200000))
        pushUntilBlocked(holder, holderFrames, seconds=0.5)
        load = PipelinedLoad(
            server.port, connections=50, window=100, payload=b"g" * 16, expectServerClose=True
        )
        load.start()
        self.addCleanup(load.stop)
        waitForProgress(load, 20000)

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        waitFor(lambda: refusedNow(server.port), timeout=10, what="the listener to close")
        samples = server.scrape()
        answered = metric(samples, "tcpdemo_rsp_send_total")
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), answered)

        drainStarted = time.monotonic() - started
        holderAcks = recvUntilClosed(holder, timeout=grace)
        holderDone = time.monotonic() - started
        # The server shut its side and waits (lingers) for ours.
        holder.close()
        holderCount = len(holderAcks) // 14
        self.assertEqual(holderAcks, b"".join(ackFrame(i % 200000) for i in range(holderCount)))
        status = server.process.wait(grace)
        elapsed = time.monotonic() - started
        result = load.stop()
        self.assertEqual(result.errors, [])
        self.assertEqual(result.closedByServer, 50)
        self.assertEqual(status, 0)
        self.assertLess(elapsed, grace)
        self.assertEqual(
            result.acked + holderCount,
            answered,
            f"acks received by the clients vs the server's final rsp_send; "
            f"per connection (sent, acked): {result.perConnection}",
        )
        self.assertNotIn("grace period", server.log())
        report(
            "graceful stop under load",
            connections=51,
            acks_delivered=int(answered),
            unanswered_in_flight=result.sent - result.acked,
            seconds=round(elapsed, 2),
            drain_started=round(drainStarted, 2),
            holder_done=round(holderDone, 2),
        )
