"""
Handlers in a real C{twistd -n tcpdemo}: shutdown, start-up failure, a hung
backend, the sqlite store and C{tcpdemo-dump}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import TestCase

from .handlerkit import pluginPath
from .support import (
    TwistdServer,
    ackFrame,
    metric,
    recvExactly,
    recvUntilClosed,
    submitFrame,
    subprocessEnv,
    twistdCommand,
    waitFor,
)


def submits(count: int, payload: bytes = b"") -> bytes:
    return b"".join(submitFrame(i, payload or b"p%d" % i) for i in range(count))


def acks(count: int, result: int = 0) -> bytes:
    return b"".join(ackFrame(i, result) for i in range(count))


def runDump(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tcpdemo.dump", *args],
        env=subprocessEnv(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


class HandlerTwistdTests(TestCase):
    def server(self, *args: str) -> TwistdServer:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        server = TwistdServer(
            workdir, ["--handler", *args], extraPath=[pluginPath(os.path.join(workdir, "p"))]
        )
        self.addCleanup(server.kill)
        return server

    def holding(self, count: int, *args: str) -> tuple[TwistdServer, socket.socket]:
        """
        A server (C{--handler} C{args}) and a client whose C{count} Submits
        are all at the handler.
        """
        server = self.server(*args)
        sock = server.connect()
        sock.sendall(submits(count))
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_handler_pending") == count,
            what=f"{count} Submits at the handler",
        )
        return server, sock

    def timedTerminate(self, server: TwistdServer, timeout: float) -> tuple[int, float]:
        """
        SIGTERM; the exit status and the seconds until the exit.
        """
        started = time.monotonic()
        status = server.terminate(timeout=timeout)
        return status, time.monotonic() - started

    def test_sigtermDrainsHandlerWork(self) -> None:
        """
        SIGTERM while the handler holds every batch for a second: the acks
        still all arrive, then the handler is stopped, and twistd exits 0.
        """
        server, sock = self.holding(2000, "test-delay:1.5")
        self.assertEqual(metric(server.scrape(), "tcpdemo_rsp_send_total"), 0)
        status = server.terminate()
        self.assertEqual(recvUntilClosed(sock), acks(2000))
        self.assertEqual(status, 0, server.log())
        log = server.log()
        self.assertIn("test handler stopped after", log)

    def test_sigtermWithAHungHandler(self) -> None:
        """
        SIGTERM with a handler that never answers and whose stopHandler never
        fires: the Submits at the handler are acked with result 2 when the
        grace period ends, one log line names what was abandoned, and twistd
        exits within the grace period with SIGTERM's status.
        """
        grace = 2.0
        server, sock = self.holding(100, "test-hang", "--grace-period", str(grace))
        status, elapsed = self.timedTerminate(server, grace + 20)
        self.assertEqual(status, -signal.SIGTERM, server.log())
        self.assertGreaterEqual(elapsed, grace - 0.1)
        # The grace period, and twistd's own stop after it (a loaded
        # machine's margin): not the 30 s --handler-timeout, nor forever.
        self.assertLess(elapsed, grace + 3.0, server.log())
        self.assertEqual(recvUntilClosed(sock), acks(100, 2))
        lines = [line for line in server.log().splitlines() if "abandoned" in line]
        self.assertEqual(len(lines), 1, server.log())
        self.assertRegex(
            lines[0],
            r"stopped hard: the grace period of 2.0s ran out; abandoned: \d+ batch\(es\) of "
            r"100 Submit\(s\) at the handler \(acked with result 2\); 1 connection\(s\) "
            r"closed hard; the stopHandler of --handler test-hang$",
        )

    def test_sigtermWithAHandlerThreadThatHangs(self) -> None:
        """
        A handler stuck in Twisted's thread pool, which the reactor joins as
        it shuts down: the stop itself ends in the grace period (result 2
        for the batch), then the exit watchdog kills the process
        EXIT_MARGIN seconds later, saying so in one line.
        """
        from tcpdemo.exitwatch import EXIT_MARGIN

        grace = 1.0
        server, sock = self.holding(10, "test-threadhang", "--grace-period", str(grace))
        status, elapsed = self.timedTerminate(server, grace + EXIT_MARGIN + 20)
        self.assertEqual(status, -signal.SIGKILL, server.log())
        self.assertGreaterEqual(elapsed, grace + EXIT_MARGIN - 0.1)
        self.assertLess(elapsed, grace + EXIT_MARGIN + 3.0, server.log())
        self.assertEqual(recvUntilClosed(sock), acks(10, 2))
        log = server.log()
        self.assertEqual(log.count("abandoned: "), 1, log)
        lines = [line for line in log.splitlines() if "blocks the exit" in line]
        self.assertEqual(len(lines), 1, log)
        self.assertIn(
            f"still running {grace + EXIT_MARGIN}s after the stop began (--grace-period plus "
            f"{EXIT_MARGIN}s): a handler's thread or stop hook blocks the exit; killing the "
            "process (SIGKILL)",
            lines[0],
        )

    def test_failedStartIsOneLine(self) -> None:
        """
        A handler whose start fails ends start-up: nothing listens, twistd
        exits non-zero, and says why in one line.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(
            twistdCommand()
            + [
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(workdir, "twistd.log"),
                "tcpdemo",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                "none",
                "--handler",
                "test-failstart",
            ],
            cwd=workdir,
            env=subprocessEnv([pluginPath(os.path.join(workdir, "p"))]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        # twistd sends its standard error to its log.
        with open(os.path.join(workdir, "twistd.log")) as f:
            log = f.read()
        self.assertNotIn("listening on", log)
        lines = [line for line in log.splitlines() if "test-failstart" in line]
        self.assertEqual(len(lines), 1, log)
        self.assertTrue(
            lines[0].endswith(
                "tcpdemo: --handler test-failstart failed to start: RuntimeError: "
                "the backend is unreachable"
            ),
            log,
        )

    def test_hungBackend(self) -> None:
        """
        A handler that never answers: every Submit gets result 2 after
        --handler-timeout, reading stops at --max-pending-total meanwhile,
        and memory stays flat over many rounds.
        """
        server = self.server(
            "test-never", "--handler-timeout", "0.2", "--max-pending-total", "2000"
        )
        sock = server.connect()
        count = 20000
        rounds = []
        peaks = []
        for _ in range(4):
            stop = threading.Event()
            peak = [0.0]

            def watch(peak: list[float] = peak, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    value = metric(server.scrape(), "tcpdemo_handler_pending")
                    peak[0] = max(peak[0], value)
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            sender = threading.Thread(target=sock.sendall, args=(submits(count, b"x" * 50),))
            sender.start()
            try:
                received = recvExactly(sock, 14 * count)
            finally:
                sender.join()
                stop.set()
                watcher.join()
            self.assertEqual(received, acks(count, 2))
            rounds.append(server.rssBytes())
            peaks.append(peak[0])
        # One 64 KiB read past the bound at most: ~1000 Submits of 67 bytes,
        # and the partial frame before it.
        self.assertLessEqual(max(peaks), 2000 + 1100, peaks)
        self.assertLess(rounds[-1] - rounds[0], 20 * 1024 * 1024, rounds)
        samples = server.scrape()
        self.assertEqual(metric(samples, 'tcpdemo_acks_total{result="2"}'), 4 * count)
        self.assertGreater(metric(samples, "tcpdemo_handler_timeouts_total"), 0)
        self.assertEqual(metric(samples, "tcpdemo_handler_pending"), 0)


class HandlerWorkersTests(TestCase):
    def workers(self, *args: str) -> TwistdServer:
        """
        C{twistd tcpdemo --workers 2 --handler ARGS...}, its two workers
        running; every process killed at the end of the test.
        """
        from .support import waitForWorkers, workerPids

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        server = TwistdServer(
            workdir,
            ["--workers", "2", "--handler", *args],
            extraPath=[pluginPath(os.path.join(workdir, "p"))],
        )

        def killAll() -> None:
            for pid in workerPids(server.log()).values():
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            server.kill()

        self.addCleanup(killAll)
        waitForWorkers(server, 2)
        return server

    def test_workersRunTheHandler(self) -> None:
        """
        With --workers 2 each worker runs the handler: every connection gets
        its acks, and the parent's /metrics sums the workers' handler
        metrics.
        """
        server = self.workers("test-delay:0.05")
        socks = [server.connect() for _ in range(8)]
        for sock in socks:
            sock.sendall(submits(500))
        for sock in socks:
            self.assertEqual(recvExactly(sock, 14 * 500), acks(500))

        def counted() -> bool:
            samples = server.scrape()
            return metric(samples, 'tcpdemo_acks_total{result="0"}', 0) == 4000

        waitFor(counted, what="the workers' acks in the parent's /metrics")
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_handler_pending"), 0)
        self.assertGreater(metric(samples, "tcpdemo_handler_batch_seconds_count"), 0)
        self.assertGreaterEqual(metric(samples, "tcpdemo_handler_batch_seconds_sum"), 0.05)
        for sock in socks:
            sock.close()
        self.assertEqual(server.terminate(), 0, server.log())

    def test_workerWithAHungHandlerStopsInTheGracePeriod(self) -> None:
        """
        With --workers 2 and a handler that never answers nor stops, each
        worker bounds its own stop by the grace period (result 2 for what it
        holds, one line, exit 1): the parent does not have to kill any, and
        exits with SIGTERM's status, saying acks may have been lost.
        """
        from tcpdemo.supervisor import KILL_MARGIN

        grace = 1.0
        server = self.workers("test-hang", "--grace-period", str(grace))
        sock = server.connect()
        sock.sendall(submits(50))
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_handler_pending", 0) == 50,
            what="50 Submits at a worker's handler",
        )
        started = time.monotonic()
        status = server.terminate(timeout=grace + KILL_MARGIN + 20)
        elapsed = time.monotonic() - started
        log = server.log()
        self.assertEqual(status, -signal.SIGTERM, log)
        # Less than the parent's kill margin: the workers ended themselves.
        self.assertLess(elapsed, grace + KILL_MARGIN - 1.0, log)
        self.assertEqual(recvUntilClosed(sock), acks(50, 2))
        # One line from each worker: both abandon their stopHandler, the one
        # with the connection its batch too.
        lines = [line for line in log.splitlines() if "abandoned: " in line]
        self.assertEqual(len(lines), 2, log)
        for line in lines:
            self.assertTrue(line.endswith("the stopHandler of --handler test-hang"), line)
        self.assertEqual(
            len([line for line in lines if "batch(es) of 50 Submit(s)" in line]), 1, log
        )
        self.assertNotIn("killing it", log)
        self.assertIn("not every worker stopped cleanly", log)


class SqliteTwistdTests(TestCase):
    def test_roundTrip(self) -> None:
        """
        Submits acked by --handler sqlite:PATH are in the file, and
        tcpdemo-dump prints them oldest first, before and after a restart.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "store.db")
        server = TwistdServer(workdir, ["--handler", f"sqlite:{path}"])
        self.addCleanup(server.kill)
        sock = server.connect()
        count = 3000
        data = submits(count)
        sock.sendall(data)
        self.assertEqual(recvExactly(sock, 14 * count), acks(count))
        host, port = sock.getsockname()[:2]
        peer = f"{host}:{port}"
        before = time.time()
        result = runDump(f"sqlite:{path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
        self.assertEqual(len(lines), count)
        for number, stored in enumerate(lines):
            self.assertEqual(bytes.fromhex(stored["id"]), b"%08d" % number)
            self.assertEqual(bytes.fromhex(stored["payload"]), b"p%d" % number)
            self.assertEqual(stored["peer"], peer)
            self.assertLessEqual(stored["received"], before)
            self.assertGreater(stored["received"], before - 60)
        self.assertEqual(metric(server.scrape(), 'tcpdemo_acks_total{result="0"}'), count)
        sock.close()
        self.assertEqual(server.terminate(), 0, server.log())
        rerun = os.path.join(workdir, "again")
        os.makedirs(rerun)
        again = TwistdServer(rerun, ["--handler", f"sqlite:{path}"])
        self.addCleanup(again.kill)
        sock = again.connect()
        sock.sendall(submitFrame(99999, b"after"))
        self.assertEqual(recvExactly(sock, 14), ackFrame(99999))
        result = runDump(f"sqlite:{path}")
        lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
        self.assertEqual(len(lines), count + 1)
        self.assertEqual(bytes.fromhex(lines[-1]["payload"]), b"after")
        # The file is the documented schema, in WAL mode.
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        columns = [row[1] for row in db.execute("PRAGMA table_info(submits)")]
        self.assertEqual(columns, ["seq", "id", "payload", "received", "peer", "conn"])

    def test_workersRefused(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(
            twistdCommand()
            + [
                "-n",
                "--pidfile=",
                "tcpdemo",
                "--workers",
                "2",
                "--handler",
                f"sqlite:{os.path.join(workdir, 'x.db')}",
            ],
            cwd=workdir,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        # twistd prints a usage error and exits; its status for one varies
        # (1 on Twisted 25, 0 on 26.4), so the message is what is checked.
        output = (result.stdout + result.stderr).decode()
        self.assertIn(
            "--handler sqlite keeps one writer per store: use it with --workers 1", output
        )
        self.assertFalse(os.path.exists(os.path.join(workdir, "x.db")))


class DumpTests(TestCase):
    def test_help(self) -> None:
        """
        --help (or -h): the usage line on standard output, exit status 0.
        """
        for flag in ("--help", "-h"):
            result = runDump(flag)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(
                result.stdout.decode(),
                "usage: tcpdemo-dump SPEC   "
                "(e.g. tcpdemo-dump sqlite:/var/lib/tcpdemo/submits.db)\n",
            )
            self.assertEqual(result.stderr, b"")

    def test_badSpecs(self) -> None:
        """
        Each bad SPEC: exit status 2 and one line saying what is wrong.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        notADatabase = os.path.join(workdir, "text.db")
        with open(notADatabase, "w") as f:
            f.write("not sqlite\n" * 100)
        emptyDatabase = os.path.join(workdir, "empty.db")
        sqlite3.connect(emptyDatabase).close()
        cases = [
            (["nosuch"], "tcpdemo-dump: no handler named 'nosuch'"),
            (["ack"], "tcpdemo-dump: the ack handler stores nothing to dump"),
            (["sqlite"], "tcpdemo-dump: sqlite needs a file: sqlite:PATH"),
            ([f"sqlite:{workdir}/missing.db"], f"tcpdemo-dump: no such file: {workdir}/missing.db"),
            ([f"sqlite:{notADatabase}"], f"tcpdemo-dump: {notADatabase}: not a tcpdemo sqlite"),
            ([f"sqlite:{emptyDatabase}"], f"tcpdemo-dump: {emptyDatabase}: not a tcpdemo sqlite"),
            ([], "usage: tcpdemo-dump SPEC"),
            (["a", "b"], "usage: tcpdemo-dump SPEC"),
        ]
        for args, expected in cases:
            result = runDump(*args)
            stderr = result.stderr.decode()
            self.assertEqual(result.returncode, 2, (args, stderr))
            self.assertEqual(len(stderr.splitlines()), 1, (args, stderr))
            self.assertTrue(stderr.startswith(expected), (args, stderr))
            self.assertEqual(result.stdout, b"")
