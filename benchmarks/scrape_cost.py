"""
What /metrics scrapers cost the server: Submit throughput with and without
N concurrent scrapers, side by side in one run.

    python -m benchmarks.scrape_cost                 # 50 scrapers, 3 rounds of 5 s
    python -m benchmarks.scrape_cost --scrapers 50 --rounds 3 --seconds 5

One real C{twistd -n tcpdemo} on loopback (this checkout, this interpreter,
defaults), pinned to CPU 0 when there are two CPUs or more; the load client
(C{python -m tcpdemo.client} under PyPy, 50 connections x 1000 Submits in
flight) pinned to CPU 1.  Each round runs the load twice, once alone and once while
N scraper threads (10 to a process, not pinned: wherever the kernel finds
room, as on a real machine) fetch /metrics in a loop on keep-alive
connections.  It prints each run's acks/s, the scrapes answered per second,
the server's CPU, and the ratio of the medians, scraped over unscraped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support import LOOPBACK, TwistdServer, subprocessEnv  # noqa: E402

#: One scrapers' process: N threads, each fetching /metrics from HOST:PORT
#: in a loop for SECONDS on a keep-alive connection (as Prometheus does);
#: prints {"ok": n, "refused": n, "failed": n} at the end.
SCRAPER = """
import http.client, json, sys, threading, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
tally = {"ok": 0, "refused": 0, "failed": 0}
lock = threading.Lock()
end = time.monotonic() + seconds
def scrape():
    connection = None
    while time.monotonic() < end:
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            response.read()
            kind = {200: "ok", 503: "refused"}.get(response.status, "failed")
        except (OSError, http.client.HTTPException):
            kind = "failed"
            connection = None
        with lock:
            tally[kind] += 1
threads = [threading.Thread(target=scrape) for _ in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(tally))
"""


def pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(pid, {cpu})


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def splitScrapers(count: int, perProcess: int = 10) -> list[int]:
    """
    C{count} scraper threads as the thread counts of processes of at most
    C{perProcess} threads (one interpreter lock would slow them down).
    """
    shares = [perProcess] * (count // perProcess)
    if count % perProcess:
        shares.append(count % perProcess)
    return shares


def loadClient(python: str, port: int, seconds: float) -> dict[str, Any]:
    """
    The load client's JSON report for one run against C{port}.
    """
    command = [
        python,
        "-m",
        "tcpdemo.client",
        "--port",
        f"tcp:{LOOPBACK}:{port}",
        "--connections",
        "50",
        "--window",
        "1000",
        "--duration",
        f"{seconds:g}",
        "--json",
        "--quiet",
    ]
    done = subprocess.run(
        command,
        env=subprocessEnv(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise SystemExit(f"the load client failed: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def run(server: TwistdServer, python: str, seconds: float, scrapers: int) -> dict[str, Any]:
    """
    One load run of C{seconds}, with C{scrapers} scraper threads alongside
    (none: 0).
    """
    processes = []
    for share in splitScrapers(scrapers):
        # Unpinned: wherever the kernel finds room, as on a real machine.
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SCRAPER,
                    LOOPBACK,
                    str(server.metricsPort),
                    str(share),
                    str(seconds + 1),
                ],
                stdout=subprocess.PIPE,
                env=subprocessEnv(),
            )
        )
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(processes[-1].pid, range(os.cpu_count() or 1))
    if processes:
        time.sleep(0.5)
    cpu = cpuSeconds(server.pid)
    began = time.monotonic()
    report = loadClient(python, server.port, seconds)
    elapsed = time.monotonic() - began
    serverCpu = (cpuSeconds(server.pid) - cpu) / elapsed
    result: dict[str, Any] = {
        "acks_per_s": float(report["throughput_acks_per_s"]),
        "server_cpu": serverCpu,
    }
    if processes:
        tally = {"ok": 0, "refused": 0, "failed": 0}
        for process in processes:
            out, _ = process.communicate(timeout=seconds + 60)
            for kind, n in json.loads(out).items():
                tally[kind] += n
        result["scrapes_per_s"] = tally["ok"] / (seconds + 1)
        result["refused"] = tally["refused"]
        result["failed"] = tally["failed"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--client-python",
        help="the interpreter of the load client [default: PyPy, in the benchmark's "
        "virtualenv, built on first use as benchmarks/bench.py does]",
    )
    args = parser.parse_args()
    python = args.client_python
    if python is None:
        from benchmarks.bench import pypyVenv

        python = pypyVenv("pypy3")

    with tempfile.TemporaryDirectory(prefix="tcpdemo-scrape-cost-") as workdir:
        server = TwistdServer(workdir)
        try:
            pin(server.pid, 0)
            # The load client, started from here, inherits CPU 1.
            pin(os.getpid(), 1)
            plain: list[float] = []
            scraped: list[float] = []
            for number in range(1, args.rounds + 1):
                alone = run(server, python, args.seconds, 0)
                plain.append(alone["acks_per_s"])
                busy = run(server, python, args.seconds, args.scrapers)
                scraped.append(busy["acks_per_s"])
                print(
                    f"round {number}: alone {alone['acks_per_s']:,.0f} acks/s "
                    f"(server CPU {alone['server_cpu']:.0%}); with {args.scrapers} scrapers "
                    f"{busy['acks_per_s']:,.0f} acks/s (server CPU {busy['server_cpu']:.0%}), "
                    f"{busy['scrapes_per_s']:.1f} scrapes/s answered, {busy['refused']} "
                    f"refused (503), {busy['failed']} failed",
                    flush=True,
                )
        finally:
            server.kill()
    ratio = statistics.median(scraped) / statistics.median(plain)
    print(
        f"median: alone {statistics.median(plain):,.0f} acks/s, with {args.scrapers} "
        f"scrapers {statistics.median(scraped):,.0f} acks/s: ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
