"""
Where PyPy's latency tail goes: the pauses of a PyPy server, by cause.

  python -m benchmarks.pauses [--seconds 5] [--run-dir DIR] [--out DIR]

Runs C{twistd -n tcpdemo} under PyPy (the harness's PyPy environment) with
C{PYPYLOG} recording the garbage collector's minor collections and major
collection steps and the JIT's tracing, and drives it with C{tcpdemo-client}
in phases: the harness's P-shaped warm-up, then the open loop with varied
payloads at 20 000/s (three times: JIT warm-up shows as tracing that fades),
and at 100 000/s.  For each phase it prints the client's latency and, per
cause, how many pauses there were, their total and the longest, and how many
took over 1 and 5 ms.  Every pause stops the reactor: the Submits that
arrive meanwhile wait for it, so a pause longer than the p99 of a run
accounts for the tail by itself.

The raw data (pauses.json, the PYPYLOG file, the server's log) goes to the
run directory, benchmarks/runs/pauses/, not kept in git; the table, pauses.md,
to benchmarks/results/pauses/.

Durations are wall-clock (the CPU's time-stamp counter): on a shared machine
a pause also includes time the process was not running.  The counts do not.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import pypyVenv
from benchmarks.servers import ROOT, Client, Server, clientCommand

SECTIONS = "gc-minor,gc-collect-step,jit-tracing"
#: (name, connections, window, payload size, rate, seconds); None payload
#: size is the reference client's 15-30 bytes.
PHASES: list[tuple[str, int, int | None, int | None, float | None, float]] = [
    ("warm-up (P)", 50, 1000, 20, None, 3.0),
    ("OV20, 1st", 50, None, None, 20_000, 5.0),
    ("OV20, 2nd", 50, None, None, 20_000, 5.0),
    ("OV20, 3rd", 50, None, None, 20_000, 5.0),
    ("OV", 50, None, None, 100_000, 5.0),
]
_START = re.compile(r"^\[([0-9a-f]+)\] \{([\w-]+)")
_END = re.compile(r"^\[([0-9a-f]+)\] ([\w-]+)\}")


def timestamp(python: str) -> int:
    """
    The time-stamp counter now, as PyPy's log reads it.
    """
    out = subprocess.run(
        [python, "-c", "import __pypy__; print(__pypy__.debug_read_timestamp())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out)


def ticksPerSecond(python: str) -> float:
    before, started = timestamp(python), time.perf_counter()
    time.sleep(0.5)
    after, ended = timestamp(python), time.perf_counter()
    return (after - before) / (ended - started)


def pauses(log: Path) -> list[tuple[str, int, int]]:
    """
    The outermost sections of a PYPYLOG file: (name, start, end) in ticks.
    """
    stack: list[tuple[str, int]] = []
    found = []
    with open(log, errors="replace") as f:
        for line in f:
            match = _START.match(line)
            if match:
                stack.append((match.group(2), int(match.group(1), 16)))
                continue
            match = _END.match(line)
            if match and stack:
                name, start = stack.pop()
                if not stack:
                    found.append((name, start, int(match.group(1), 16)))
    return found


def run(out: Path, seconds: float | None) -> list[dict[str, Any]]:
    python = pypyVenv("pypy3")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pypylog"
    previous = os.environ.get("PYPYLOG")
    os.environ["PYPYLOG"] = f"{SECTIONS}:{log}"
    try:
        server = Server("final", python, None, logDir=out).start()
    finally:
        if previous is None:
            del os.environ["PYPYLOG"]
        else:
            os.environ["PYPYLOG"] = previous
    phases = []
    try:
        assert server.port is not None
        for name, connections, window, size, rate, length in PHASES:
            length = seconds if seconds is not None and rate is not None else length
            start = timestamp(python)
            result = Client(
                clientCommand(
                    python, server.port, connections, length, size, window=window, rate=rate
                ),
                None,
                timeout=length + 120,
            ).result()
            phases.append(
                {
                    "phase": name,
                    "start": start,
                    "end": timestamp(python),
                    "latency_ms": {
                        k: v / 1000 for k, v in result["latency_us"].items() if k != "count"
                    },
                    "acks_per_s": result["throughput_acks_per_s"],
                    "errors": result["errors"]["total"],
                    "max_tick_gap_ms": result["max_tick_gap_ms"],
                }
            )
    finally:
        server.stop()
    hz = ticksPerSecond(python)
    found = pauses(log)
    for phase in phases:
        causes: dict[str, list[float]] = collections.defaultdict(list)
        for name, start, end in found:
            if phase["start"] <= start <= phase["end"]:
                causes[name].append((end - start) / hz * 1000)
        phase["pauses"] = {
            name: {
                "count": len(d),
                "total_ms": round(sum(d), 1),
                "max_ms": round(max(d), 2),
                "over_1ms": sum(x > 1 for x in d),
                "over_5ms": sum(x > 5 for x in d),
            }
            for name, d in sorted(causes.items())
        }
        del phase["start"], phase["end"]
    (out / "pauses.json").write_text(json.dumps(phases, indent=1) + "\n")
    return phases


def table(phases: list[dict[str, Any]]) -> str:
    lines = [
        "| phase | acks/s | p50 / p99 / max ms | client's longest pause ms | cause: "
        "pauses, total ms, longest ms, over 1 ms / over 5 ms |",
        "|---|---|---|---|---|",
    ]
    for p in phases:
        lat = p["latency_ms"]
        causes = "; ".join(
            f"{n}: {c['count']}, {c['total_ms']:.0f}, {c['max_ms']:.1f}, "
            f"{c['over_1ms']} / {c['over_5ms']}"
            for n, c in p["pauses"].items()
        )
        gap = p["max_tick_gap_ms"]
        lines.append(
            f"| {p['phase']} | {p['acks_per_s']:,.0f} | {lat['p50']:.2f} / "
            f"{lat['p99']:.2f} / {lat['max']:.2f} | "
            f"{'–' if gap is None else format(gap, '.0f')} | {causes or 'none'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pauses",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per open-loop phase [5]"
    )
    parser.add_argument(
        "--run-dir",
        default=str(ROOT / "benchmarks" / "runs" / "pauses"),
        help="raw data: pauses.json, the PYPYLOG file, the server's log [benchmarks/runs/pauses]",
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "pauses"),
        help="where the table, pauses.md, goes [benchmarks/results/pauses]",
    )
    options = parser.parse_args(argv)
    phases = run(Path(options.run_dir), options.seconds)
    text = table(phases)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pauses.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
