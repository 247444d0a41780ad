"""
Real C{nats-server} processes with JetStream for the tests: one node or a
3-node cluster, on free loopback ports, each with its own store directory.
A missing C{nats-server} binary fails the test (never skips it).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from tests.support import LOOPBACK, REPO_ROOT, freePort, requireBinary, waitFor

CLUSTER_NAME = "tcpdemo-test"
DEPLOY_DIR = os.path.join(REPO_ROOT, "deploy", "nats")


def fixedPort() -> int:
    """
    A free loopback port below the kernel's ephemeral range, for a server
    whose port must be known before it starts (cluster routes name their
    peers' ports).  L{freePort} takes one from the ephemeral range, where
    any outgoing connection of the machine may take it as its source port
    before nats-server binds it ("address already in use", seen once in
    CI); below that range only another listener can.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(min(10000, low - 1000), low - 1)
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    return freePort()


class NatsServer:
    """
    One C{nats-server -js} on loopback; L{start} again after L{kill} or
    L{stop} reuses its ports and store (a restart).
    """

    def __init__(self, workdir: str, name: str) -> None:
        self.name = name
        self.port = fixedPort()
        self.clusterPort = fixedPort()
        self.monitorPort = fixedPort()
        self.storeDir = os.path.join(workdir, f"{name}-store")
        self.logPath = os.path.join(workdir, f"{name}.log")
        self.routes: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        #: Run from this configuration file (deploy/nats/...) instead of flags.
        self.configPath: str | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        if self.configPath is not None:
            return [requireBinary("nats-server"), "-c", self.configPath]
        args = [
            requireBinary("nats-server"),
            "-js",
            "-sd",
            self.storeDir,
            "-n",
            self.name,
            "-a",
            LOOPBACK,
            "-p",
            str(self.port),
            "-m",
            str(self.monitorPort),
        ]
        if self.routes:
            args += [
                "--cluster_name",
                CLUSTER_NAME,
                "--cluster",
                f"nats://{LOOPBACK}:{self.clusterPort}",
                "--routes",
                ",".join(f"nats://{LOOPBACK}:{port}" for port in self.routes),
            ]
        return args

    def start(self) -> None:
        with open(self.logPath, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        waitFor(self.listening, timeout=20, what=f"{self.name} to listen")

    def monitor(self, path: str) -> dict[str, object]:
        url = f"http://{LOOPBACK}:{self.monitorPort}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result: dict[str, object] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as e:
            result = json.loads(e.read() or b"{}")
            result["http_status"] = e.code
            return result

    def listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")
        try:
            self.monitor("/varz")
        except OSError:
            return False
        return True

    def healthy(self) -> bool:
        """
        JetStream ready here (C{/healthz}: meta leader known, assets current).
        """
        try:
            return self.monitor("/healthz").get("status") == "ok"
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """
        SIGKILL: no goodbye to the cluster, no flush.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def deployConfig(text: str, server: NatsServer, peers: Sequence[NatsServer]) -> str:
    """
    A C{deploy/nats/nats-N.conf} with its listeners, routes and store moved
    to C{server}'s loopback ports and directory (whole lines only).
    """
    replacements = {
        "listen: 0.0.0.0:4222": f"listen: {LOOPBACK}:{server.port}",
        "http: 0.0.0.0:8222": f"http: {LOOPBACK}:{server.monitorPort}",
        "listen: 0.0.0.0:6222": f"listen: {LOOPBACK}:{server.clusterPort}",
        "store_dir: /var/lib/nats/jetstream": f"store_dir: {server.storeDir}",
    }
    for peer in peers:
        number = peer.name.rsplit("-", 1)[1]
        replacements[f"nats://10.0.1.{number}:6222"] = f"nats://{LOOPBACK}:{peer.clusterPort}"
    for old, new in replacements.items():
        line = re.compile(rf"^(\s*){re.escape(old)}\s*$", re.M)
        text, found = line.subn(rf"\g<1>{new}", text)
        if found != 1:
            raise AssertionError(f"deploy/nats config should have a line {old!r}, once")
    return text


class NatsCluster:
    """
    C{size} nats-servers routed to each other on loopback (1: a lone node);
    with C{deployed}, three nodes run from deploy/nats/nats-N.conf.
    """

    def __init__(self, workdir: str, size: int = 3, deployed: bool = False) -> None:
        names = [f"nats-{number}" for number in range(1, size + 1)]
        self.servers = [NatsServer(workdir, name) for name in names]
        if size > 1:
            for server in self.servers:
                server.routes = [s.clusterPort for s in self.servers if s is not server]
        if deployed:
            for server in self.servers:
                with open(os.path.join(DEPLOY_DIR, f"{server.name}.conf")) as f:
                    text = f.read()
                peers = [s for s in self.servers if s is not server]
                server.configPath = os.path.join(workdir, f"{server.name}.conf")
                with open(server.configPath, "w") as f:
                    f.write(deployConfig(text, server, peers))

    @property
    def urls(self) -> str:
        return ",".join(server.url for server in self.servers)

    def running(self) -> Sequence[NatsServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def start(self, timeout: float = 60.0) -> None:
        for server in self.servers:
            server.start()
        self.waitHealthy(timeout)

    def waitHealthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(server.healthy() for server in self.running()):
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {s.name}:\n{s.log()[-3000:]}" for s in self.servers)
        raise AssertionError(f"the NATS cluster never got healthy:\n{logs}")

    def stop(self) -> None:
        for server in self.servers:
            server.kill()

    def streamLeader(self, stream: str) -> NatsServer:
        """
        The node leading C{stream}'s RAFT group, from the monitoring /jsz.
        """
        for server in self.running():
            jsz = server.monitor("/jsz?streams=true&accounts=true")
            for account in jsz.get("account_details") or []:  # type: ignore[attr-defined]
                for info in account.get("stream_detail") or []:
                    if info.get("name") == stream:
                        leader = (info.get("cluster") or {}).get("leader")
                        for candidate in self.servers:
                            if candidate.name == leader:
                                return candidate
        raise AssertionError(f"no leader for stream {stream}")
