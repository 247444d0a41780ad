"""
C{twistd -n tcpdemo --workers N}, the parent: listening sockets, N worker
processes (L{tcpdemo.worker}) supervised, one C{/metrics} for them all.

The parent (L{WorkerSupervisor}) binds C{--port} itself, never accepts on
it, and starts N workers with C{reactor.spawnProcess}, handing each a
listening socket as file descriptor 3.  A worker (C{python -m
tcpdemo.worker}) is a whole tcpdemo server but for its listener:
C{reactor.adoptStreamPort} on the inherited socket.

C{--worker-sockets} chooses how the port is shared:

  - C{reuseport} (the default on Linux): one C{SO_REUSEPORT} socket per
    worker, all bound by the parent (so port 0 works, and nobody else's
    socket is in the group when the parent starts).  The kernel hashes
    each connection onto one socket, so the split is even and no idle
    worker is woken for nothing.  The price: each socket has its own
    accept queue, tied to its worker's life (see L{WorkerSockets}).
  - C{shared}: one socket for all.  Connections wait in the one queue for
    any live worker and a slow worker takes fewer of them; but every idle
    worker wakes for each connection and a burst of connects can mostly
    go to the worker that wakes first.  It is also what other systems
    than Linux get, where C{SO_REUSEPORT} does not spread connections.

C{tcpdemo_worker_client_connected} shows the split.

The parent supervises: it restarts a worker that dies (after 0.5 s, doubling
to 30 s for a worker that keeps dying, back to 0.5 s once one has lived
60 s), logs one line per death and per start, and counts restarts in
C{tcpdemo_worker_restarts_total}.  With C{SO_REUSEPORT} sockets (the
default, L{WorkerSockets}) it closes a dead worker's socket at once, so
that no new connection waits for the replacement, which gets a fresh one.
A SIGKILLed worker's counts of its last L{tcpdemo.metrics.FLUSH_DELAY}
(0.1 s) are lost: what it had not yet moved into its metrics file.

On SIGTERM the parent closes its copy of the socket, sends SIGTERM to
every worker (each delivers its owed acks within C{--grace-period}, as a
single-process server does), waits for them, and exits 0 if every worker
did.  A worker also stops, the same way, when the parent goes away (its
standard input, a pipe from the parent, closes).

Metrics: the parent makes a private directory for prometheus_client's
multiprocess mode, passes it to the workers as C{PROMETHEUS_MULTIPROC_DIR}
(set before their interpreter starts, so before prometheus_client is
imported), serves C{/metrics} from those files (see L{tcpdemo.aggregation}),
calls C{mark_process_dead} for each dead worker and removes the directory
when it stops.  Worker log events reach the parent's log as JSON lines on
the worker's standard output, re-emitted with their level, namespace and
time, prefixed C{worker N:}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import MultiService, Service
from twisted.internet import defer, error, tcp
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import (
    Logger,
    LogLevel,
    eventFromJSON,
    formatEvent,
)
from twisted.python.failure import Failure

import tcpdemo
from tcpdemo.aggregation import workersRegistry
from tcpdemo.endpoints import (
    ListenerService,
    ListenTCPReactor,
    describeListening,
    withBacklog,
)
from tcpdemo.metrics import metricsSite
from tcpdemo.startup import cannotListen
from tcpdemo.twistedinternals import clearExitSignal

if TYPE_CHECKING:
    from tcpdemo.tap import Options

#: Restart backoff: first delay, cap, and how long a worker must have lived
#: for the next restart to start again from the first delay.
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
BACKOFF_RESET = 60.0

#: On stop, seconds past --grace-period before a worker still running is
#: killed with SIGKILL.
KILL_MARGIN = 5.0

#: The listening socket's file descriptor in a worker.
WORKER_FD = 3

#: Server options a worker does not get from the parent: it has no port or
#: metrics listener of its own and serves no profiling endpoints.
_PARENT_ONLY = frozenset(("port", "metrics", "debug", "workers", "worker-sockets"))

#: Longest partial line kept from a worker's output before it is logged.
_MAX_LINE = 65536


def workerArguments(options: Options) -> list[str]:
    """
    The command-line options that give a worker the same configuration as
    C{options}: every server option but those in L{_PARENT_ONLY}.
    """
    arguments = []
    for parameter in type(options).optParameters:
        name = parameter[0]
        value = options[name]
        if name in _PARENT_ONLY or value is None:
            continue
        if name == "auth-token-file":
            # twistd may change directory (--rundir) after parsing options.
            value = os.path.abspath(value)
        arguments.append(f"--{name}={value}")
    return arguments


def describeEnd(reason: Failure) -> str:
    """
    How a process ended, for a log line.
    """
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


@attrs.define(eq=False)
class _Worker:
    """
    One worker slot: its number stays, its process changes on restarts.
    """

    number: int
    process: IProcessTransport | None = None
    pid: int | None = None
    started: float = 0.0
    delay: float = INITIAL_BACKOFF
    restart: IDelayedCall | None = None
    ended: defer.Deferred[None] | None = None


class WorkerProcessProtocol(ProcessProtocol):
    """
    The parent's end of one worker process: its output, line by line, and
    its end.
    """

    def __init__(self, supervisor: WorkerSupervisor, worker: _Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._partial:
            return
        *lines, rest = (self._partial[childFD] + data).split(b"\n")
        if len(rest) > _MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            self.supervisor.workerOutput(self.worker, line, stderr=childFD == 2)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._partial.items():
            if rest:
                self.supervisor.workerOutput(self.worker, rest, stderr=childFD == 2)
        self._partial = {1: b"", 2: b""}
        self.supervisor.workerEnded(self.worker, reason)


def reusePortBalances() -> bool:
    """
    Whether C{SO_REUSEPORT} spreads connections over the sockets sharing a
    port: Linux's does (by a hash of the addresses); the BSDs' and macOS's
    do not.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class _ReusePortTCP(tcp.Port):
    """
    A TCP port whose socket has C{SO_REUSEPORT} set before it is bound.
    """

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = tcp.Port.createInternetSocket(self)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class WorkerSockets(Service):
    """
    The parent's listening sockets, bound and listening but never read by
    the parent's reactor: the workers accept from them.  With
    C{reuseport}, one C{SO_REUSEPORT} socket per worker (all bound by the
    parent, so port 0 works and nobody else's socket is in the group when
    the parent starts); with C{shared}, one socket for all of them.

    With C{reuseport}, a dead worker's socket is closed at once (L{release}),
    so that the kernel hashes new connections onto the live workers' sockets
    only, rather than queueing them for a replacement that may be seconds
    away; its replacement gets a fresh socket (L{fileno}).  Connections
    already in the dead socket's queue are reset by the close.  The shared
    socket is held for the parent's whole life: live workers keep accepting
    from it.
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, count: int, mode: str) -> None:
        self.reactor = reactor
        self.description = description
        self.count = count
        self.mode = mode
        #: By worker slot (reuseport), or the one shared socket; None: a
        #: dead worker's, closed until its replacement starts; a plain
        #: socket: a replacement's, bound by this process (L{fileno}).
        self.ports: list[tcp.Port | socket.socket | None] = []
        self._family = "INET"
        self._address = ""
        self._bound: tuple[int, int, str] | None = None
        self.factory = Factory()
        self.factory.noisy = False

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if not self.ports:
            self._listen()

    def _listen(self) -> None:
        if self.mode == "reuseport" and not reusePortBalances():
            self.log.warn(
                "SO_REUSEPORT does not spread connections on {platform}: "
                "using one shared socket (--worker-sockets shared)",
                platform=sys.platform,
            )
            self.mode = "shared"
        endpoint = serverFromString(ListenTCPReactor(self._listenTCP), self.description)
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            for port in self.ports:
                _close(port)
            self.ports = []
            raise cannotListen("--port", self.description, outcome[0])
        how = (
            f"{len(self.ports)} SO_REUSEPORT sockets, one per worker"
            if self.mode == "reuseport"
            else f"one socket shared by {self.count} workers"
        )
        self.log.info(
            "tcpdemo server listening on {address} ({how})", address=self.address(), how=how
        )

    def _listenTCP(
        self, port: int, factory: Factory[Any], backlog: int = 50, interface: str = ""
    ) -> tcp.Port:
        for _ in range(self.count if self.mode == "reuseport" else 1):
            listening = self._open(port, backlog, interface)
            self.ports.append(listening)
            # The others join the first one's port (port 0: the one chosen).
            port = listening.getHost().port
            self._bound = (port, backlog, interface)
        first = self.ports[0]
        assert isinstance(first, tcp.Port)
        family = getattr(first, "addressFamily", socket.AF_INET)
        self._family = "INET6" if family == socket.AF_INET6 else "INET"
        self._address = describeListening(first.getHost())
        return first

    def _open(self, port: int, backlog: int, interface: str) -> tcp.Port:
        portType = _ReusePortTCP if self.mode == "reuseport" else tcp.Port
        listening = portType(port, self.factory, backlog, interface, self.reactor)
        listening.startListening()
        # The workers accept; this process only holds the socket open.
        listening.stopReading()
        return listening

    def fileno(self, worker: int) -> int:
        """
        The socket of worker number C{worker} (from 1).  After a
        L{release}, a fresh one, bound but not listening: the replacement
        worker listens on it once it is ready to accept (L{listenOn}), so
        that no connection waits in its queue while the worker starts.
        Raises L{OSError} if it cannot be bound.
        """
        index = (worker - 1) % len(self.ports)
        listening = self.ports[index]
        if listening is None:
            listening = self.ports[index] = self._bindFresh()
        return int(listening.fileno())

    def _bindFresh(self) -> socket.socket:
        assert self._bound is not None
        port, _, interface = self._bound
        family = socket.AF_INET6 if self.familyName() == "INET6" else socket.AF_INET
        fresh = socket.socket(family, socket.SOCK_STREAM)
        try:
            fresh.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            fresh.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            fresh.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
            # As Twisted's own: a blocking accept would stall the worker.
            fresh.setblocking(False)
        except OSError:
            fresh.close()
            raise
        return fresh

    def release(self, worker: int) -> None:
        """
        Worker number C{worker} died: with C{reuseport}, close its socket
        now, taking it out of the port's group.
        """
        if self.mode != "reuseport" or not self.ports:
            return
        index = (worker - 1) % len(self.ports)
        listening, self.ports[index] = self.ports[index], None
        _close(listening)

    def familyName(self) -> str:
        return self._family

    def address(self) -> str:
        return self._address

    def stopService(self) -> Any:
        Service.stopService(self)
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(_close, p) for p in ports])


def _close(listening: tcp.Port | socket.socket | None) -> Any:
    """
    Close one of the parent's sockets, a listening port or a plain socket.
    """
    if isinstance(listening, tcp.Port):
        return listening.stopListening()
    if listening is not None:
        listening.close()
    return None


class WorkerSupervisor(MultiService):
    """
    The parent process of C{--workers N}: listens, runs and restarts the
    workers, serves their metrics, and stops them gracefully.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, options: Options, registry: CollectorRegistry | None = None
    ) -> None:
        MultiService.__init__(self)
        self.reactor = reactor
        self.count: int = options["workers"]
        self.gracePeriod: float = options["grace-period"]
        self.arguments = workerArguments(options)
        self.metricsDirectory: str | None = None
        self.workers = [_Worker(number) for number in range(1, self.count + 1)]
        self.stopping = False
        self._pids: tuple[tuple[str, int], ...] = ()
        self._stopFailures: list[str] = []

        self.server = WorkerSockets(
            reactor,
            withBacklog(options["port"], options["backlog"]),
            self.count,
            options["worker-sockets"],
        )
        self.server.setServiceParent(self)

        self.registry = workersRegistry(lambda: self.metricsDirectory, lambda: self._pids, registry)
        self.restarts = Counter(
            "tcpdemo_worker_restarts",
            "Worker processes started again after one died (--workers).",
            registry=self.registry,
        )
        Gauge(
            "tcpdemo_workers",
            "Worker processes configured (--workers).",
            registry=self.registry,
        ).set(self.count)
        self.runningGauge = Gauge(
            "tcpdemo_workers_running",
            "Worker processes running now.",
            registry=self.registry,
        )
        self.metricsListener: ListenerService | None = None
        if options["metrics"] is not None:
            self.metricsListener = ListenerService(
                reactor,
                withBacklog(options["metrics"], options["backlog"]),
                metricsSite(self.registry),
                "tcpdemo metrics (/metrics)",
                option="--metrics",
            )
            self.metricsListener.setServiceParent(self)

    # Starting

    def startService(self) -> None:
        # Made here, after twistd has shed privileges (--uid): the workers,
        # running as the same user, must be able to write to it.
        if self.metricsDirectory is None:
            self.metricsDirectory = tempfile.mkdtemp(prefix="tcpdemo-metrics-")
        MultiService.startService(self)
        self.log.info(
            "running {count} workers; metrics files in {directory}",
            count=self.count,
            directory=self.metricsDirectory,
        )
        for worker in self.workers:
            self._spawn(worker)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        assert self.metricsDirectory is not None
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metricsDirectory
        env.pop("prometheus_multiproc_dir", None)
        # The workers run this same copy of tcpdemo.
        root = os.path.dirname(os.path.dirname(os.path.abspath(tcpdemo.__file__)))
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
        return env

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        if self.stopping:
            return
        args = [
            sys.executable,
            "-m",
            "tcpdemo.worker",
            f"--fd={WORKER_FD}",
            f"--family={self.server.familyName()}",
            f"--worker-id={worker.number}",
            *self.arguments,
        ]
        protocol = WorkerProcessProtocol(self, worker)
        try:
            fd = self.server.fileno(worker.number)
            process = self.reactor.spawnProcess(
                protocol,
                sys.executable,
                args,
                env=self._environment(),
                path=None,
                childFDs={0: "w", 1: "r", 2: "r", WORKER_FD: fd},
            )
        except OSError as e:
            self.log.error(
                "worker {worker} could not be started: {error}", worker=worker.number, error=e
            )
            worker.started = self.reactor.seconds()
            self._scheduleRestart(worker)
            return
        restarted = worker.pid is not None
        worker.process = process
        worker.pid = process.pid
        worker.started = self.reactor.seconds()
        worker.ended = defer.Deferred()
        self._updatePids()
        if restarted:
            self.restarts.inc()
        self.log.info(
            "worker {worker} {what}, pid {pid}",
            worker=worker.number,
            what="restarted" if restarted else "started",
            pid=worker.pid,
        )

    def _updatePids(self) -> None:
        self._pids = tuple(
            (str(w.number), w.pid) for w in self.workers if w.process is not None and w.pid
        )
        self.runningGauge.set(len(self._pids))

    # Running

    def workerOutput(self, worker: _Worker, line: bytes, stderr: bool) -> None:
        """
        Log one line of a worker's output: a JSON log event on its standard
        output is re-emitted as itself; any other line is logged as text.
        """
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        if not stderr and text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except (ValueError, KeyError, TypeError):
                pass
            else:
                # Formatted here, with the fields as the worker flattened them.
                event["tcpdemo_text"] = formatEvent(event)
                event.pop("log_flattened", None)
                event["log_format"] = "worker {tcpdemo_worker}: {tcpdemo_text}"
                event["tcpdemo_worker"] = worker.number
                self.log.observer(event)
                return
        self.log.emit(
            LogLevel.warn if stderr else LogLevel.info,
            "worker {worker}: {line}",
            worker=worker.number,
            line=text,
        )

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        pid = worker.pid
        worker.process = None
        if not self.stopping:
            # No new connection may wait for the replacement.
            self.server.release(worker.number)
        self._updatePids()
        if pid is not None and self.metricsDirectory is not None:
            mark_process_dead(pid, self.metricsDirectory)
        ended, worker.ended = worker.ended, None
        if self.stopping:
            value = reason.value
            # Killed by SIGTERM: before its handler was installed, so before
            # it accepted anything; it owed nothing.
            if not (
                getattr(value, "exitCode", None) == 0
                or getattr(value, "signal", None) == signal.SIGTERM
            ):
                self._stopFailures.append(f"worker {worker.number} {describeEnd(reason)}")
            self.log.info(
                "worker {worker} (pid {pid}) {how}",
                worker=worker.number,
                pid=pid,
                how=describeEnd(reason),
            )
        else:
            lived = self.reactor.seconds() - worker.started
            if lived >= BACKOFF_RESET:
                worker.delay = INITIAL_BACKOFF
            self.log.warn(
                "worker {worker} (pid {pid}) {how} after {lived:.1f}s; "
                "starting another in {delay:g}s",
                worker=worker.number,
                pid=pid,
                how=describeEnd(reason),
                lived=lived,
                delay=worker.delay,
            )
            self._scheduleRestart(worker)
        if ended is not None:
            ended.callback(None)

    def _scheduleRestart(self, worker: _Worker) -> None:
        if self.stopping:
            return
        delay = worker.delay
        worker.delay = min(worker.delay * 2, MAX_BACKOFF)
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    # Stopping

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.stopping = True
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        # No new connections: the workers stop accepting and close theirs.
        yield self.server.stopService()
        waits = []
        for worker in self.workers:
            if worker.process is not None and worker.ended is not None:
                waits.append(worker.ended)
                try:
                    worker.process.signalProcess("TERM")
                except error.ProcessExitedAlready:
                    pass
        if waits:
            self.log.info(
                "stopping {count} workers: each delivers its owed acks within {grace}s",
                count=len(waits),
                grace=self.gracePeriod,
            )

        def tooSlow() -> None:
            for worker in self.workers:
                if worker.process is not None:
                    self.log.warn(
                        "worker {worker} (pid {pid}) still running {seconds}s after "
                        "SIGTERM: killing it",
                        worker=worker.number,
                        pid=worker.pid,
                        seconds=self.gracePeriod + KILL_MARGIN,
                    )
                    try:
                        worker.process.signalProcess("KILL")
                    except error.ProcessExitedAlready:
                        pass

        timer = self.reactor.callLater(self.gracePeriod + KILL_MARGIN, tooSlow)
        yield defer.gatherResults(waits)
        if timer.active():
            timer.cancel()
        yield MultiService.stopService(self)
        if self.metricsDirectory is not None:
            shutil.rmtree(self.metricsDirectory, ignore_errors=True)
            self.metricsDirectory = None
        if self._stopFailures:
            self.log.warn(
                "not every worker stopped cleanly ({failures}): acks may have been lost",
                failures="; ".join(self._stopFailures),
            )
        else:
            # As TcpDemoService: every worker delivered its owed acks, so
            # exit 0 rather than "killed by SIGTERM".
            clearExitSignal(self.reactor)
