"""
Hostile-client figures for docs/reliability.md: what attackers cost a real
C{twistd -n tcpdemo} on its defaults, and what a clean client sees meanwhile.

Scenarios (each starts its own server on loopback ports the kernel picks):

  - C{partial}: C{--connections} (1000) connections each send the header of a
    frame of C{--frame-length} bytes (1 MiB, the largest allowed) and all of its body but
    1000 bytes, then trickle one byte each every 0.1 s for C{--seconds}.
    Measured: the server's RSS before, at its peak while the attackers fill
    and trickle, and after they leave; the server's CPU while they trickle;
    how many the server closed (C{memory_budget}); and the round-trip time
    of a clean connection's batch of 1000 pipelined Submits, every 0.25 s.
    With C{--rounds N}, N-1 more attacks (the same fill, then leave, no
    trickle) on the same server, and each one's peak and kept RSS: what
    one attack leaves behind must be reused by the next, not added to
    (PyPy keeps garbage until its next major collection, and an idle
    server allocates nothing that would start one).
  - C{connflood}: one connection sends nothing but 5-byte Conn frames, as
    fast as it can, from another process; the clean batch's round-trip
    time, without and then with the flood.

    python -m benchmarks.hostile                       # both, this checkout
    python -m benchmarks.hostile --code /tmp/old-tree  # the same against another tree
    python -m benchmarks.hostile --json                # figures as one JSON object

The machine is shared and has two cores: the attackers, the clean client
and the server compete for them, so figures vary between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
FRAME_LENGTH = 1024 * 1024
BATCH = 1000
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"hostile: {message}", file=sys.stderr, flush=True)


def freePort() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Server:
    """
    C{twistd -n tcpdemo} from C{code} (a checkout), on its defaults but for
    its loopback ports.
    """

    def __init__(self, code: Path, workdir: str, extra: list[str]) -> None:
        self.port = freePort()
        self.metricsPort = freePort()
        self.logPath = os.path.join(workdir, "twistd.log")
        env = dict(os.environ, PYTHONPATH=str(code))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "--logfile",
                self.logPath,
                "tcpdemo",
                "--port",
                f"tcp:{self.port}:interface={LOOPBACK}",
                "--metrics",
                f"tcp:{self.metricsPort}:interface={LOOPBACK}",
                *extra,
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while "tcpdemo metrics (/metrics) listening" not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the server did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return Path(self.logPath).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpuSeconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def metric(self, name: str) -> float:
        url = f"http://{LOOPBACK}:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        match = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def submits(count: int, start: int = 0) -> bytes:
    frames = []
    for n in range(start, start + count):
        body = b"\x02" + b"%08d" % n + b"clean-payload"
        frames.append(struct.pack("!i", len(body) + 4) + body)
    return b"".join(frames)


class CleanClient:
    """
    One connection that sends a batch of 1000 pipelined Submits in one
    write and times until the last ack is in, checking every ack.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.batch = submits(BATCH)
        self.expected = b"".join(
            struct.pack("!i", 14) + b"\x81" + b"%08d" % n + b"\x00" for n in range(BATCH)
        )

    def roundTrip(self) -> float:
        started = time.perf_counter()
        self.sock.sendall(self.batch)
        received = bytearray()
        while len(received) < len(self.expected):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("the clean connection was closed")
            received += chunk
        elapsed = time.perf_counter() - started
        if bytes(received) != self.expected:
            raise SystemExit("the clean connection got wrong acks")
        return elapsed

    def close(self) -> None:
        self.sock.close()


def summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "batches": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[max(0, math.ceil(0.9 * len(ms)) - 1)], 2),
        "max_ms": round(ms[-1], 2),
    }


class RssPeak(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, self.server.rss())
            except (OSError, RuntimeError):
                return
            time.sleep(0.02)


def trickle(attackers: list[socket.socket]) -> None:
    """
    One byte to each attacker every 0.1 s, until killed.
    """
    while True:
        tick = time.monotonic()
        for sock in attackers:
            try:
                sock.send(b"x")
            except OSError:
                pass
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))


def fill(server: Server, connections: int, frameLength: int) -> tuple[list[socket.socket], float]:
    """
    C{connections} attackers, each with a partial frame of C{frameLength}
    bytes but 1000 sent, once the server has read it all (or closed what it
    did not); and how long they took to send it.
    """
    body = b"x" * (frameLength - 4 - 1000)
    head = struct.pack("!i", frameLength)
    attackers: list[socket.socket] = []
    fillStarted = time.monotonic()
    before = server.metric("tcpdemo_bytes_received_total")
    for _ in range(connections):
        sock = socket.create_connection((LOOPBACK, server.port), timeout=30)
        try:
            sock.sendall(head + body)
        except OSError:
            pass  # closed by the server already: still an attacker
        attackers.append(sock)
    fillSeconds = time.monotonic() - fillStarted
    total = before + connections * (len(head) + len(body))
    deadline = time.monotonic() + 120
    last = -1.0
    while time.monotonic() < deadline:
        received = server.metric("tcpdemo_bytes_received_total")
        if received >= total or received == last:
            break
        last = received
        time.sleep(1)
    return attackers, fillSeconds


def partial(
    code: Path,
    connections: int,
    seconds: float,
    extra: list[str],
    frameLength: int = FRAME_LENGTH,
    rounds: int = 1,
) -> dict[str, Any]:
    mib = 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(code, workdir, extra)
        try:
            clean = CleanClient(server.port)
            for _ in range(20):
                clean.roundTrip()
            quiet = summary([clean.roundTrip() for _ in range(20)])
            time.sleep(1)
            rssBefore = server.rss()
            sampler = RssPeak(server)
            sampler.start()
            attackers, fillSeconds = fill(server, connections, frameLength)
            log(f"{connections} attackers sent their partial frames in {fillSeconds:.1f} s")
            for sock in attackers:
                sock.setblocking(False)
            # The trickle runs in a child process (it inherits the sockets),
            # so that it never holds this process's GIL while a clean batch
            # is being timed.
            trickler = os.fork()
            if trickler == 0:
                try:
                    trickle(attackers)
                finally:
                    os._exit(0)
            time.sleep(1)
            cpuStart, wallStart = server.cpuSeconds(), time.monotonic()
            times = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                times.append(clean.roundTrip())
                time.sleep(0.25)
            cpu = (server.cpuSeconds() - cpuStart) / (time.monotonic() - wallStart)
            rssTrickling = server.rss()
            os.kill(trickler, signal.SIGKILL)
            os.waitpid(trickler, 0)
            closedByServer = server.metric('tcpdemo_protocol_errors_total{reason="memory_budget"}')
            sampler.halt.set()
            sampler.join()
            for sock in attackers:
                sock.close()
            time.sleep(3)
            rssAfter3 = server.rss()
            time.sleep(7)
            rssAfter10 = server.rss()
            after = summary([clean.roundTrip() for _ in range(20)])
            # Further rounds: the same attack again, without the trickle;
            # what a round keeps must be reused by the next, not added to.
            laterPeaks, laterKept = [], []
            for _ in range(rounds - 1):
                sampler = RssPeak(server)
                sampler.start()
                attackers, _ = fill(server, connections, frameLength)
                for sock in attackers:
                    sock.close()
                time.sleep(1)
                sampler.halt.set()
                sampler.join()
                time.sleep(9)
                laterPeaks.append(round((sampler.peak - rssBefore) / mib, 1))
                laterKept.append(round((server.rss() - rssBefore) / mib, 1))
            clean.close()
            return {
                "connections": connections,
                "frame_length": frameLength,
                "rss_before_mib": round(rssBefore / mib, 1),
                "rss_peak_growth_mib": round((sampler.peak - rssBefore) / mib, 1),
                "rss_trickling_growth_mib": round((rssTrickling - rssBefore) / mib, 1),
                "rss_3s_after_leaving_growth_mib": round((rssAfter3 - rssBefore) / mib, 1),
                "rss_10s_after_leaving_growth_mib": round((rssAfter10 - rssBefore) / mib, 1),
                "closed_by_server_memory_budget": int(closedByServer),
                "server_cpu_while_trickling": round(cpu, 3),
                "clean_batch_quiet": quiet,
                "clean_batch_while_trickling": summary(times),
                "clean_batch_after": after,
                "later_rounds_rss_peak_growth_mib": laterPeaks,
                "later_rounds_rss_10s_after_leaving_growth_mib": laterKept,
            }
        finally:
            server.stop()


_FLOODER = r"""
import socket, sys, threading, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
seconds = float(sys.argv[2])
got = [0]
def read():
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        got[0] += len(chunk)
threading.Thread(target=read, daemon=True).start()
data = b"\x00\x00\x00\x05\x01" * 13107
sent = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    sock.sendall(data)
    sent += len(data)
print(sent // 5, got[0] // 6, flush=True)
"""


def connflood(code: Path, seconds: float, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(code, workdir, extra)
        try:
            clean = CleanClient(server.port)
            for _ in range(20):
                clean.roundTrip()
            quiet = summary([clean.roundTrip() for _ in range(40)])
            flooder = subprocess.Popen(
                [sys.executable, "-c", _FLOODER, str(server.port), str(seconds + 2)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)
            cpuStart, wallStart = server.cpuSeconds(), time.monotonic()
            times = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                times.append(clean.roundTrip())
                time.sleep(0.1)
            cpu = (server.cpuSeconds() - cpuStart) / (time.monotonic() - wallStart)
            out, _ = flooder.communicate(timeout=60)
            sent, acked = (int(x) for x in out.split())
            clean.close()
            return {
                "clean_batch_quiet": quiet,
                "clean_batch_while_flooded": summary(times),
                "conns_sent": sent,
                "connacks_received": acked,
                "connacks_per_second": round(acked / (seconds + 2)),
                "server_cpu_while_flooded": round(cpu, 3),
            }
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["partial", "connflood", "all"], default="all")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--frame-length",
        type=int,
        default=FRAME_LENGTH,
        help="the partial frames' total_length (default: 1 MiB, the largest allowed)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="partial: attack this many times in all (the later rounds without the trickle)",
    )
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("server_args", nargs="*", help="extra twistd tcpdemo options, after --")
    options = parser.parse_args(argv)
    results: dict[str, Any] = {"code": str(options.code), "python": sys.version.split()[0]}
    if options.scenario in ("partial", "all"):
        log("partial frames...")
        results["partial"] = partial(
            options.code,
            options.connections,
            options.seconds,
            options.server_args,
            options.frame_length,
            options.rounds,
        )
    if options.scenario in ("connflood", "all"):
        log("Conn flood...")
        results["connflood"] = connflood(options.code, options.seconds, options.server_args)
    if options.json:
        print(json.dumps(results))
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
