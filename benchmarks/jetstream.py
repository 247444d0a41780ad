"""
How fast the jetstream handler stores: durable acks per second through a
1-node and a 3-node (3-replica) JetStream cluster, started here on loopback.

    python -m benchmarks.jetstream                       # handler only, both clusters
    python -m benchmarks.jetstream --twistd --baseline ack sqlite   # twistd under P and V

The handler-only mode drives L{JetStreamHandler} directly with batches
shaped like what scenario P's reads bring (--batch Submits of --payload
bytes, --in-flight batches outstanding): the store's ceiling, without the
server's own cost.  --twistd runs the real thing: C{twistd -n tcpdemo
--handler jetstream:...} loaded by the project's client as scenario P
(50 connections x 1000 in flight) or V.  Every figure is printed; the
machine is shared, so run it more than once and read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from systests.natsservers import NatsCluster
from tcpdemo.handlers import SubmitBatch
from tests.support import submitFrame

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def natsCpu(cluster: NatsCluster) -> float:
    return sum(cpuSeconds(s.process.pid) for s in cluster.running() if s.process is not None)


def streamMessages(cluster: NatsCluster, stream: str) -> int:
    """
    How many messages C{stream} holds, from a node's monitoring /jsz.
    """
    for server in cluster.running():
        jsz = server.monitor("/jsz?streams=true&accounts=true")
        for account in jsz.get("account_details") or []:  # type: ignore[attr-defined]
            for info in account.get("stream_detail") or []:
                if info.get("name") == stream:
                    return int(info["state"]["messages"])
    return 0


async def directRun(
    reactor: Any, cluster: NatsCluster, replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    """
    The handler alone, in this process's reactor, for --seconds.
    """
    from twisted.internet import defer, task

    from tcpdemo.handlers.jetstream import makeHandler

    urls = cluster.urls
    frames = b"".join(submitFrame(n, b"x" * args.payload) for n in range(args.batch))
    figures: dict[str, Any] = {}
    handler = makeHandler(f"{urls}?stream=BENCH&replicas={replicas}", reactor)
    await handler.startHandler()
    acked = 0
    failed = 0
    outstanding = 0
    done = defer.Deferred[None]()
    stopAt = [float("inf")]

    def one() -> None:
        nonlocal outstanding
        outstanding += 1
        batch = SubmitBatch(frames, args.batch, 1, "127.0.0.1:1", time.time())
        handler.handle(batch).addCallbacks(answered, failedBatch)

    def answered(results: Any) -> None:
        nonlocal acked, outstanding
        outstanding -= 1
        acked += args.batch
        refill()

    def failedBatch(reason: Any) -> None:
        nonlocal failed, outstanding
        outstanding -= 1
        failed += 1
        refill()

    def refill() -> None:
        if time.monotonic() < stopAt[0]:
            while outstanding < args.in_flight:
                one()
        elif outstanding == 0 and not done.called:
            done.callback(None)

    stopAt[0] = time.monotonic() + args.warmup + args.seconds
    refill()
    await task.deferLater(reactor, args.warmup, lambda: None)
    start, ackedStart = time.monotonic(), acked
    cpuStart, natsStart = os.times(), natsCpu(cluster)
    await task.deferLater(reactor, args.seconds, lambda: None)
    elapsed, ackedRun = time.monotonic() - start, acked - ackedStart
    cpuEnd, natsEnd = os.times(), natsCpu(cluster)
    await done
    await handler.stopHandler()
    figures.update(
        acks_per_s=round(ackedRun / elapsed),
        messages_per_s=round(ackedRun / args.batch / elapsed),
        failed_batches=failed,
        client_cpu_percent=round(
            100 * ((cpuEnd.user + cpuEnd.system) - (cpuStart.user + cpuStart.system)) / elapsed
        ),
        nats_cpu_percent=round(100 * (natsEnd - natsStart) / elapsed),
    )

    return figures


def twistdRun(
    cluster: NatsCluster | None,
    replicas: int,
    scenario: str,
    args: argparse.Namespace,
    baseline: str | None = None,
) -> dict[str, Any]:
    """
    C{twistd -n tcpdemo --handler jetstream:...} under scenario P or V; or
    with C{baseline}, C{--handler ack} or C{sqlite:...}, for reference.
    """
    from benchmarks.bench import SCENARIOS
    from benchmarks.servers import clientCommand
    from tests.support import TwistdServer

    workdir = tempfile.mkdtemp(prefix="bench-jetstream-twistd-")
    if baseline is not None:
        handler = baseline
        if handler == "sqlite":
            handler = f"sqlite:{os.path.join(workdir, 'bench.db')}"
    else:
        assert cluster is not None
        handler = (
            f"jetstream:{cluster.urls}?stream=BENCH{scenario}&subject=bench.{scenario}"
            f"&replicas={replicas}"
        )
    server = TwistdServer(workdir, ["--handler", handler])
    try:
        s = SCENARIOS[scenario]
        command = clientCommand(
            sys.executable,
            server.port,
            s.connections,
            args.seconds,
            s.payloadSize,
            window=s.window,
            rate=s.rate,
        )
        natsBefore = natsCpu(cluster) if cluster else 0.0
        serverCpu = cpuSeconds(server.pid)
        result = subprocess.run(command, capture_output=True, timeout=args.seconds + 120)
        report = json.loads(result.stdout)
        duration = report["duration_s"]
        natsAfter = natsCpu(cluster) if cluster else 0.0
        extra: dict[str, Any] = {}
        if cluster is not None:
            messages = streamMessages(cluster, f"BENCH{scenario}")
            extra["submits_per_message"] = round(report["acked"] / max(messages, 1), 1)
        return {
            **extra,
            "handler": handler.split(":")[0],
            "scenario": scenario,
            "acks_per_s": report["throughput_acks_per_s"],
            "errors": report["errors"]["total"],
            "p99_ms": report["latency_us"]["p99"] / 1000,
            "server_cpu_percent": round(100 * (cpuSeconds(server.pid) - serverCpu) / duration),
            "server_cpu_us_per_ack": round(
                1e6 * (cpuSeconds(server.pid) - serverCpu) / max(report["acked"], 1), 3
            ),
            "nats_cpu_percent": round(100 * (natsAfter - natsBefore) / duration),
        }
    finally:
        server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=200, help="Submits per batch (direct)")
    parser.add_argument("--payload", type=int, default=20, help="payload bytes (direct)")
    parser.add_argument("--in-flight", type=int, default=250, help="batches outstanding (direct)")
    parser.add_argument("--twistd", action="store_true", help="the real server under P and V")
    parser.add_argument("--scenarios", nargs="+", default=["P", "V"])
    parser.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        choices=["ack", "sqlite"],
        help="with --twistd: these handlers first, side by side",
    )
    args = parser.parse_args()

    from twisted.internet import defer, task

    async def runAll(reactor: Any) -> None:
        if args.twistd:
            for baseline in args.baseline:
                for scenario in args.scenarios:
                    figures = twistdRun(None, 0, scenario, args, baseline)
                    figures.update(loadavg_1m=round(os.getloadavg()[0], 2))
                    print(json.dumps(figures), flush=True)
        for replicas in args.replicas:
            workdir = tempfile.mkdtemp(prefix="bench-jetstream-")
            cluster = NatsCluster(workdir, 3 if replicas > 1 else 1)
            cluster.start()
            try:
                runs: list[dict[str, Any]] = []
                if args.twistd:
                    for scenario in args.scenarios:
                        runs.append(twistdRun(cluster, replicas, scenario, args))
                else:
                    runs.append(await directRun(reactor, cluster, replicas, args))
                for figures in runs:
                    figures.update(
                        replicas=replicas,
                        nodes=len(cluster.servers),
                        loadavg_1m=round(os.getloadavg()[0], 2),
                    )
                    print(json.dumps(figures), flush=True)
            finally:
                cluster.stop()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(runAll(reactor)))


if __name__ == "__main__":
    main()
