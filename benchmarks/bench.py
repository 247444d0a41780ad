"""
The tcpdemo benchmark harness.

  python -m benchmarks.bench                   # everything: minutes
  python -m benchmarks.bench --smoke           # seconds: correctness only
  python -m benchmarks.bench --profile         # profiles of every step under P

Each server is a separate process (C{twistd -n tcpdemo}, a historical step
through C{benchmarks/step_app.tac}, or a comparison peer: the asyncio peers,
or the seed article's Go servers, go-demo3 and go-demo2, built from
benchmarks/peers/go with C{go build} and pinned like the rest), driven by
C{tcpdemo-client} running under PyPy so that the client is not the
bottleneck (or, with C{--client go}, by the Go generator of
benchmarks/loadgen, whose sender does not pause: for latency tails).  The
server's CPU seconds are read before and after each run
(C{process_cpu_seconds_total} from its /metrics; /proc for the peers), its
RSS from /proc.  With two or more CPUs the server is pinned to CPU 0 and the
client to CPU 1 (C{--no-pin} to turn that off); the C{--workers N} servers
(workers1, workers2; not in the default set) and their clients are never
pinned, and their CPU and RSS are those of the parent and its workers.

Scenarios (fixed, named):
  - P pipelined: 50 connections x 1000 Submits in flight, 20-byte payloads;
  - R request/response: 100 connections x 1 in flight;
  - O open loop: 100 000 Submits/s over 100 connections;
  - C 10 000 mostly idle connections with a light load (1000 Submits/s):
    server RSS per connection, from a fresh server;
  - V (an extra): as P, with the reference client's payloads of 15-30 bytes;
  - OV and OV20: open loop over 50 connections with those payloads, at
    100 000 and 20 000 Submits/s; the client counts each Submit's latency
    from its scheduled send time.

Where things go: the raw data of a run (results.json, the servers' logs,
profiles) into the run directory, benchmarks/runs/ (C{--run-dir}; not kept
in git); what the docs show, summary.md and chart.svg, into benchmarks/results/
(C{--out}; kept in git).  C{--merge} keeps the runs of the earlier
results.json in the run directory that were not measured again;
C{--update-doc} rewrites the generated part of BENCHMARKS.md.  From the raw
data alone, C{python -m benchmarks.report} writes the summary, the chart and
that part again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import goclient, report, vectors
from benchmarks.servers import (
    ALL_SERVERS,
    GO_PEERS,
    HANDLERS,
    PEERS,
    PRODUCT,
    PRODUCT_ENVS,
    PROPOSALS,
    ROOT,
    STEP_NAMES,
    WORKERS,
    BenchError,
    Client,
    Server,
    clientCommand,
    interpreterVersion,
)
from tcpdemo.limits import raiseFileLimit

#: What the docs show (summary.md, chart.svg): kept in git.
RESULTS = ROOT / "benchmarks" / "results"
#: The raw data of runs (results.json, logs/, profiles/): generated, not kept.
RUNS = ROOT / "benchmarks" / "runs"
#: The document whose generated section --update-doc rewrites.
DOC = ROOT / "BENCHMARKS.md"
VENV = ROOT / "benchmarks" / ".venv"

PAYLOAD_SIZE = 20


class Scenario:
    def __init__(
        self,
        name: str,
        title: str,
        connections: int,
        window: int | None = None,
        rate: float | None = None,
        fresh: bool = False,
        payloadSize: int | None = PAYLOAD_SIZE,
    ) -> None:
        self.name = name
        #: None: the client's reference-like random codenames of 15-30 bytes.
        self.payloadSize = payloadSize
        self.title = title
        self.connections = connections
        self.window = window
        self.rate = rate
        #: Needs a server of its own (RSS per connection).
        self.fresh = fresh

    def scaled(
        self, connections: int, rate: float | None = None, window: int | None = None
    ) -> Scenario:
        return Scenario(
            self.name,
            self.title,
            connections,
            window=self.window if window is None else window,
            rate=self.rate if rate is None or self.rate is None else rate,
            fresh=self.fresh,
            payloadSize=self.payloadSize,
        )


SCENARIOS: dict[str, Scenario] = {
    "P": Scenario("P", "pipelined: 50 connections x 1000 in flight", 50, window=1000),
    "R": Scenario("R", "request/response: 100 connections x 1 in flight", 100, window=1),
    "O": Scenario("O", "open loop: 100 000 submits/s over 100 connections", 100, rate=100_000),
    "C": Scenario(
        "C", "10 000 mostly idle connections, 1000 submits/s", 10_000, rate=1000, fresh=True
    ),
    # Not one of the four: P with payloads of varied sizes, as the
    # reference client sends, which the product's bulk scan handles frame
    # by frame rather than with strided slices.
    "V": Scenario(
        "V",
        "as P, payloads of 15-30 bytes (the reference client's codenames)",
        50,
        window=1000,
        payloadSize=None,
    ),
    # Issue 17's open loop: 50 connections on a fixed schedule, payloads of
    # varied sizes, latency counted from each Submit's scheduled send time
    # (no coordinated omission), at a heavy and at a moderate rate.
    "OV": Scenario(
        "OV",
        "open loop: 100 000 submits/s over 50 connections, payloads of 15-30 bytes",
        50,
        rate=100_000,
        payloadSize=None,
    ),
    "OV20": Scenario(
        "OV20",
        "open loop: 20 000 submits/s over 50 connections, payloads of 15-30 bytes",
        50,
        rate=20_000,
        payloadSize=None,
    ),
}

#: The CI-sized versions: seconds in all.
SMOKE: dict[str, Scenario] = {
    "P": SCENARIOS["P"].scaled(5, window=100),
    "R": SCENARIOS["R"].scaled(5),
    "O": SCENARIOS["O"].scaled(10, rate=1000),
    "C": SCENARIOS["C"].scaled(200, rate=100),
    "V": SCENARIOS["V"].scaled(5, window=100),
    "OV": SCENARIOS["OV"].scaled(5, rate=1000),
    "OV20": SCENARIOS["OV20"].scaled(5, rate=500),
}

#: The scenarios the steps run when --scenarios is not given.
STEP_SCENARIOS = ("P", "R")
#: The same for other kinds: the handlers' issue compares ack and sqlite
#: under P, V and R; the accelerator matters where frames vary in size.
KIND_SCENARIOS: dict[str, tuple[str, ...]] = {
    **{name: STEP_SCENARIOS for name in STEP_NAMES},
    **{name: ("P", "V", "R") for name in HANDLERS},
    "final-pure": ("P", "V", "OV"),
    # The seed article's Go servers (issue 17's comparisons): demo3 with
    # sync.Pool for the acks/s of V, demo2 for the p99 of the open loop.
    "go-demo3": ("P", "V", "R", "OV", "OV20"),
    "go-demo2": ("V", "OV20"),
}


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# The interpreters


def pypyVenv(pypy: str) -> str:
    """
    The PyPy virtualenv with tcpdemo installed (editable) and its python;
    created on first use under benchmarks/.venv, refreshed when setup.cfg
    changes (its install_requires caps what PyPy 3.9 needs capped).
    """
    venv = VENV / "pypy39"
    python = venv / "bin" / "python"
    stamp = hashlib.sha256(((ROOT / "setup.cfg").read_text() + pypy).encode()).hexdigest()
    marker = venv / "tcpdemo-bench.stamp"
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return str(python)
    exe = shutil.which(pypy)
    if exe is None:
        raise BenchError(
            f"{pypy} not found: install PyPy 3 (Debian: apt-get install pypy3 pypy3-venv) "
            "or pass --runtimes cpython"
        )
    log(f"creating the PyPy environment in {venv} (once)")
    if not python.exists():
        subprocess.run([exe, "-m", "venv", str(venv)], check=True)
    # "compat" editable mode: a .pth entry for the checkout, so that Twisted's
    # plugin discovery finds twisted/plugins/tcpdemo_plugin.py there (the
    # default import-hook mode hides it, and `twistd tcpdemo` is unknown).
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--config-settings",
            "editable_mode=compat",
            "-e",
            str(ROOT),
        ],
        check=True,
    )
    subprocess.run(
        [str(venv / "bin" / "twistd"), "tcpdemo", "--help"], check=True, stdout=subprocess.DEVNULL
    )
    marker.write_text(stamp)
    return str(python)


# Measuring one run


def runScenario(
    server: Server,
    scenario: Scenario,
    clientPython: str,
    duration: float,
    clientCpu: int | None,
    onConnected: Callable[[], dict[str, Any]] | None = None,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """
    Drive C{server} with one client run; return the figures of the run.

    With C{warmup}, the client first sends the scenario's own load for that
    long in the same process, unmeasured (C{tcpdemo-client --warmup}): a
    PyPy client would otherwise compile its loops while it measures, and
    its pauses would count as the server's latency.  The server's CPU and
    the acks it is divided by both cover the warm-up too.
    """
    assert server.port is not None
    cpuBefore = server.cpuSeconds()
    waitBefore = server.runDelaySeconds()
    rssBefore = server.rssBytes()
    loadBefore = os.getloadavg()[0]
    command = clientCommand(
        clientPython,
        server.port,
        scenario.connections,
        duration,
        scenario.payloadSize,
        window=scenario.window,
        rate=scenario.rate,
        warmup=warmup,
    )
    client = Client(command, clientCpu, timeout=warmup + duration + 180)
    extra: dict[str, Any] = {}
    if onConnected is not None:
        extra = onConnected()
    result = client.result()
    cpuAfter = server.cpuSeconds()
    waitAfter = server.runDelaySeconds()
    rssAfter = server.rssBytes()
    figures = clientFigures(scenario, result)
    acked = figures["acked"]
    cpu = cpuAfter - cpuBefore
    # The server's CPU spans the client's warm-up and its measured window.
    seconds = result["duration_s"] + warmup if result["duration_s"] else 0.0
    figures.update(
        {
            "server_cpu_s": round(cpu, 3),
            "server_cpu_us_per_ack": round(cpu * 1e6 / acked, 4) if acked else None,
            "server_cpu_percent": round(100 * cpu / seconds, 1) if seconds else None,
            # Time the server was runnable but had no CPU: the shared machine's share.
            "server_cpu_wait_percent": round(100 * (waitAfter - waitBefore) / seconds, 1)
            if seconds
            else None,
            "rss_before_mib": round(rssBefore / 2**20, 2),
            "rss_after_mib": round(rssAfter / 2**20, 2),
            "loadavg_1m_before": round(loadBefore, 2),
        }
    )
    figures.update(extra)
    return figures


def clientFigures(scenario: Scenario, result: dict[str, Any]) -> dict[str, Any]:
    """
    The figures of one run that the client's JSON report gives.
    """
    acked = int(result["acked"])
    latency = result["latency_us"]
    return {
        "scenario": scenario.name,
        "connections": scenario.connections,
        "window": scenario.window,
        "rate": scenario.rate,
        "duration_s": result["duration_s"],
        "sent": result["sent"],
        "acked": acked,
        "errors": result["errors"]["total"],
        "error_messages": result["errors"]["messages"][:5],
        "client_exit_status": result["exit_status"],
        "acks_per_s": result["throughput_acks_per_s"],
        "send_rate_per_s": result["send_rate_per_s"],
        "max_tick_gap_ms": result["max_tick_gap_ms"],
        # Only the Go generator's: how late its sender wrote a Submit.
        "max_send_lag_ms": result.get("max_send_lag_ms"),
        "client_cpu_percent": result["cpu_percent_of_one_core"],
        "p50_ms": latency["p50"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p99.9_ms": latency["p99.9"] / 1000,
        "max_ms": latency["max"] / 1000,
        "server_cpu_us_per_ack": None,
        "server_cpu_percent": None,
    }


def idleConnections(
    server: Server, scenario: Scenario, timeout: float = 120.0
) -> Callable[[], dict[str, Any]]:
    """
    For scenario C: once the client's connections are all open on the
    server, read its RSS; returns the figures for L{runScenario}.
    """
    baseline = server.rssBytes()
    baseFiles = server.openFiles()

    def measure() -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while server.openFiles() - baseFiles < scenario.connections:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {server.openFiles() - baseFiles} of {scenario.connections} "
                    f"connections opened within {timeout}s"
                )
            time.sleep(0.1)
        time.sleep(0.5)
        withConnections = server.rssBytes()
        perConnection = (withConnections - baseline) / scenario.connections
        return {
            "rss_idle_mib": round(baseline / 2**20, 2),
            "rss_connected_mib": round(withConnections / 2**20, 2),
            "rss_per_connection_kib": round(perConnection / 1024, 3),
        }

    return measure


def warmUp(
    server: Server,
    clientPython: str,
    seconds: float,
    clientCpu: int | None,
    connections: int = 50,
    window: int = 1000,
) -> None:
    """
    Load the server for a while first: PyPy's JIT compiles the hot loops,
    and both runtimes grow their buffers and free lists.
    """
    if seconds <= 0:
        return
    assert server.port is not None
    result = Client(
        clientCommand(clientPython, server.port, connections, seconds, PAYLOAD_SIZE, window=window),
        clientCpu,
        timeout=seconds + 120,
    ).result()
    if result["errors"]["total"]:
        raise BenchError(f"{server.kind}: errors while warming up: {result['errors']}")


def warmUpAs(
    server: Server, scenario: Scenario, clientPython: str, seconds: float, clientCpu: int | None
) -> None:
    """
    Run C{scenario}'s own load for a while first, unmeasured.
    """
    if seconds <= 0:
        return
    assert server.port is not None
    result = Client(
        clientCommand(
            clientPython,
            server.port,
            scenario.connections,
            seconds,
            scenario.payloadSize,
            window=scenario.window,
            rate=scenario.rate,
        ),
        clientCpu,
        timeout=seconds + 120,
    ).result()
    if result["errors"]["total"]:
        raise BenchError(
            f"{server.kind}: errors while warming up {scenario.name}: {result['errors']}"
        )


# A full run


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.runs: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.passed = 0
        self.productAtStart = ""
        cpus = os.cpu_count() or 1
        pin = options.pin and cpus >= 2 and shutil.which("taskset") is not None
        self.serverCpu: int | None = 0 if pin else None
        self.clientCpu: int | None = 1 if pin else None
        # Absolute: servers run in other directories, and a handler's store
        # (--handler sqlite:PATH) lives here.
        self.logDir = Path(
            options.log_dir
            or (
                Path(options.run_dir or RUNS) / "logs"
                if not options.smoke
                else Path(os.environ.get("TMPDIR", "/tmp"))
            )
        ).resolve()
        self.logDir.mkdir(parents=True, exist_ok=True)

    def serverEnv(self, runtime: str) -> dict[str, str]:
        """
        Environment variables for the servers of C{runtime}: every PyPy
        server alike gets C{--pypy-gc-nursery}, if given.
        """
        nursery = self.options.pypy_gc_nursery
        return {"PYPY_GC_NURSERY": nursery} if runtime == "pypy" and nursery else {}

    def interpreters(self) -> dict[str, str]:
        """
        Runtime name -> python of the servers.
        """
        found: dict[str, str] = {}
        for runtime in self.options.runtimes:
            if runtime == "cpython":
                found["cpython"] = self.options.cpython or sys.executable
            elif runtime == "pypy":
                found["pypy"] = pypyVenv(self.options.pypy)
            elif runtime == "current":
                found[platform.python_implementation().lower()] = sys.executable
            else:
                raise BenchError(f"unknown runtime {runtime!r}")
        return found

    def clientPython(self, interpreters: dict[str, str]) -> str:
        choice = self.options.client
        if choice == "pypy":
            return interpreters.get("pypy") or pypyVenv(self.options.pypy)
        if choice == "current":
            return sys.executable
        if choice == "go":
            try:
                return goclient.build()
            except (goclient.GoMissing, subprocess.CalledProcessError) as e:
                raise BenchError(f"cannot build the Go load generator: {e}") from None
        return str(choice)

    def record(self, runtime: str, server: str, round_: int, figures: dict[str, Any]) -> None:
        figures = {"runtime": runtime, "server": server, "round": round_, **figures}
        self.runs.append(figures)
        problem = ""
        if figures["errors"] or figures["client_exit_status"] != 0 or not figures["acked"]:
            problem = (
                f" FAILED: {figures['errors']} client errors, exit "
                f"{figures['client_exit_status']}: {figures['error_messages']}"
            )
            self.failures.append(f"{runtime} {server} {figures['scenario']}: {problem}")
        extra = ""
        if "rss_per_connection_kib" in figures:
            extra = f", {figures['rss_per_connection_kib']:.2f} KiB/conn"
        cpuPerAck = figures["server_cpu_us_per_ack"]
        log(
            f"{runtime:7} {server:8} {figures['scenario']} #{round_}: "
            f"{figures['acks_per_s']:>11,.0f} acks/s, "
            + (f"{cpuPerAck:6.3f}" if cpuPerAck is not None else "   n/a")
            + f" us/ack, p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
            f"server {figures['server_cpu_percent']}% client {figures['client_cpu_percent']}% "
            f"CPU, server waited {figures.get('server_cpu_wait_percent')}%{extra}{problem}"
        )

    def serverRound(
        self,
        runtime: str,
        python: str,
        clientPython: str,
        kind: str,
        round_: int,
        scenarios: dict[str, Scenario],
    ) -> None:
        duration = self.options.duration
        warm = self.options.warmup
        shared = [s for s in scenarios.values() if not s.fresh]
        fresh = [s for s in scenarios.values() if s.fresh]
        # The workers are spread over every CPU: pinning the client to one of
        # them would favour neither, so nothing is pinned.
        serverCpu, clientCpu = (None, None) if kind in WORKERS else (self.serverCpu, self.clientCpu)
        pinned = {"pinned": serverCpu is not None}
        if shared:
            with Server(
                kind, python, serverCpu, logDir=self.logDir, extraEnv=self.serverEnv(runtime)
            ) as server:
                warmUp(
                    server,
                    clientPython,
                    warm,
                    clientCpu,
                    *((5, 100) if self.options.smoke else (50, 1000)),
                )
                for scenario in shared:
                    # Each scenario's own load first, in the measuring client:
                    # its paths (short reads of varied sizes, the open loop's
                    # ticks) are traced by PyPy's JIT, in the server and in
                    # the client, before the figures start (benchmarks/pauses.py).
                    # The server's CPU spans that warm-up, so a PyPy server
                    # first gets the same load from a separate client: the
                    # tracing of its new paths (about 1 s of it in a first V
                    # run) is not charged to the scenario's acks.
                    if runtime == "pypy" and not self.options.smoke:
                        warmUpAs(server, scenario, clientPython, min(warm, 3.0), clientCpu)
                    self.record(
                        runtime,
                        kind,
                        round_,
                        {
                            **runScenario(
                                server,
                                scenario,
                                clientPython,
                                duration,
                                clientCpu,
                                warmup=min(warm, 3.0),
                            ),
                            **pinned,
                        },
                    )
                self.checkExit(server)
        for scenario in fresh:
            with Server(
                kind, python, serverCpu, logDir=self.logDir, extraEnv=self.serverEnv(runtime)
            ) as server:
                # A short, light warm-up: the code paths, not the buffers.
                warmUp(server, clientPython, min(warm, 1.0), clientCpu, 10, 10)
                time.sleep(0.5)
                self.record(
                    runtime,
                    kind,
                    round_,
                    {
                        **runScenario(
                            server,
                            scenario,
                            clientPython,
                            duration,
                            clientCpu,
                            onConnected=idleConnections(server, scenario),
                        ),
                        **pinned,
                    },
                )
                self.checkExit(server)

    def smokeRun(
        self, interpreters: dict[str, str], clientPython: str, scenarios: dict[str, Scenario]
    ) -> None:
        """
        CI-sized: every server (steps and peers included) started at once,
        each checked with the test vectors of docs/protocol.md (vectors.py); then
        every scenario at once, at tiny scale, against the product.  Only
        correctness counts: zero client errors.
        """
        duration = self.options.duration
        for runtime, python in interpreters.items():
            servers = [
                Server(kind, python, None, logDir=self.logDir) for kind in self.options.servers
            ]
            try:
                for server in servers:
                    server.launch()
                for server in servers:
                    try:
                        server.waitListening()
                        vectors.check(server)
                        self.passed += 1
                        log(f"{runtime:7} {server.kind:8} answers the docs/protocol.md vectors")
                    except BenchError as e:
                        self.failures.append(f"{runtime} {server.kind}: vectors: {e}")
                        log(f"{runtime} {server.kind}: vectors FAILED: {e}")
                product = [s for s in servers if s.kind == PRODUCT and s.port is not None]
                if not product:
                    continue
                server = product[0]
                assert server.port is not None
                clients = {
                    name: Client(
                        clientCommand(
                            clientPython,
                            server.port,
                            sc.connections,
                            duration,
                            sc.payloadSize,
                            window=sc.window,
                            rate=sc.rate,
                        ),
                        None,
                        timeout=duration + 60,
                    )
                    for name, sc in scenarios.items()
                }
                for name, client in clients.items():
                    try:
                        result = client.result()
                    except BenchError as e:
                        self.failures.append(f"{runtime} {PRODUCT} {name}: {e}")
                        continue
                    self.record(runtime, PRODUCT, 1, clientFigures(scenarios[name], result))
            finally:
                for server in servers:
                    status = server.stop()
                    if status != 0 and server.isTcpdemo and server.port is not None:
                        self.failures.append(
                            f"{runtime} {server.kind}: exit status {status} on SIGTERM:\n"
                            f"{server.logTail()}"
                        )

    def checkExit(self, server: Server) -> None:
        status = server.stop()
        if status != 0 and server.isTcpdemo:
            self.failures.append(
                f"{server.kind}: exit status {status} on SIGTERM:\n{server.logTail()}"
            )

    def run(self) -> int:
        options = self.options
        limit = raiseFileLimit()
        scenarios = SMOKE if options.smoke else SCENARIOS
        scenarios = {name: scenarios[name] for name in options.scenarios}
        if "C" in scenarios and limit < scenarios["C"].connections + 100:
            log(f"RLIMIT_NOFILE is {limit}: scenario C scaled down to {limit - 200} connections")
            scenarios["C"] = scenarios["C"].scaled(limit - 200)
        interpreters = self.interpreters()
        clientPython = self.clientPython(interpreters)
        log(
            f"servers: {', '.join(options.servers)}; runtimes: "
            + ", ".join(f"{k} ({interpreterVersion(v)})" for k, v in interpreters.items())
            + f"; client: {interpreterVersion(clientPython)}; pinning: "
            + ("server CPU 0, client CPU 1" if self.serverCpu is not None else "off")
        )
        started = time.time()
        self.productAtStart = productDigest()
        for round_ in range(1, options.runs + 1 if not options.smoke else 1):
            for runtime, python in interpreters.items():
                for kind in options.servers:
                    wanted = {
                        n: s
                        for n, s in scenarios.items()
                        if kind not in KIND_SCENARIOS
                        or n in KIND_SCENARIOS[kind]
                        or options.scenarios_chosen
                        or options.smoke
                    }
                    try:
                        self.serverRound(runtime, python, clientPython, kind, round_, wanted)
                    except BenchError as e:
                        self.failures.append(f"{runtime} {kind}: {e}")
                        log(f"{runtime} {kind}: FAILED: {e}")
        if options.smoke:
            self.smokeRun(interpreters, clientPython, scenarios)
        elapsed = time.time() - started
        log(f"done in {elapsed:.0f}s")
        if not options.smoke or options.out or options.run_dir:
            self.write(interpreters, clientPython, elapsed)
        for failure in self.failures:
            log(f"FAILURE: {failure}")
        if options.smoke:
            bad = len(self.failures)
            print(f"bench-smoke: {len(self.runs) + self.passed - bad} passed, {bad} failed")
        return 1 if self.failures else 0

    def write(self, interpreters: dict[str, str], clientPython: str, elapsed: float) -> None:
        """
        The raw data into the run directory (merged with its earlier
        results.json if asked), then what the docs show from it.
        """
        runDir = Path(self.options.run_dir or RUNS)
        runDir.mkdir(parents=True, exist_ok=True)
        meta = environment(interpreters, clientPython, self.serverCpu, self.clientCpu)
        if "pypy" in interpreters and self.options.pypy_gc_nursery:
            meta["pypy_gc_nursery"] = self.options.pypy_gc_nursery
        meta["elapsed_s"] = round(elapsed)
        meta["protocol_sha256_at_start"] = self.productAtStart
        meta["tcpdemo_changed_during_run"] = self.productAtStart != meta["protocol_sha256"]
        meta["duration_s"] = self.options.duration
        meta["warmup_s"] = self.options.warmup
        meta["rounds"] = self.options.runs
        data = {"meta": meta, "runs": self.runs, "failures": self.failures}
        path = runDir / "results.json"
        if self.options.merge and path.exists():
            data = mergeResults(json.loads(path.read_text()), data)
        path.write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {path}")
        for written in report.publish(
            data,
            Path(self.options.out or RESULTS),
            Path(self.options.doc) if self.options.update_doc else None,
        ):
            log(f"wrote {written}")


def mergeResults(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """
    Replace the old runs of each (runtime, server, scenario) measured anew.
    """
    measured = {(r["runtime"], r["server"], r["scenario"]) for r in new["runs"]}
    kept = [r for r in old["runs"] if (r["runtime"], r["server"], r["scenario"]) not in measured]
    merged = dict(new)
    merged["runs"] = kept + new["runs"]
    merged["meta"] = {
        **old.get("meta", {}),
        **new["meta"],
        "merged": old.get("meta", {}).get("merged", 0) + 1,
    }
    return merged


def productDigest() -> str:
    """
    A digest of the product's hot path (protocol.py and frame.py), to tell
    whether it changed while a run went on.
    """
    return hashlib.sha256(
        (ROOT / "tcpdemo" / "protocol.py").read_bytes()
        + (ROOT / "tcpdemo" / "frame.py").read_bytes()
    ).hexdigest()[:12]


def environment(
    interpreters: dict[str, str], clientPython: str, serverCpu: int | None, clientCpu: int | None
) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            return ""

    cpuModel = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpuModel = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = git("status", "--porcelain", "--", "tcpdemo")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "tcpdemo_modified_in_tree": bool(dirty),
        "protocol_sha256": productDigest(),
        "cpus": os.cpu_count(),
        "cpu_model": cpuModel,
        "kernel": platform.release(),
        "servers": {k: interpreterVersion(v) for k, v in interpreters.items()},
        "client": interpreterVersion(clientPython),
        "pinning": None if serverCpu is None else {"server": serverCpu, "client": clientCpu},
        "payload_size": PAYLOAD_SIZE,
        "scenarios": {n: s.title for n, s in SCENARIOS.items()},
    }


def parseArguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
        def parse(value: str) -> list[str]:
            chosen = [v.strip() for v in value.split(",") if v.strip()]
            for v in chosen:
                if v not in allowed:
                    raise argparse.ArgumentTypeError(f"{v!r} is not one of {', '.join(allowed)}")
            return chosen

        return parse

    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI-sized: tiny scenarios, one round, the current interpreter "
        "for servers and client, no pinning, no warm-up; asserts zero "
        "client errors, not speed",
    )
    parser.add_argument(
        "--runtimes",
        type=names(("cpython", "pypy", "current")),
        default=None,
        help="server runtimes [cpython,pypy; smoke: current]",
    )
    parser.add_argument(
        "--servers",
        type=names(ALL_SERVERS),
        default=None,
        help=f"servers to run, of {','.join(ALL_SERVERS)} [the steps, final "
        "and the peers, the Go ones included (they need go: Debian's golang-go); "
        "the smoke run checks all but the Go peers with the "
        "docs/protocol.md vectors and runs the scenarios against final]",
    )
    parser.add_argument(
        "--scenarios",
        type=names(tuple(SCENARIOS)),
        default=None,
        help="scenarios [P,R,O,C,V,OV,OV20; without this option the steps run "
        "only P and R, sqlite P, V and R, final-pure P, V and OV, go-demo3 P, V, R, "
        "OV and OV20, go-demo2 V and OV20]",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="rounds; each round runs every server once [3; smoke: 1]",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per client run [5; smoke: 1]"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of P-shaped load before measuring [3; smoke: 0]",
    )
    parser.add_argument(
        "--client",
        default=None,
        help="python for the client: 'pypy' (the PyPy venv), 'current', "
        "or a path; or 'go': the Go load generator of benchmarks/loadgen "
        "(built once with golang-go), which has no GC or JIT pauses of its "
        "own [pypy; smoke: current]",
    )
    parser.add_argument("--cpython", default=None, help="CPython for the servers [this one]")
    parser.add_argument("--pypy", default="pypy3", help="PyPy to build the venv from [pypy3]")
    parser.add_argument(
        "--pypy-gc-nursery",
        default=None,
        metavar="SIZE",
        help="PYPY_GC_NURSERY for every PyPy server, e.g. 16MB (docs/handlers.md: PyPy "
        "sizes its nursery to the L2 cache, 1 MB here) [PyPy's default]",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to CPU 0 and the client to CPU 1",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="where summary.md and chart.svg go, what the docs show [benchmarks/results]",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="where the raw data goes: results.json, logs/, profiles/ [benchmarks/runs]",
    )
    parser.add_argument("--log-dir", default=None, help="server logs [RUN_DIR/logs]")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of RUN_DIR/results.json not measured again",
    )
    parser.add_argument(
        "--update-doc", action="store_true", help="rewrite the generated section of --doc"
    )
    parser.add_argument(
        "--doc", default=str(DOC), help="the document --update-doc rewrites [BENCHMARKS.md]"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each tcpdemo server under P instead (see profile.py)",
    )
    options = parser.parse_args(argv)
    smoke = options.smoke
    options.scenarios_chosen = options.scenarios is not None
    if options.scenarios is None:
        options.scenarios = list(SCENARIOS)
    if options.runtimes is None:
        options.runtimes = ["current"] if smoke else ["cpython", "pypy"]
    if options.servers is None:
        options.servers = (
            list(STEP_NAMES) + [PRODUCT] + list(PEERS) + list(HANDLERS) + list(PRODUCT_ENVS)
        )
        if smoke:
            # Not the Go peers: the smoke run must not need Go
            # (systests/test_gopeer.py checks them where Go is installed).
            options.servers += list(PROPOSALS) + list(WORKERS)
        else:
            options.servers += list(GO_PEERS)
    if options.runs is None:
        options.runs = 1 if smoke else 3
    if options.duration is None:
        options.duration = 1.0 if smoke else 5.0
    if options.warmup is None:
        options.warmup = 0.0 if smoke else 3.0
    if options.client is None:
        options.client = "current" if smoke else "pypy"
    if smoke:
        options.pin = False
    return options


def main(argv: list[str] | None = None) -> int:
    options = parseArguments(argv)
    if options.profile:
        from benchmarks import profile

        return profile.main(options)
    try:
        return Bench(options).run()
    except BenchError as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
