"""
Profiles of each tcpdemo server (the steps and the product) under scenario P
(or the first of --scenarios):

  python -m benchmarks.bench --profile [--servers step0,final] [--runtimes cpython]
  python -m benchmarks.bench --profile --servers final --scenarios R

On CPython: py-spy (sampling, out of process, so the figures are not skewed
by the profiler) when it is installed, then the server's own
C{/debug/profile} (cProfile, with call counts); on PyPy, C{/debug/profile}
only (py-spy cannot read PyPy).  Tables go to
benchmarks/runs/profiles/RUNTIME-SERVER.txt (the run directory, C{--run-dir}):
generated files, not kept in git, since they name this machine's paths and
the line numbers of the code profiled.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.bench import RUNS, SCENARIOS, Bench, Scenario, log, warmUp
from benchmarks.servers import (
    GO_PEERS,
    PEERS,
    PRODUCT,
    WORKERS,
    BenchError,
    Client,
    Server,
    clientCommand,
)
from tcpdemo.limits import raiseFileLimit

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TOP = 20


def _shortFile(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.", "/lib/pypy3.", "/lib-python/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") and "/" in tail else tail
    for marker in ("/tcpdemo/", "/benchmarks/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def collapsedTop(text: str, rows: int = TOP) -> str:
    """
    The functions with the most own (leaf) samples, and the most samples
    anywhere on the stack, from py-spy's raw (collapsed stack) output.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame.strip())
            if match is None:
                continue
            frames.append(f"{match['function']} ({_shortFile(match['file'])})")
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    if not samples:
        return "(no samples)\n"
    out = [
        f"{samples} samples of the server's reactor thread (idle time excluded)",
        "",
        "  own %  total %  function",
    ]
    for name, n in own.most_common(rows):
        out.append(f"{100 * n / samples:7.1f}  {100 * total[name] / samples:7.1f}  {name}")
    out += [
        "",
        "  by total % (own + callees; the reactor's frames above the protocol left out):",
        "",
    ]
    below = [(name, n) for name, n in total.most_common() if n < 0.96 * samples]
    for name, n in below[:rows]:
        out.append(f"{100 * own[name] / samples:7.1f}  {100 * n / samples:7.1f}  {name}")
    return "\n".join(out) + "\n"


def pySpy(pid: int, seconds: float) -> str | None:
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        result = subprocess.run(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                f.name,
                "--nonblocking",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return f"(py-spy failed: {result.stderr.strip()[-500:]})\n"
        return Path(f.name).read_text()


def profileServer(
    bench: Bench,
    runtime: str,
    python: str,
    clientPython: str,
    kind: str,
    seconds: float,
    out: Path,
    scenario: Scenario,
) -> Path:
    pypy = runtime == "pypy"
    suffix = "" if scenario.name == "P" else f"-{scenario.name}"
    spy = not pypy and shutil.which("py-spy") is not None
    sections: list[tuple[str, str]] = []
    with Server(kind, python, bench.serverCpu, debug=True, logDir=bench.logDir) as server:
        warmUp(server, clientPython, bench.options.warmup, bench.clientCpu)
        assert server.port is not None
        length = seconds * (2 if spy else 1) + 4
        client = Client(
            clientCommand(
                clientPython,
                server.port,
                scenario.connections,
                length,
                scenario.payloadSize,
                window=scenario.window,
                rate=scenario.rate,
            ),
            bench.clientCpu,
            timeout=length + 120,
        )
        time.sleep(1.5)
        if spy:
            raw = pySpy(server.pid, seconds)
            if raw is not None:
                (out / f"{runtime}-{kind}{suffix}.pyspy.txt").write_text(raw)
                sections.append(
                    (
                        f"py-spy, {seconds:g} s at 250 Hz, under {scenario.name} "
                        "(sampling: proportions as they are)",
                        collapsedTop(raw),
                    )
                )
        try:
            table = server.profile(seconds)
        except OSError as e:
            table = f"(/debug/profile failed: {e})\n"
        sections.append(
            (
                f"/debug/profile (cProfile), {seconds:g} s under {scenario.name} "
                "(deterministic: the profiler's own cost inflates small calls)",
                table,
            )
        )
        result = client.result()
    header = (
        f"{runtime} server {kind} under {scenario.name} ({scenario.title}); during the "
        f"profiled run: {result['throughput_acks_per_s']:,.0f} acks/s (slowed by the "
        f"profiler), {result['errors']['total']} client errors\n"
    )
    path = out / f"{runtime}-{kind}{suffix}.txt"
    path.write_text(header + "".join(f"\n== {title}\n\n{body}" for title, body in sections))
    log(f"wrote {path}")
    return path


def main(options: argparse.Namespace) -> int:
    bench = Bench(options)
    raiseFileLimit()
    interpreters = bench.interpreters()
    clientPython = bench.clientPython(interpreters)
    out = Path(options.run_dir or RUNS) / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    seconds = max(3.0, options.duration)
    failures = 0
    servers: dict[str, str] = {}
    for kind in options.servers:
        # Not the peers (no /debug), nor --workers (the parent serves none).
        if kind not in PEERS and kind not in GO_PEERS and kind not in WORKERS:
            servers[kind] = kind
    if not servers:
        servers[PRODUCT] = PRODUCT
    # The first scenario named (P unless --scenarios says otherwise).
    scenario = SCENARIOS[options.scenarios[0]]
    for runtime, python in interpreters.items():
        for kind in servers:
            try:
                profileServer(bench, runtime, python, clientPython, kind, seconds, out, scenario)
            except BenchError as e:
                failures += 1
                log(f"{runtime} {kind}: FAILED: {e}")
    return 1 if failures else 0
