"""
Helpers shared by the tests: free loopback ports, a real C{twistd -n tcpdemo}
subprocess, and a blocking socket client that speaks the wire format.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import unittest
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"


def freePort() -> int:
    """
    A TCP port on loopback that was free a moment ago: for a port that
    nothing must listen on, or for programs that cannot listen on port 0 and
    say which port they got (haproxy, Prometheus).  Our own servers listen on
    port 0 and the tests read the port back (L{TwistdServer.listeningPort}),
    which cannot race with another process taking the port meanwhile.
    """
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# The wire, built byte by byte from docs/protocol.md (not from tcpdemo.packet,
# so that a bug there cannot hide in the expectations).  Every test builds its
# frames here.

#: Submit ids are C{%08d} of the Submit's number, wrapping at 10**8.
ID_MODULUS = 10**8
ACK_SIZE = 14
_LENGTH = struct.Struct("!i")


def submitId(number: int) -> bytes:
    """
    The reference's id for Submit number C{number}: C{%08d}, wrapping.
    """
    return b"%08d" % (number % ID_MODULUS)


def _ident(which: int | bytes) -> bytes:
    return submitId(which) if isinstance(which, int) else bytes(which)


def submitFrame(which: int | bytes, payload: bytes = b"") -> bytes:
    """
    A framed Submit: C{which} is a number (id L{submitId}) or the id itself.
    """
    return _LENGTH.pack(len(payload) + 13) + b"\x02" + _ident(which) + payload


def ackFrame(which: int | bytes, result: int = 0) -> bytes:
    """
    The framed SubmitAck the server owes for L{submitFrame}C{(which)}.
    """
    return _LENGTH.pack(ACK_SIZE) + b"\x81" + _ident(which) + bytes((result,))


def submitFrames(numbers: Iterable[int], payload: bytes = b"") -> bytes:
    """
    L{submitFrame} for each number, back to back (quickly: tests use 10**5).
    """
    head = _LENGTH.pack(len(payload) + 13) + b"\x02"
    return b"".join([head + submitId(i) + payload for i in numbers])


def ackFrames(numbers: Iterable[int], result: int = 0) -> bytes:
    """
    L{ackFrame} for each number, back to back (quickly: tests use 10**5).
    """
    head = _LENGTH.pack(ACK_SIZE) + b"\x81"
    tail = bytes((result,))
    return b"".join([head + submitId(i) + tail for i in numbers])


def connAckFrame(result: int) -> bytes:
    """
    A framed ConnAck with C{result}.
    """
    return b"\x00\x00\x00\x06\x80" + bytes((result,))


def rawFrame(command: int, body: bytes) -> bytes:
    """
    A frame with a correct length field: C{command} byte, then C{body}.
    """
    return _LENGTH.pack(len(body) + 5) + bytes((command,)) + body


def lengthField(value: int) -> bytes:
    """
    A length field alone, any value (negative or short ones included).
    """
    return _LENGTH.pack(value)


def subprocessEnv(extraPath: Sequence[str] = ()) -> dict[str, str]:
    """
    The environment for child processes: this checkout first on the path, so
    that they run the code under test and find its twistd plugin; then
    C{extraPath} (test plugins, say).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT, *extraPath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def twistdCommand() -> list[str]:
    """
    The real twistd of this interpreter.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class TwistdServer:
    """
    C{twistd -n tcpdemo} in a subprocess, on free loopback ports.
    """

    def __init__(
        self,
        workdir: str,
        extraArgs: Sequence[str] = (),
        metrics: bool = True,
        twistdScript: str | None = None,
        extraPath: Sequence[str] = (),
        extraEnv: Mapping[str, str] | None = None,
    ):
        """
        C{twistdScript}: a Python file to run instead of twistd, which
        patches something and then runs twistd (as in tests/test_fence.py).
        C{extraPath}: more directories for the child's C{PYTHONPATH} (test
        plugins, say).  C{extraEnv}: more environment variables for it
        (PyPy's C{PYPY_GC_*} settings, say).
        """
        #: Both listen on port 0; the ports chosen are read back from the log.
        self.port = 0
        self.metricsPort: int | None = None
        self.logPath = os.path.join(workdir, "twistd.log")
        command = [sys.executable, twistdScript] if twistdScript else twistdCommand()
        args = command + [
            "-n",
            "--pidfile=",
            "--logfile",
            self.logPath,
            "tcpdemo",
            "--port",
            f"tcp:0:interface={LOOPBACK}",
            "--metrics",
            f"tcp:0:interface={LOOPBACK}" if metrics else "none",
            *extraArgs,
        ]
        self.process = subprocess.Popen(
            args,
            cwd=workdir,
            env={**subprocessEnv(extraPath), **(extraEnv or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.port = self.listeningPort(r"tcpdemo server listening on")
        if metrics:
            # Listened just after the server: a scrape may not come earlier.
            self.metricsPort = self.listeningPort(r"tcpdemo metrics \(/metrics\) listening on")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def ended(self) -> bool:
        return self.process.poll() is not None

    def waitForLog(self, pattern: str, timeout: float = 20.0) -> str:
        """
        Wait (L{waitFor}) until the log matches C{pattern}; return the log.
        """
        try:
            waitFor(
                lambda: re.search(pattern, self.log()), timeout, what=pattern, unless=self.ended
            )
        except AssertionError:
            pass
        else:
            return self.log()
        stderr = self.stopAndReadStderr()
        raise AssertionError(
            f"twistd never logged {pattern!r}; log:\n{self.log()}\nstderr:\n{stderr}"
        )

    def listeningPort(self, what: str) -> int:
        """
        Wait for the log line C{what} (a pattern), C{... listening on
        tcp:HOST:PORT}; return the port, which the kernel chose.
        """
        pattern = what + r" tcp:[^:\s]+:(\d+)"
        match = re.search(pattern, self.waitForLog(pattern))
        assert match is not None
        return int(match.group(1))

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def scrape(self) -> dict[str, float]:
        """
        Every sample of /metrics, parsed by prometheus_client's own parser,
        keyed by name and labels (C{name{label="value"}}).
        """
        assert self.metricsPort is not None
        url = f"http://{LOOPBACK}:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}" if labels else sample.name
                samples[key] = sample.value
        return samples

    def rssBytes(self) -> int:
        return rssOf(self.pid)

    def terminate(self, timeout: float = 30.0) -> int:
        """
        SIGTERM, as twistd's normal stop; return the exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stopAndReadStderr(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        _, stderr = self.process.communicate(timeout=10)
        return stderr.decode(errors="replace") if stderr else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def rssOf(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes (from C{/proc}).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fdTargets(pid: int) -> list[str]:
    """
    What each open descriptor of process C{pid} points to (C{/proc/PID/fd}:
    a path, C{socket:[INODE]}, C{pipe:[INODE]}...), but those closed meanwhile.
    """
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def recvExactly(sock: socket.socket, size: int) -> bytes:
    """
    Read exactly C{size} bytes, or fail on EOF.
    """
    chunks = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF with {remaining} of {size} bytes still to read")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recvUntilClosed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """
    Read until the peer closes (or resets) the connection.
    """
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def waitFor(
    condition: Callable[..., object],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
    unless: Callable[[], bool] | None = None,
) -> None:
    """
    Poll C{condition} (blocking) until it holds; fail after C{timeout}
    seconds, or as soon as C{unless} holds (the process that would make
    C{condition} true has ended, say).  The one blocking poll of the tests.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if unless is not None and unless():
            raise AssertionError(f"gave up waiting for {what or condition}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def sleep(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires after C{seconds} on the global reactor.
    """
    from twisted.internet import reactor

    return deferLater(reactor, seconds, lambda: None)


async def waitUntil(condition: Callable[[], bool], what: str = "", timeout: float = 10.0) -> None:
    """
    L{waitFor} for tests that run on the reactor: poll C{condition} without
    blocking it, and fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await sleep(0.01)


class Collector(Protocol):
    """
    A client of an in-process server that keeps every byte it receives.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    @property
    def data(self) -> bytes:
        return bytes(self.received)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(self.data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def connectTo(service: Any) -> Collector:
    """
    A L{Collector} connected to the server of C{service}, an in-process
    C{tcpdemo.tap.TcpDemoService} listening on loopback.
    """
    from twisted.internet import reactor

    port = service.server.port.getHost().port
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port)
    client = await endpoint.connect(Factory.forProtocol(Collector))
    assert isinstance(client, Collector)
    return client


def waitUntilSteady(read: Callable[[], object], pause: float, what: str) -> None:
    """
    Wait (as L{waitFor}) until two calls of C{read}, C{pause} seconds apart,
    give equal values: e.g. a byte counter once the server stops reading.
    """

    def steady() -> bool:
        before = read()
        time.sleep(pause)
        return read() == before

    waitFor(steady, what=what)


def pushUntilBlocked(sock: socket.socket, frames: bytes, seconds: float = 1.0) -> int:
    """
    Write C{frames} over and over without reading, until the peer has taken
    nothing for C{seconds}; return how many bytes were sent.  After the last
    frame, the writes go on from the first one again.
    """
    sock.setblocking(False)
    sent = 0
    view = memoryview(frames)
    offset = 0
    lastProgress = time.monotonic()
    while time.monotonic() - lastProgress < seconds:
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        offset = (offset + n) % len(frames)
        lastProgress = time.monotonic()
    sock.setblocking(True)
    return sent


def metric(samples: dict[str, float], name: str, default: float | None = None) -> float:
    if name in samples:
        return samples[name]
    if default is not None:
        return default
    raise AssertionError(f"{name} not in /metrics: {sorted(samples)}")


# --workers and scale-out helpers (tests/test_workers.py, tests/test_haproxy.py)


def workerPids(log: str) -> dict[int, int]:
    """
    The latest pid of each worker, from the parent's log lines
    C{worker N started, pid P} and C{worker N restarted, pid P}.
    """
    pids: dict[int, int] = {}
    for match in re.finditer(r"worker (\d+) (?:started|restarted), pid (\d+)", log):
        pids[int(match.group(1))] = int(match.group(2))
    return pids


def waitForWorkers(server: TwistdServer, count: int, timeout: float = 60.0) -> dict[int, int]:
    """
    Wait until C{count} workers of C{server} have logged that they accept;
    return their pids.
    """

    def ready() -> bool:
        accepting = re.findall(r"worker (\d+): tcpdemo worker accepting on", server.log())
        return len(set(accepting)) >= count

    try:
        waitFor(ready, timeout, what=f"{count} workers", unless=server.ended)
    except AssertionError:
        raise AssertionError(f"{count} workers never accepted; log:\n{server.log()}") from None
    return workerPids(server.log())


def perWorker(samples: dict[str, float], name: str) -> dict[int, float]:
    """
    The C{tcpdemo_worker_*} samples of C{name} by worker number, e.g.
    C{perWorker(samples, "tcpdemo_worker_req_recv_total")}.
    """
    values: dict[int, float] = {}
    for key, value in samples.items():
        match = re.fullmatch(re.escape(name) + r'\{worker="(\d+)"\}', key)
        if match:
            values[int(match.group(1))] = value
    return values


def runLoadClient(port: int, *args: str, timeout: float = 120.0) -> tuple[int, dict[str, object]]:
    """
    Run the load client (C{python -m tcpdemo.client}) against loopback
    C{port} with C{--json}; return its exit status and its JSON report.
    """
    command = [
        sys.executable,
        "-m",
        "tcpdemo.client",
        "--port",
        f"tcp:{LOOPBACK}:{port}",
        "--json",
        "--quiet",
        *args,
    ]
    return runForReport(command, timeout, env=subprocessEnv())


def runForReport(
    command: list[str], timeout: float, env: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """
    Run a load generator that prints one JSON report (tcpdemo-client or the
    Go generator, with C{--json}); return its exit status and the report.
    """
    import json

    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout.decode())
    except ValueError as e:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode} without a JSON report:\n"
            f"stdout:\n{result.stdout.decode(errors='replace')}\n"
            f"stderr:\n{result.stderr.decode(errors='replace')}"
        ) from e
    return result.returncode, report


# External binaries: installed by scripts/test from Debian packages; a
# missing one fails the test that needs it, never skips it.


def requireBinary(name: str, package: str | None = None) -> str:
    """
    The path of the program C{name} (on C{PATH}, or in C{/usr/sbin} or
    C{/usr/bin}, which a user's C{PATH} may lack); if it is missing, fail
    the test, saying which Debian C{package} ships it (C{name} by default).
    """
    from twisted.trial.unittest import FailTest

    path = shutil.which(name)
    for directory in ("/usr/sbin", "/usr/bin"):
        candidate = os.path.join(directory, name)
        if path is None and os.access(candidate, os.X_OK):
            path = candidate
    if path is None:
        package = package or name
        raise FailTest(
            f"{name} is not installed: install Debian's {package} package "
            f"(apt-get install {package}), as scripts/test does"
        )
    return path


def startHaproxy(
    testCase: unittest.TestCase, directory: str, config: str
) -> tuple[subprocess.Popen[bytes], str]:
    """
    Run C{haproxy -db} (in the foreground) on C{config}, written to
    C{directory}/haproxy.cfg, its output in C{directory}/haproxy.log; it is
    killed when C{testCase} ends.  Returns the process and the log's path.
    """
    path = os.path.join(directory, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(config)
    logPath = os.path.join(directory, "haproxy.log")
    with open(logPath, "wb") as log:
        process = subprocess.Popen(
            [requireBinary("haproxy"), "-f", path, "-db"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait(10)

    testCase.addCleanup(stop)
    return process, logPath
