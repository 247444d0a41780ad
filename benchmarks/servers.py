"""
Starting, measuring and stopping one server process, and running the client.

Every server is a separate process on loopback, on a port the kernel picks
(so that runs never collide with anything else on the machine): the
product (C{twistd -n tcpdemo}, or with C{--workers N}), a historical step
(C{twistd -n -y benchmarks/step_app.tac}) or a comparison peer
(C{benchmarks/peers}: the asyncio servers, and the Go servers of the seed
article, built with C{go build} on first use, see L{goPeerBinary}).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from benchmarks.goclient import isLoadgen
from benchmarks.goclient import version as loadgenVersion

ROOT = Path(__file__).resolve().parent.parent

#: Server kinds: the product, the historical steps, the peers.
STEP_NAMES = ("step0", "step1", "step2", "step3", "step4", "step5", "step6", "step7")
PRODUCT = "final"
PEERS = {
    "streams": "benchmarks.peers.asyncio_streams",
    "protocol": "benchmarks.peers.asyncio_protocol",
}
#: The Go servers of the seed article, reconstructed for benchmarking in
#: benchmarks/peers/go (standard library only), by kind: their C{-variant}.
#: "go-demo3" is tcp-server-demo3-with-syncpool, the article's last and
#: fastest; "go-demo2" writes each ack straight to the socket, unbuffered.
GO_PEERS: dict[str, str] = {"go-demo3": "demo3-syncpool", "go-demo2": "demo2"}
GO_SOURCE = ROOT / "benchmarks" / "peers" / "go"
#: Where L{goPeerBinary} builds them (gitignored).
GO_CACHE = ROOT / "benchmarks" / ".cache" / "go"
#: Experiments for the next step: the product with other options, by name
#: (not run by default).  None now: the last one, "final-64k"
#: (--write-buffer-limit 65536), became step6's 64 KiB reads; its figures
#: are in results/next-64k.
PRODUCT_VARIANTS: dict[str, list[str]] = {}
PROPOSALS = tuple(PRODUCT_VARIANTS)
#: The product with C{--workers N}: a parent and N worker processes (with
#: C{--workers 1}, as by default, one process and no workers).  Never
#: pinned (the workers need every CPU), so neither is its client: on a
#: 2-core machine the client competes with the workers for the cores.
WORKERS: dict[str, int] = {"workers1": 1, "workers2": 2}
#: The product with a handler other than the default C{ack} (issue 15), by
#: kind: the C{--handler} spec, where C{{store}} becomes a path fresh for each
#: start (a new database every time, deleted when the server stops).
HANDLERS: dict[str, str] = {"sqlite": "sqlite:{store}"}
#: The product with environment variables of its own: "final-pure" is the
#: product without its compiled accelerator (issue 17; TCPDEMO_NO_ACCEL),
#: to measure the accelerator against the pure-Python reference.
PRODUCT_ENVS: dict[str, dict[str, str]] = {"final-pure": {"TCPDEMO_NO_ACCEL": "1"}}
ALL_SERVERS = (
    STEP_NAMES
    + (PRODUCT,)
    + tuple(PEERS)
    + tuple(GO_PEERS)
    + PROPOSALS
    + tuple(WORKERS)
    + tuple(HANDLERS)
    + tuple(PRODUCT_ENVS)
)

_LISTENING = re.compile(
    r"(tcpdemo server|tcpdemo metrics \(/metrics\)|tcpdemo debug \(/debug/\)) "
    r"listening on tcp:[\d.]+:(\d+)"
)
_WORKER_ACCEPTING = re.compile(r"worker \d+: tcpdemo worker accepting on")
_PEER_LISTENING = re.compile(r"^listening on [\d.]+:(\d+)", re.M)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """
    A server or the client did not behave: the run cannot be measured.
    """


def twistdCommand(python: str) -> list[str]:
    """
    The C{twistd} beside C{python}, or the same run through C{python -c}.
    """
    script = Path(python).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [
        python,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    ]


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """
    C{command} pinned to one CPU with taskset, or as it is.
    """
    if cpu is None:
        return command
    return ["taskset", "-c", str(cpu)] + command


class Server:
    """
    One server process: start it, wait until it listens, read its CPU time
    and RSS, stop it.
    """

    def __init__(
        self,
        kind: str,
        python: str,
        cpu: int | None = None,
        debug: bool = False,
        logDir: Path | None = None,
        extraEnv: dict[str, str] | None = None,
    ) -> None:
        if kind not in ALL_SERVERS:
            raise ValueError(f"unknown server {kind!r}; one of {', '.join(ALL_SERVERS)}")
        self.kind = kind
        self.python = python
        self.cpu = cpu
        self.debug = debug
        #: Environment variables of the run for this server (a PyPy GC setting).
        self.extraEnv = dict(extraEnv or {})
        self.logDir = Path(logDir or tempfile.mkdtemp(prefix="tcpdemo-bench-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.metricsPort: int | None = None
        self.debugPort: int | None = None
        self._log: IO[bytes] | None = None
        #: The database of a handler's store (see L{HANDLERS}), once chosen.
        self.store: Path | None = None
        self.logPath = self.logDir / f"{kind}-{os.getpid()}-{time.monotonic_ns()}.log"

    @property
    def isTcpdemo(self) -> bool:
        return not self.isPeer

    @property
    def isPeer(self) -> bool:
        """
        A comparison peer (asyncio or Go), not tcpdemo.
        """
        return self.kind in PEERS or self.kind in GO_PEERS

    @property
    def workerProcesses(self) -> int:
        """
        How many worker processes it runs: C{--workers 1} is the one process
        of C{twistd -n tcpdemo}, with none.
        """
        count = WORKERS.get(self.kind, 1)
        return count if count > 1 else 0

    def productOptions(self) -> list[str] | None:
        """
        The options after C{twistd -n tcpdemo} if this is the product (with
        or without options), else None (a step or a peer).
        """
        if self.kind == PRODUCT or self.kind in PRODUCT_ENVS:
            return []
        if self.kind in HANDLERS:
            if self.store is None:
                self.store = self.logDir / f"{self.kind}-{os.getpid()}-{time.monotonic_ns()}.db"
            return ["--handler", HANDLERS[self.kind].format(store=self.store)]
        if self.kind in PRODUCT_VARIANTS:
            return PRODUCT_VARIANTS[self.kind]
        if self.kind in WORKERS:
            return ["--workers", str(WORKERS[self.kind])]
        return None

    def serverOptions(self) -> list[str]:
        """
        The listening options of the product and of the steps.
        """
        listen = f"tcp:0:interface={LOOPBACK}"
        options = ["--port", listen, "--metrics", listen]
        if self.debug:
            options += ["--debug", listen]
        return options

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        if self.kind in GO_PEERS:
            return [
                str(goPeerBinary()),
                "-host",
                LOOPBACK,
                "-port",
                "0",
                "-variant",
                GO_PEERS[self.kind],
            ]
        if self.kind in PEERS:
            return [self.python, "-u", "-m", PEERS[self.kind], "--host", LOOPBACK, "--port", "0"]
        twistd = twistdCommand(self.python) + ["-n", "--pidfile="]
        extra = self.productOptions()
        if extra is not None:
            return twistd + ["tcpdemo"] + self.serverOptions() + extra
        return twistd + ["-y", str(ROOT / "benchmarks" / "step_app.tac")]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extraEnv)
        env.update(PRODUCT_ENVS.get(self.kind, {}))
        if self.kind in PEERS:
            env["PYTHONPATH"] = str(ROOT)
        elif self.kind in GO_PEERS:
            pass  # a static binary: nothing of Python's
        elif self.productOptions() is None:
            env["TCPDEMO_STEP"] = self.kind
            # The steps predate the compiled fast path (tcpdemo._scan): steps
            # 6 and 7 inherit the product's dataReceived, so they would
            # otherwise run it on CPython.
            env["TCPDEMO_NO_ACCEL"] = "1"
            env["TCPDEMO_STEP_ARGS"] = shlex.join(self.serverOptions())
        return env

    def start(self, timeout: float = 60.0) -> Server:
        """
        Start the process and wait until it listens.
        """
        self.launch()
        return self.waitListening(timeout)

    def launch(self) -> None:
        """
        Start the process (several servers can start at once).
        """
        command = self.command()
        self._log = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            pinned(command, self.cpu),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            cwd=str(self.logDir),
        )

    def waitListening(self, timeout: float = 60.0) -> Server:
        """
        Wait until the server listens on every port it was asked for.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.kind} server exited at start:\n{self.logTail()}")
            if self._parseLog():
                return self
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.kind} server did not listen within {timeout}s:\n{self.logTail()}")

    def _parseLog(self) -> bool:
        text = self.logPath.read_text(errors="replace")
        if self.isPeer:
            match = _PEER_LISTENING.search(text)
            if match:
                self.port = int(match.group(1))
            return self.port is not None
        for what, port in _LISTENING.findall(text):
            if what == "tcpdemo server":
                self.port = int(port)
            elif what.startswith("tcpdemo metrics"):
                self.metricsPort = int(port)
            else:
                self.debugPort = int(port)
        return (
            self.port is not None
            and self.metricsPort is not None
            and (self.debugPort is not None or not self.debug)
            # Every worker accepts: none of the connections waits for one.
            and len(_WORKER_ACCEPTING.findall(text)) >= self.workerProcesses
        )

    def logTail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logPath.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # Measuring

    def metrics(self) -> dict[str, float]:
        """
        The server's own /metrics, as name -> value (unlabelled samples only).
        """
        url = f"http://{LOOPBACK}:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if "{" not in name:
                    values[name] = float(value)
        return values

    def cpuSeconds(self) -> float:
        """
        The server's CPU seconds so far: its own process_cpu_seconds_total
        from /metrics for tcpdemo, /proc/PID/stat for the peers.
        """
        if self.isTcpdemo:
            return self.metrics()["process_cpu_seconds_total"]
        return procCpuSeconds(self.pid)

    def processes(self) -> list[int]:
        """
        The server's process and, with C{--workers}, its workers.
        """
        return procTree(self.pid)

    def runDelaySeconds(self) -> float:
        return sum(procRunDelaySeconds(pid) for pid in self.processes())

    def rssBytes(self) -> int:
        return sum(procRssBytes(pid) for pid in self.processes())

    def openFiles(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.processes())

    def profile(self, seconds: float) -> str:
        """
        The text table of C{/debug/profile} over the next C{seconds}.
        """
        url = f"http://{LOOPBACK}:{self.debugPort}/debug/profile?seconds={seconds:g}&format=text"
        with urllib.request.urlopen(url, timeout=seconds + 60) as response:
            return str(response.read().decode())

    # Stopping

    def stop(self, timeout: float = 30.0) -> int | None:
        """
        SIGTERM, then SIGKILL after C{timeout}; returns the exit status.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.store is not None:
            # The handler's store and its journal files (sqlite's -wal, -shm).
            for path in self.store.parent.glob(self.store.name + "*"):
                path.unlink()
        return process.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def procTree(pid: int) -> list[int]:
    """
    C{pid} and its descendants, from the parent pids in /proc.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def procCpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); 3 is the first here.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def procRunDelaySeconds(pid: int) -> float:
    """
    Seconds the process's threads spent runnable but waiting for a CPU (the
    second field of /proc/PID/task/TID/schedstat, summed over its threads:
    a Go server runs its goroutines on several; 0 if unknown).
    """
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


def goPeerBinary(go: str | None = None) -> Path:
    """
    The Go peers' server (benchmarks/peers/go), built with C{go build} into
    L{GO_CACHE} the first time it is wanted for this version of its sources
    and of Go.  Standard library only: nothing is downloaded (C{GOPROXY=off}).
    Raises L{BenchError} if there is no C{go} or the build fails.
    """
    exe = go or shutil.which("go")
    if exe is None:
        raise BenchError(
            "go not found: the Go peers (" + ", ".join(GO_PEERS) + ") need a Go toolchain "
            "(Debian: apt-get install golang-go); scripts/test installs it"
        )
    version = subprocess.run(
        [exe, "version"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    digest = hashlib.sha256(version.encode())
    for path in sorted(GO_SOURCE.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name == "go.mod"):
            digest.update(str(path.relative_to(GO_SOURCE)).encode() + b"\0" + path.read_bytes())
    binary = GO_CACHE / f"server-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    GO_CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "GOPROXY": "off",
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "",
            "CGO_ENABLED": "0",
            "GOCACHE": str(GO_CACHE / "build-cache"),
            "GOPATH": str(GO_CACHE / "gopath"),
        }
    )
    # Built aside and renamed: two runs building at once both get a whole file.
    partial = GO_CACHE / f".server-{os.getpid()}-{time.monotonic_ns()}"
    result = subprocess.run(
        [exe, "build", "-o", str(partial), "."],
        cwd=str(GO_SOURCE),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise BenchError(f"go build of {GO_SOURCE} failed:\n{result.stdout}{result.stderr}")
    os.replace(partial, binary)
    for old in GO_CACHE.glob("server-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary


def procRssBytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def clientCommand(
    python: str,
    port: int,
    connections: int,
    duration: float,
    payloadSize: int | None,
    window: int | None = None,
    rate: float | None = None,
    warmup: float = 0.0,
) -> list[str]:
    # The Go generator (bench --client go) takes the same options.
    command = [python] if isLoadgen(python) else [python, "-m", "tcpdemo.client"]
    command += [
        "--port",
        f"tcp:{LOOPBACK}:{port}",
        "--connections",
        str(connections),
        "--duration",
        f"{duration:g}",
        "--connect-timeout",
        "60",
        "--drain-timeout",
        "30",
        "--json",
        "--quiet",
    ]
    if payloadSize is not None:
        command += ["--payload-size", str(payloadSize)]
    if warmup:
        command += ["--warmup", f"{warmup:g}"]
    if rate is not None:
        command += ["--rate", f"{rate:g}"]
    else:
        command += ["--window", str(window or 0)]
    return command


class Client:
    """
    One run of C{tcpdemo-client} (or the Go generator), in the background; C{result()} waits for
    its JSON report.
    """

    def __init__(self, command: list[str], cpu: int | None, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            pinned(command, cpu),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(ROOT),
        )

    def result(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise BenchError(f"client did not finish within {self.timeout}s") from None
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace")
        self._stderr.close()
        try:
            report: dict[str, Any] = json.loads(out)
        except ValueError:
            raise BenchError(
                f"client exited {self.process.returncode} without a report:\n"
                f"{out.decode(errors='replace')[-2000:]}\n{err[-2000:]}"
            ) from None
        report["exit_status"] = self.process.returncode
        report["stderr"] = err[-2000:]
        return report


def interpreterVersion(python: str) -> str:
    if isLoadgen(python):
        return loadgenVersion(python)
    return subprocess.run(
        [
            python,
            "-c",
            "import platform, sys; "
            "print(platform.python_implementation(), platform.python_version(), "
            "sys.version.split('[')[-1].rstrip(']') if 'PyPy' in sys.version else '')",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def isPyPy(python: str) -> bool:
    return interpreterVersion(python).startswith("PyPy")


def currentPython() -> str:
    return sys.executable
