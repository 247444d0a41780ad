"""
The metrics and debug listeners of a real C{twistd -n tcpdemo} under
hostile HTTP clients: request bodies refused before they are read, scrapes
answered from one rendering per interval, and a bound on the scrapes that
wait at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.scrape import MAX_WAITING, SCRAPE_INTERVAL

from .support import LOOPBACK, TwistdServer, ackFrame, fdTargets, recvExactly, submitFrame

#: The announced body: 200 MiB.
BIG = 200 * 2**20

#: N threads fetching URL in a loop for SECONDS, one connection per scrape;
#: prints the scrapes answered, refused (503) and failed, and how many
#: different bodies were served.
SCRAPERS = """
import json, sys, threading, time, urllib.error, urllib.request
url, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tally = {"ok": 0, "refused": 0, "failed": 0}
bodies = set()
lock = threading.Lock()
end = time.monotonic() + seconds
def scrape():
    while time.monotonic() < end:
        body = None
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
            kind = "ok"
        except urllib.error.HTTPError as e:
            kind = "refused" if e.code == 503 else "failed"
        except OSError:
            kind = "failed"
        with lock:
            tally[kind] += 1
            if body is not None:
                bodies.add(body)
threads = [threading.Thread(target=scrape) for _ in range(count)]
for t in threads: t.start()
for t in threads: t.join()
tally["bodies"] = len(bodies)
print(json.dumps(tally))
"""


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openFiles(pid: int) -> list[str]:
    """
    What the process's descriptors point to, but sockets, pipes and the like.
    """
    return [target for target in fdTargets(pid) if target.startswith("/")]


def readResponse(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """
    Everything until the server closes, or until C{timeout}.
    """
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


class ScrapeTests(SynchronousTestCase):
    def startServer(self, *args: str) -> TwistdServer:
        workdir = os.path.abspath(str(self.mktemp()))
        os.makedirs(workdir)
        server = TwistdServer(workdir, args)
        self.addCleanup(server.kill)
        return server

    def assertBodyRefused(self, server: TwistdServer, port: int, path: str) -> None:
        """
        A POST announcing a 200 MiB body gets 413 before a byte of the body
        is sent; pushing the body then is cut off; neither the server's RSS
        nor its open files grow; a chunked body is refused the same way.
        """
        baseline = server.rssBytes()
        files = openFiles(server.pid)
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        response = readResponse(sock)
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertTrue(response.endswith(b"not accepted on this listener\n"), response)
        self.assertNotIn(b"100 Continue", response)
        # The body now: the server reads none of it, so the kernel's buffers
        # fill and the connection is cut long before 200 MiB.
        sent = 0
        chunk = b"x" * 65536
        sock.settimeout(2)
        try:
            while sent < BIG:
                sent += sock.send(chunk)
        except OSError:
            pass
        self.assertLess(sent, 16 * 2**20)
        sock.close()

        chunked = socket.create_connection((LOOPBACK, port), timeout=10)
        self.addCleanup(chunked.close)
        chunked.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "10000\r\n".encode()
            + b"y" * 65536
        )
        self.assertTrue(readResponse(chunked).startswith(b"HTTP/1.1 413 "))
        self.assertLess(server.rssBytes() - baseline, 8 * 2**20)
        self.assertEqual(openFiles(server.pid), files)
        # A GET with no body is still served.
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as answer:
            self.assertEqual(answer.status, 200)

    def test_metricsRefusesBodies(self) -> None:
        server = self.startServer()
        assert server.metricsPort is not None
        self.assertBodyRefused(server, server.metricsPort, "/metrics")

    def test_debugRefusesBodies(self) -> None:
        server = self.startServer("--debug", f"tcp:0:interface={LOOPBACK}")
        port = server.listeningPort(r"tcpdemo debug \(/debug/\) listening on")
        self.assertBodyRefused(server, port, "/debug/")

    def scrapers(self, server: TwistdServer, seconds: float) -> subprocess.Popen[bytes]:
        """
        L{SCRAPERS}: 50 threads of another process scraping C{server} in a
        loop for C{seconds}.
        """
        scrapers = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SCRAPERS,
                f"http://{LOOPBACK}:{server.metricsPort}/metrics",
                "50",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(scrapers.kill)
        return scrapers

    def test_concurrentScrapesShareRenderings(self) -> None:
        """
        50 scrapers in a loop for 3 s (threads of another process): every
        scrape is answered, from at most one rendering per interval (the
        bodies served are few), the server's CPU stays well under a core,
        and the protocol's round trips stay quick.  The figures are never
        older than the scrape.
        """
        server = self.startServer()
        seconds = 3.0
        # Warm-up, not measured: PyPy's JIT compiles the HTTP and scrape
        # paths during the first seconds of scrapes, which cost it twice the
        # CPU then (measured on PyPy 3.9, 3 s windows one after another:
        # 1.5 ms of server CPU a scrape in the first two, 0.7-0.9 from the
        # fourth; CPython 0.35-0.6 from the first); cold, the CI run of
        # 2026-11-30 measured 54 % of a core.  The bound is on the server as
        # it runs for hours: warm.
        warm = self.scrapers(server, 3.0)
        warm.communicate(timeout=30)
        self.assertEqual(warm.returncode, 0)
        client = server.connect()
        cpu = cpuSeconds(server.pid)
        began = time.monotonic()
        scrapers = self.scrapers(server, seconds)
        trips = []
        number = 0
        while scrapers.poll() is None:
            number += 1
            sent = time.monotonic()
            client.sendall(submitFrame(number))
            self.assertEqual(recvExactly(client, 14), ackFrame(number))
            trips.append(time.monotonic() - sent)
            time.sleep(0.01)
        out, _ = scrapers.communicate(timeout=30)
        elapsed = time.monotonic() - began
        used = (cpuSeconds(server.pid) - cpu) / elapsed
        tally = json.loads(out)
        self.assertEqual(tally["failed"], 0, tally)
        self.assertGreater(tally["ok"], 50, tally)
        # One rendering per interval at most (+2 for the edges of the run).
        self.assertLessEqual(tally["bodies"], seconds / SCRAPE_INTERVAL + 2, tally)
        perScrape = (used * elapsed) / max(1, tally["ok"])
        self.assertLess(
            used, 0.5, f"server CPU {used:.0%} of a core, {perScrape * 1000:.2f} ms a scrape"
        )
        trips.sort()
        median = trips[len(trips) // 2]
        self.assertLess(median, 0.05, f"Submit round trips: median {median:.3f}s")
        # Fresh: the Submits answered before a scrape are in it.
        samples = server.scrape()
        self.assertEqual(samples["tcpdemo_req_recv_total"], number)

    def test_tooManyWaitingScrapes(self) -> None:
        """
        More scrapes at once than MAX_WAITING: the excess gets 503 with
        Retry-After at once, the rest the metrics.
        """
        server = self.startServer()
        assert server.metricsPort is not None
        count = MAX_WAITING + 36
        socks = [
            socket.create_connection((LOOPBACK, server.metricsPort), timeout=10)
            for _ in range(count)
        ]
        for sock in socks:
            self.addCleanup(sock.close)
        # One scrape first, so that the burst waits for the next interval.
        server.scrape()
        for sock in socks:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [readResponse(sock) for sock in socks]
        ok = [a for a in answers if a.startswith(b"HTTP/1.1 200 ")]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        self.assertEqual(len(ok) + len(refused), count)
        self.assertGreater(len(refused), 0)
        self.assertGreaterEqual(len(ok), MAX_WAITING)
        self.assertIn(b"retry-after: 1", refused[0].lower())
        self.assertIn(b"tcpdemo_req_recv_total", ok[0])
