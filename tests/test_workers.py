"""
C{twistd -n tcpdemo --workers N}: the options, the supervisor's restart
backoff on a fake clock, and the real thing as a subprocess, driven over
loopback, its C{/metrics} scraped from the parent.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import tap
from tcpdemo.supervisor import BACKOFF_RESET, WorkerSupervisor, workerArguments
from tcpdemo.worker import WorkerOptions

from .support import (
    LOOPBACK,
    TwistdServer,
    ackFrame,
    metric,
    perWorker,
    pushUntilBlocked,
    recvExactly,
    recvUntilClosed,
    runLoadClient,
    submitFrame,
    waitFor,
    waitForWorkers,
    waitUntilSteady,
    workerPids,
)


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_default(self) -> None:
        """
        One process, as before --workers existed.
        """
        options = parse()
        self.assertEqual(options["workers"], 1)
        self.assertEqual(options["worker-sockets"], "reuseport")
        self.assertIsInstance(tap.makeService(options), tap.TcpDemoService)

    def test_auto(self) -> None:
        self.assertEqual(parse("--workers", "auto")["workers"], os.cpu_count() or 1)
        self.assertEqual(parse("--workers", "3")["workers"], 3)

    def test_refused(self) -> None:
        for args in (
            ["--workers", "0"],
            ["--workers", "x"],
            ["--workers", "2", "--port", "unix:/tmp/tcpdemo.sock"],
            ["--workers", "2", "--port", "ssl:8443"],
            ["--workers", "2", "--debug", "tcp:6060:interface=127.0.0.1"],
            ["--worker-sockets", "both"],
        ):
            self.assertRaises(usage.UsageError, parse, *args)
        # One worker (the default) takes any endpoint, as before.
        parse("--port", "unix:/tmp/tcpdemo.sock")

    def test_helpDocumentsWorkers(self) -> None:
        text = " ".join(str(tap.Options()).split())
        self.assertIn("--workers", text)
        self.assertIn("--worker-sockets", text)
        self.assertIn("applies to each worker", text)

    def test_workerArguments(self) -> None:
        """
        A worker gets every server option but the parent's own, and parses
        them back to the same values.
        """
        token = os.path.abspath(self.mktemp())
        with open(token, "wb") as f:
            f.write(b"secret\n")
        options = parse(
            "--workers",
            "4",
            "--max-connections",
            "7",
            "--idle-timeout",
            "2.5",
            "--write-buffer-limit",
            "1000",
            "--grace-period",
            "3",
            "--max-frame-length",
            "99",
            "--auth-token-file",
            os.path.relpath(token),
            "--metrics",
            "none",
        )
        arguments = workerArguments(options)
        for name in ("port", "metrics", "debug", "workers", "worker-sockets"):
            self.assertFalse([a for a in arguments if a.startswith(f"--{name}=")], name)
        worker = WorkerOptions()
        worker.parseOptions(["--fd=3", "--family=INET6", "--worker-id=2", *arguments])
        for name in (
            "max-connections",
            "idle-timeout",
            "write-buffer-limit",
            "grace-period",
            "max-frame-length",
            "backlog",
            "auth-token",
        ):
            self.assertEqual(worker[name], options[name], name)
        self.assertEqual(worker["auth-token-file"], token)
        self.assertEqual((worker["fd"], worker["family"], worker["worker-id"]), (3, "INET6", "2"))

    def test_makeService(self) -> None:
        """
        With N > 1, makeService builds the supervisor; nothing is created
        until it starts.
        """
        supervisor = tap.makeService(parse("--workers", "2", "--port", "tcp:0"))
        self.assertIsInstance(supervisor, WorkerSupervisor)
        assert isinstance(supervisor, WorkerSupervisor)
        self.assertEqual(len(supervisor.workers), 2)
        self.assertIsNone(supervisor.metricsDirectory)


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeReactor(Clock):
    def __init__(self) -> None:
        Clock.__init__(self)
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: Any, **kwargs: Any) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append(process)
        return process


class BackoffTests(SynchronousTestCase):
    """
    The restart schedule, on a fake clock and fake processes.
    """

    def test_backoff(self) -> None:
        reactor = FakeReactor()
        supervisor = WorkerSupervisor(reactor, parse("--workers", "2"))
        supervisor.metricsDirectory = tempfile.mkdtemp()
        supervisor.server.fileno = lambda worker: 99  # type: ignore[method-assign]
        supervisor.server.familyName = lambda: "INET"  # type: ignore[method-assign]
        logged: list[dict[str, Any]] = []
        supervisor.log = Logger(observer=logged.append)  # type: ignore[arg-type]
        worker = supervisor.workers[0]
        supervisor._spawn(worker)
        self.assertEqual(len(reactor.spawned), 1)
        self.assertEqual(supervisor.registry.get_sample_value("tcpdemo_worker_restarts_total"), 0)
        killed = Failure(error.ProcessTerminated(signal=signal.SIGKILL))

        delays = []
        for _ in range(8):
            supervisor.workerEnded(worker, killed)
            assert worker.restart is not None
            delays.append(worker.restart.getTime() - reactor.seconds())
            reactor.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(len(reactor.spawned), 9)
        self.assertEqual(supervisor.registry.get_sample_value("tcpdemo_worker_restarts_total"), 8)

        # A worker that lived 60 s starts the schedule again.
        reactor.advance(BACKOFF_RESET)
        supervisor.workerEnded(worker, killed)
        assert worker.restart is not None
        self.assertEqual(worker.restart.getTime() - reactor.seconds(), 0.5)
        deaths = [e for e in logged if "starting another" in e.get("log_format", "")]
        self.assertEqual(len(deaths), 9)

        # Stopping cancels a pending restart.
        supervisor.stopping = True
        supervisor.stopService()
        self.assertFalse(reactor.getDelayedCalls())


class WorkersTests(SynchronousTestCase):
    """
    The real thing, two workers.
    """

    def startServer(self, *args: str) -> tuple[TwistdServer, dict[int, int]]:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        server = TwistdServer(path, ["--workers", "2", *args])
        self.addCleanup(self.killAll, server)
        return server, waitForWorkers(server, 2)

    def killAll(self, server: TwistdServer) -> None:
        for pid in workerPids(server.log()).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server.kill()

    def connectOnEach(
        self, server: TwistdServer, count: int, limit: int = 400, receiveBuffer: int = 0
    ) -> dict[int, list[socket.socket]]:
        """
        Open connections, sending nothing, until each worker has C{count}
        of them; return them by worker.  Which worker accepted each one is
        read from the per-worker connection counter.  Extra ones are closed.
        A C{receiveBuffer} fixes SO_RCVBUF (no autotuning).
        """
        byWorker: dict[int, list[socket.socket]] = {1: [], 2: []}
        seen = perWorker(server.scrape(), "tcpdemo_worker_connections_total")
        for _ in range(limit):
            if all(len(socks) >= count for socks in byWorker.values()):
                return byWorker
            sock = socket.socket()
            if receiveBuffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
            sock.settimeout(10)
            sock.connect((LOOPBACK, server.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now: dict[int, float] = {}

            def accepted(now: dict[int, float] = now, seen: dict[int, float] = seen) -> bool:
                now.update(perWorker(server.scrape(), "tcpdemo_worker_connections_total"))
                return sum(now.values()) > sum(seen.values())

            waitFor(accepted, what="the connection to be accepted")
            (worker,) = [w for w in now if now[w] > seen.get(w, 0)]
            seen = dict(now)
            if len(byWorker[worker]) < count:
                byWorker[worker].append(sock)
            else:
                sock.close()
        raise AssertionError(f"{limit} connections did not reach both workers: {seen}")

    def test_loadSpreadsAndMetricsAddUp(self) -> None:
        """
        The load client's connections spread over both workers, every ack
        arrives, and the parent's /metrics adds up the work of both, under
        the names single-process dashboards use.  The options reach the
        workers (--max-connections shows in their summed limit).
        """
        server, pids = self.startServer("--max-connections", "50")
        self.assertEqual(sorted(pids), [1, 2])
        self.assertRegex(server.log(), r"2 SO_REUSEPORT sockets, one per worker")
        count = 40000
        status, report = runLoadClient(server.port, "--connections", "20", "--count", str(count))
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])  # type: ignore[index]
        self.assertEqual(report["acked"], count)

        waitFor(lambda: metric(server.scrape(), "tcpdemo_client_connected") == 0, what="closes")
        # A worker's counts reach its files within FLUSH_DELAY.
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_bytes_sent_total") == 14 * count,
            what="the workers' counts",
        )
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), count)
        self.assertEqual(metric(samples, "tcpdemo_rsp_send_total"), count)
        self.assertEqual(metric(samples, "tcpdemo_connections_total"), 20)
        self.assertEqual(metric(samples, "tcpdemo_bytes_sent_total"), 14 * count)
        for name, total in (
            ("tcpdemo_worker_req_recv_total", count),
            ("tcpdemo_worker_rsp_send_total", count),
            ("tcpdemo_worker_connections_total", 20),
        ):
            byWorker = perWorker(samples, name)
            self.assertEqual(sorted(byWorker), [1, 2], name)
            self.assertEqual(sum(byWorker.values()), total, name)
            for worker, value in byWorker.items():
                self.assertGreater(value, 0, f"{name}: worker {worker} served nothing")
        self.assertEqual(metric(samples, "tcpdemo_workers"), 2)
        self.assertEqual(metric(samples, "tcpdemo_workers_running"), 2)
        self.assertEqual(metric(samples, "tcpdemo_worker_restarts_total"), 0)
        # The limit applies to each worker: the instance's is their sum.
        self.assertEqual(metric(samples, "tcpdemo_max_connections"), 100)
        self.assertEqual(metric(samples, 'tcpdemo_protocol_errors_total{reason="bad_length"}'), 0)
        # process_* cover the parent and the workers.
        workerCpu = perWorker(samples, "tcpdemo_worker_cpu_seconds_total")
        workerRss = perWorker(samples, "tcpdemo_worker_resident_memory_bytes")
        self.assertEqual(sorted(workerCpu), [1, 2])
        cpu = metric(samples, "process_cpu_seconds_total")
        self.assertGreaterEqual(cpu, sum(workerCpu.values()))
        rss = metric(samples, "process_resident_memory_bytes")
        self.assertGreater(rss, sum(workerRss.values()))
        self.assertGreater(metric(samples, "process_open_fds"), 0)

        self.assertEqual(server.terminate(), 0)
        log = server.log()
        for worker, pid in pids.items():
            self.assertIn(f"worker {worker} (pid {pid}) exited with status 0", log)
        # The parent removed the multiprocess directory.
        directory = log.split("metrics files in ", 1)[1].split()[0]
        self.assertFalse(os.path.exists(directory), directory)

    def test_sigkillOneWorker(self) -> None:
        """
        SIGKILL one worker: only its connections close, the other worker's
        keep getting acks, the parent starts a replacement that serves, and
        the counters keep the dead worker's work (what it had counted: a
        worker moves its counts to the parent within FLUSH_DELAY).
        """
        server, pids = self.startServer()
        byWorker = self.connectOnEach(server, 4)
        sent = 0
        for socks in byWorker.values():
            for sock in socks:
                sock.sendall(b"".join(submitFrame(i) for i in range(1, 101)))
                acks = b"".join(ackFrame(i) for i in range(1, 101))
                self.assertEqual(recvExactly(sock, 1400), acks)
                sent += 100
        waitFor(
            lambda: perWorker(server.scrape(), "tcpdemo_worker_req_recv_total") == {1: 400, 2: 400},
            what="the workers' counts",
        )
        samples = server.scrape()
        self.assertEqual(perWorker(samples, "tcpdemo_worker_client_connected"), {1: 4, 2: 4})

        with open(f"/proc/{pids[1]}/cmdline", "rb") as f:
            self.assertIn(b"--worker-id=1", f.read())
        os.kill(pids[1], signal.SIGKILL)
        for sock in byWorker[1]:
            self.assertEqual(recvUntilClosed(sock, timeout=10), b"")
        for sock in byWorker[2]:
            sock.sendall(submitFrame(101))
            self.assertEqual(recvExactly(sock, 14), ackFrame(101))
            sent += 1

        log = server.waitForLog(r"worker 1 restarted, pid \d+")
        self.assertIn(f"worker 1 (pid {pids[1]}) was killed by SIGKILL", log)
        newPid = workerPids(log)[1]
        self.assertNotEqual(newPid, pids[1])
        self.assertEqual(workerPids(log)[2], pids[2])
        waitForWorkers(server, 2)
        waitFor(
            lambda: len(re.findall(r"worker 1: tcpdemo worker accepting", server.log())) == 2,
            timeout=30,
            what="the new worker 1 to accept",
        )
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_req_recv_total") == sent,
            what="worker 2's counts",
        )
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_worker_restarts_total"), 1)
        self.assertEqual(metric(samples, "tcpdemo_workers_running"), 2)
        # The dead worker's connections are no longer counted as open...
        self.assertEqual(metric(samples, "tcpdemo_client_connected"), 4)
        self.assertEqual(perWorker(samples, "tcpdemo_worker_client_connected"), {1: 0, 2: 4})
        # ... but the requests it served still are.
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), sent)
        self.assertEqual(perWorker(samples, "tcpdemo_worker_req_recv_total"), {1: 400, 2: 404})

        # The replacement serves new connections.
        fresh = self.connectOnEach(server, 1)
        for socks in fresh.values():
            socks[0].sendall(submitFrame(7))
            self.assertEqual(recvExactly(socks[0], 14), ackFrame(7))
        self.assertEqual(server.terminate(), 0)

    def test_sigtermDrainsEveryWorker(self) -> None:
        """
        SIGTERM while one client per worker has pushed far more than it
        reads: each gets the ack of every complete Submit its worker had
        read, then a clean close, and the parent exits 0.
        """
        server, pids = self.startServer("--write-buffer-limit", "16384")
        # A fixed receive buffer: with autotuning, the client's kernel can
        # take more acks later, and the worker read more, after it looked
        # steady.
        byWorker = self.connectOnEach(server, 1, receiveBuffer=65536)
        size = len(submitFrame(1, b"p" * 9))
        count = 200000
        frames = b"".join(submitFrame(i, b"p" * 9) for i in range(1, count + 1))
        for socks in byWorker.values():
            pushUntilBlocked(socks[0], frames)

        waitUntilSteady(
            lambda: perWorker(server.scrape(), "tcpdemo_worker_bytes_received_total"),
            0.5,
            what="the workers to stop reading",
        )
        samples = server.scrape()
        self.assertGreater(metric(samples, "tcpdemo_backpressure_pauses_total"), 0)
        owed = {
            worker: int(read) // size
            for worker, read in perWorker(samples, "tcpdemo_worker_bytes_received_total").items()
        }
        for worker, acked in perWorker(samples, "tcpdemo_worker_rsp_send_total").items():
            self.assertLess(acked, owed[worker] + 1)

        server.process.send_signal(signal.SIGTERM)
        # Read only once both workers are stopping: reading earlier would
        # let a worker that has not had its SIGTERM yet read (and owe) more.
        for worker in byWorker:
            server.waitForLog(rf"worker {worker}: stopping \(SIGTERM\)")
        for worker, socks in byWorker.items():
            acks = recvUntilClosed(socks[0], timeout=30)
            self.assertEqual(len(acks), owed[worker] * 14, f"worker {worker}")
            self.assertEqual(acks, b"".join(ackFrame(i % count + 1) for i in range(owed[worker])))
        self.assertEqual(server.process.wait(30), 0)
        log = server.log()
        for worker, pid in pids.items():
            self.assertIn(f"worker {worker} (pid {pid}) exited with status 0", log)
        self.assertIn("Server Shut Down", log)

    def test_sigtermToEveryProcess(self) -> None:
        """
        SIGTERM to the parent and every worker at once, as systemd's
        default KillMode=control-group sends it: each worker drains and
        exits 0 (the parent's own SIGTERM, arriving after a worker's
        reactor stopped, must not turn that into "killed by SIGTERM"), and
        twistd exits 0.
        """
        server, pids = self.startServer()
        # A connection accepted by each worker: its reactor runs, so its
        # SIGTERM handler is installed.
        for socks in self.connectOnEach(server, 1).values():
            socks[0].close()
        status, report = runLoadClient(server.port, "--connections", "4", "--count", "2000")
        self.assertEqual((status, report["acked"]), (0, 2000), report["errors"])
        for pid in [server.pid, *pids.values()]:
            os.kill(pid, signal.SIGTERM)
        self.assertEqual(server.process.wait(30), 0, server.log())
        log = server.log()
        for worker, pid in pids.items():
            self.assertIn(f"worker {worker} (pid {pid}) exited with status 0", log)

    def test_sharedSocket(self) -> None:
        """
        --worker-sockets shared: one socket for both workers; every ack
        arrives and the counters add up.
        """
        server, pids = self.startServer("--worker-sockets", "shared")
        self.assertRegex(server.log(), r"one socket shared by 2 workers")
        status, report = runLoadClient(server.port, "--connections", "10", "--count", "10000")
        self.assertEqual((status, report["acked"]), (0, 10000), report["errors"])
        waitFor(
            lambda: metric(server.scrape(), "tcpdemo_rsp_send_total") == 10000,
            what="the workers' counts",
        )
        samples = server.scrape()
        self.assertEqual(metric(samples, "tcpdemo_req_recv_total"), 10000)
        self.assertEqual(sum(perWorker(samples, "tcpdemo_worker_req_recv_total").values()), 10000)
        self.assertEqual(server.terminate(), 0)

    def test_parentGoneWorkersStop(self) -> None:
        """
        If the parent dies without stopping them (SIGKILL), the workers see
        their standard input close and stop on their own.
        """
        server, pids = self.startServer()
        server.process.kill()
        server.process.wait(10)

        def gone() -> bool:
            return not any(
                os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in pids.values()
            )

        waitFor(gone, timeout=30, what="the workers to exit")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
