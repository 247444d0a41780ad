"""
The scale-out recipe, for real: Debian's C{haproxy} running
C{deploy/haproxy.cfg} on loopback in front of two C{twistd -n tcpdemo}
processes, loaded with the project's client through HAProxy.

The configuration is the deployed file itself, with four lines changed by
plain text substitution: the two C{bind} addresses and the two C{server}
addresses move to free loopback ports.  Everything else (mode, balancing,
timeouts, the protocol-level health check, the Prometheus exporter) is
tested as shipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from .support import (
    LOOPBACK,
    REPO_ROOT,
    TwistdServer,
    freePort,
    metric,
    runLoadClient,
    startHaproxy,
    waitFor,
)

CONFIG = os.path.join(REPO_ROOT, "deploy", "haproxy.cfg")


def loopbackConfig(text: str, front: int, stats: int, servers: list[int]) -> str:
    """
    C{deploy/haproxy.cfg} with its listeners and servers on loopback ports.
    """
    replacements = {
        "bind *:8888": f"bind {LOOPBACK}:{front}",
        "bind *:8404": f"bind {LOOPBACK}:{stats}",
    }
    for number, port in enumerate(servers, 1):
        replacements[f"server tcpdemo{number} 10.0.0.{number}:8888"] = (
            f"server tcpdemo{number} {LOOPBACK}:{port}"
        )
    for old, new in replacements.items():
        # Whole configuration lines only, not the comments that name them.
        line = re.compile(rf"^(\s*){re.escape(old)}(\s|$)", re.M)
        text, found = line.subn(rf"\g<1>{new}\g<2>", text)
        if found != 1:
            raise AssertionError(f"deploy/haproxy.cfg should have a line {old!r}, once")
    return text


class HAProxyTests(SynchronousTestCase):
    haproxy: subprocess.Popen[bytes]
    haproxyLog: str

    def workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def startHAProxy(self, servers: list[TwistdServer]) -> tuple[int, int, str]:
        front, stats = freePort(), freePort()
        with open(CONFIG) as f:
            config = loopbackConfig(f.read(), front, stats, [s.port for s in servers])
        self.haproxy, self.haproxyLog = startHaproxy(self, self.workdir(), config)
        return front, stats, self.haproxyLog

    def haproxyMetrics(self, port: int) -> dict[str, float]:
        url = f"http://{LOOPBACK}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    def serverState(self, stats: int, server: str) -> str:
        """
        The state HAProxy's health check gives a backend server.
        """
        if self.haproxy.poll() is not None:
            with open(self.haproxyLog, encoding="utf-8", errors="replace") as f:
                raise AssertionError(f"haproxy exited {self.haproxy.returncode}:\n{f.read()}")
        try:
            samples = self.haproxyMetrics(stats)
        except OSError:
            return "no answer"
        for state in ("UP", "DOWN", "NOLB", "MAINT", "DRAIN"):
            key = f'haproxy_server_status{{proxy="tcpdemo",server="{server}",state="{state}"}}'
            if samples.get(key) == 1:
                return state
        return "unknown"

    def test_throughHAProxy(self) -> None:
        """
        Every ack comes back through HAProxy, both backends serve, and the
        health check marks a stopped backend down while the other serves on.
        """
        servers = []
        for _ in range(2):
            server = TwistdServer(self.workdir())
            self.addCleanup(server.kill)
            servers.append(server)
        front, stats, logPath = self.startHAProxy(servers)
        for name in ("tcpdemo1", "tcpdemo2"):
            waitFor(
                lambda name=name: self.serverState(stats, name) == "UP",
                timeout=30,
                what=f"HAProxy to check {name} up",
            )
        # The health check is a Conn/ConnAck: a connection, never a request.
        for server in servers:
            waitFor(
                lambda server=server: metric(server.scrape(), "tcpdemo_connections_total") > 0,
                what="a health check",
            )
            self.assertEqual(metric(server.scrape(), "tcpdemo_req_recv_total"), 0)

        count = 20000
        status, report = runLoadClient(front, "--connections", "20", "--count", str(count))
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])  # type: ignore[index]
        self.assertEqual(report["acked"], count)
        received = [metric(s.scrape(), "tcpdemo_req_recv_total") for s in servers]
        self.assertEqual(sum(received), count)
        for number, value in enumerate(received, 1):
            self.assertGreater(value, 0, f"backend tcpdemo{number} served nothing")
        samples = self.haproxyMetrics(stats)
        self.assertGreaterEqual(
            metric(samples, 'haproxy_frontend_connections_total{proxy="tcpdemo"}'), 20
        )

        # One backend goes away: HAProxy's check marks it down, and the
        # other takes every connection.
        self.assertEqual(servers[1].terminate(), 0)
        waitFor(
            lambda: self.serverState(stats, "tcpdemo2") == "DOWN",
            timeout=30,
            what="HAProxy to check tcpdemo2 down",
        )
        status, report = runLoadClient(front, "--connections", "10", "--count", "5000")
        self.assertEqual((status, report["acked"]), (0, 5000), report["errors"])
        self.assertEqual(metric(servers[0].scrape(), "tcpdemo_req_recv_total"), received[0] + 5000)
        with open(logPath, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertRegex(log, r"tcpdemo2 is DOWN")
