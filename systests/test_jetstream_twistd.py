"""
C{twistd -n tcpdemo --handler jetstream:...} end to end, against real
nats-servers run from deploy/nats/nats-N.conf: a node SIGKILLed under load,
the whole cluster down then up, and the scale-out recipe (HAProxy in front
of two instances writing to one cluster).  Every Submit acked with result 0
must be read back by C{tcpdemo-dump}.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.frame import frame
from tcpdemo.packet import Submit, encode
from tests.support import (
    LOOPBACK,
    REPO_ROOT,
    TwistdServer,
    freePort,
    metric,
    recvExactly,
    runLoadClient,
    startHaproxy,
    subprocessEnv,
    twistdCommand,
    waitFor,
)
from tests.test_haproxy import loopbackConfig

from .natsservers import NatsCluster

#: A SubmitAck frame: length (4), command (1), id (8), result (1).
ACK_SIZE = 14


def dumpStream(urls: str, stream: str) -> list[dict[str, object]]:
    """
    C{tcpdemo-dump jetstream:URLS?stream=NAME}, as a user runs it.
    """
    spec = f"jetstream:{urls}?stream={stream}"
    script = os.path.join(os.path.dirname(sys.executable), "tcpdemo-dump")
    if os.path.exists(script):
        command = [sys.executable, script, spec]  # installed, as in tox
    else:
        command = [sys.executable, "-c", "from tcpdemo.dump import main; main()", spec]
    result = subprocess.run(
        command, env=subprocessEnv(), capture_output=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise AssertionError(
            f"tcpdemo-dump exited {result.returncode}:\n{result.stderr.decode(errors='replace')}"
        )
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


def deployedInstanceArgs(urls: str) -> list[str]:
    """
    The tcpdemo options of deploy/tcpdemo-jetstream.service's ExecStart,
    less --port and --metrics (the test's own), with the cluster's URLs
    in place of the unit's.
    """
    with open(os.path.join(REPO_ROOT, "deploy", "tcpdemo-jetstream.service")) as f:
        text = f.read().replace("\\\n", " ")
    (execStart,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(execStart.partition("=")[2])
    options = words[words.index("tcpdemo") + 1 :]
    args: list[str] = []
    while options:
        option, value = options.pop(0), options.pop(0)
        if option in ("--port", "--metrics"):
            continue
        if option == "--handler":
            deployed = "jetstream:nats://10.0.1.1:4222,nats://10.0.1.2:4222,nats://10.0.1.3:4222"
            if value != deployed:
                raise AssertionError(f"the unit's --handler changed: {value}")
            value = f"jetstream:{urls}"
        args += [option, value]
    return args


class Pipeliner:
    """
    Connections that pipeline Submits with ids unique to the test, a window
    at a time, and record every ack's result by id.
    """

    def __init__(self, port: int, connections: int, window: int = 200) -> None:
        self.port = port
        self.window = window
        self.results: dict[bytes, int] = {}
        self.problems: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(connections)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self, timeout: float = 90.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError("a pipelining connection never finished")
        if self.problems:
            raise AssertionError("; ".join(self.problems))

    def acked(self, result: int = 0) -> set[bytes]:
        with self._lock:
            return {i for i, r in self.results.items() if r == result}

    def _run(self, connection: int) -> None:
        counter = 0
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=60) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while not self.stop.is_set():
                    ids = []
                    for _ in range(self.window):
                        counter += 1
                        ids.append(b"%c%07d" % (ord("A") + connection, counter))
                    sock.sendall(b"".join(frame(encode(Submit(i, b"p" + i))) for i in ids))
                    acks = recvExactly(sock, ACK_SIZE * len(ids))
                    got = {}
                    for n, expected in enumerate(ids):
                        ack = acks[n * ACK_SIZE : (n + 1) * ACK_SIZE]
                        if ack[5:13] != expected:
                            raise AssertionError(f"ack for {ack[5:13]!r}, owed {expected!r}")
                        got[expected] = ack[13]
                    with self._lock:
                        self.results.update(got)
        except Exception as e:
            self.problems.append(f"connection {connection}: {e!r}")


class JetStreamTwistdTests(SynchronousTestCase):
    def workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def cluster(self) -> NatsCluster:
        cluster = NatsCluster(self.workdir(), 3, deployed=True)
        self.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    def server(self, urls: str, stream: str, *extra: str) -> TwistdServer:
        server = TwistdServer(
            self.workdir(), ["--handler", f"jetstream:{urls}?stream={stream}", *extra]
        )
        self.addCleanup(server.kill)
        return server

    def test_nodeKilledUnderLoad(self) -> None:
        """
        3 replicas: SIGKILL the stream's leader while 4 connections pipeline.
        Serving goes on, every Submit is acked 0, and every one is in the
        stream (read with tcpdemo-dump) once.
        """
        cluster = self.cluster()
        server = self.server(cluster.urls, "KILL")
        self.assertIn("3 replicas", server.waitForLog(r"jetstream: created stream KILL"))
        leader = cluster.streamLeader("KILL")

        load = Pipeliner(server.port, connections=4)
        load.start()
        waitFor(lambda: len(load.results) > 2000, timeout=30, what="acks before the kill")
        leader.kill()
        killedAt = len(load.results)
        waitFor(lambda: len(load.results) > killedAt + 5000, timeout=60, what="acks after the kill")
        load.finish()

        results = set(load.results.values())
        self.assertEqual(results, {0}, "quorum kept: every Submit should be stored")
        rows = dumpStream(",".join(s.url for s in cluster.running()), "KILL")
        stored = [bytes.fromhex(str(r["id"])) for r in rows]
        self.assertEqual(len(stored), len(set(stored)), "a Submit stored twice")
        missing = load.acked(0) - set(stored)
        self.assertEqual(missing, set(), f"{len(missing)} acked Submits not in the stream")
        for row in rows[:5]:
            self.assertEqual(row["payload"], (b"p" + bytes.fromhex(str(row["id"]))).hex())
        self.assertEqual(metric(server.scrape(), 'tcpdemo_acks_total{result="0"}'), len(stored))
        self.assertEqual(server.terminate(), 0)

    def test_clusterDownThenUp(self) -> None:
        """
        With every node down, Submits wait --handler-timeout and get result
        2 while the server keeps serving; when the nodes come back, the
        same server stores and acks 0 again by itself.
        """
        cluster = self.cluster()
        server = self.server(cluster.urls, "DOWN", "--handler-timeout", "3")
        server.waitForLog(r"jetstream: created stream DOWN")
        before = Pipeliner(server.port, connections=1, window=50)
        before.start()
        waitFor(lambda: len(before.results) >= 500, timeout=30, what="acks while up")
        before.finish()

        for node in cluster.servers:
            node.kill()
        started = time.monotonic()
        with server.connect() as sock:
            sock.sendall(b"".join(frame(encode(Submit(b"D%07d" % n, b"down"))) for n in range(20)))
            # The server keeps serving meanwhile: metrics, and a Conn/ConnAck.
            with server.connect() as other:
                other.sendall(b"\x00\x00\x00\x05\x01")
                self.assertEqual(recvExactly(other, 6), b"\x00\x00\x00\x06\x80\x00")
            self.assertGreaterEqual(metric(server.scrape(), "tcpdemo_handler_pending"), 1)
            acks = recvExactly(sock, ACK_SIZE * 20)
        waited = time.monotonic() - started
        self.assertEqual({acks[n * ACK_SIZE + 13] for n in range(20)}, {2})
        self.assertGreaterEqual(waited, 2.5)
        self.assertGreaterEqual(metric(server.scrape(), 'tcpdemo_acks_total{result="2"}'), 20)

        for node in cluster.servers:
            node.start()
        cluster.waitHealthy()
        # No restart of tcpdemo: it reconnects and stores again.
        deadline = time.monotonic() + 60
        storedAgain: set[bytes] = set()
        number = 0
        while not storedAgain and time.monotonic() < deadline:
            with server.connect() as sock:
                number += 1
                submitId = b"U%07d" % number
                sock.sendall(frame(encode(Submit(submitId, b"up"))))
                if recvExactly(sock, ACK_SIZE)[13] == 0:
                    storedAgain.add(submitId)
        self.assertTrue(storedAgain, "never acked 0 after the cluster came back")

        stored = {bytes.fromhex(str(r["id"])) for r in dumpStream(cluster.urls, "DOWN")}
        missing = (before.acked(0) | storedAgain) - stored
        self.assertEqual(missing, set(), f"{len(missing)} acked Submits not in the stream")
        self.assertEqual(server.terminate(), 0)

    def test_noClusterNoStart(self) -> None:
        """
        With no NATS server answering, twistd does not listen: it exits
        within the handler's timeout, saying why in one line.
        """
        port = freePort()
        started = time.monotonic()
        result = subprocess.run(
            twistdCommand()
            + ["-n", "--pidfile=", "--logfile", "-", "tcpdemo", "--metrics", "none"]
            + ["--port", f"tcp:{port}:interface={LOOPBACK}"]
            + ["--handler", f"jetstream:nats://{LOOPBACK}:{freePort()}?timeout=2"],
            cwd=self.workdir(),
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertLess(time.monotonic() - started, 30)
        self.assertIn("no NATS server answered within 2 s", output)
        self.assertNotIn("listening on", output)

    def test_scaleOutRecipe(self) -> None:
        """
        deploy/: HAProxy (deploy/haproxy.cfg) in front of two tcpdemo
        instances (deploy/tcpdemo-jetstream.service's options) writing to
        one 3-node cluster (deploy/nats); the project's load client through
        HAProxy; every acked Submit is in the stream.
        """
        cluster = self.cluster()
        # The instances as deploy/tcpdemo-jetstream.service runs them.
        args = deployedInstanceArgs(cluster.urls)
        self.assertIn("--handler-timeout", args)
        servers = []
        for _ in range(2):
            server = TwistdServer(self.workdir(), args)
            self.addCleanup(server.kill)
            servers.append(server)
        for server in servers:
            server.waitForLog(r"jetstream: (created|using) stream TCPDEMO")
        front = self.startHAProxy([s.port for s in servers])

        count, connections = 20000, 10
        status, report = runLoadClient(
            front, "--connections", str(connections), "--count", str(count), timeout=180
        )
        self.assertEqual((status, report["errors"]["total"]), (0, 0), report["errors"])  # type: ignore[index]
        self.assertEqual(report["acked"], count)
        for number, server in enumerate(servers, 1):
            self.assertGreater(
                metric(server.scrape(), 'tcpdemo_acks_total{result="0"}'),
                0,
                f"instance {number} stored nothing",
            )

        # The client's ids count from 1 on each connection, and every one
        # was acked 0 in order: each connection (a peer, here HAProxy's
        # side of it) must hold exactly ids 1..n, and all of them together
        # the count.
        rows = dumpStream(cluster.urls, "TCPDEMO")
        byPeer: dict[str, list[int]] = {}
        for row in rows:
            byPeer.setdefault(str(row["peer"]), []).append(int(bytes.fromhex(str(row["id"]))))
        self.assertEqual(sum(len(ids) for ids in byPeer.values()), count)
        for peer, ids in byPeer.items():
            self.assertEqual(sorted(ids), list(range(1, len(ids) + 1)), peer)

    def startHAProxy(self, ports: list[int]) -> int:
        front, stats = freePort(), freePort()
        with open(os.path.join(REPO_ROOT, "deploy", "haproxy.cfg")) as f:
            config = loopbackConfig(f.read(), front, stats, ports)
        startHaproxy(self, self.workdir(), config)

        def bothUp() -> bool:
            import urllib.request

            try:
                url = f"http://{LOOPBACK}:{stats}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                return False
            return all(
                f'haproxy_server_status{{proxy="tcpdemo",server="tcpdemo{n}",state="UP"}} 1' in text
                for n in (1, 2)
            )

        waitFor(bothUp, timeout=30, what="HAProxy to check both instances up")
        return front
