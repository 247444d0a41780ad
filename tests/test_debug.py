"""
The C{--debug} endpoints (L{tcpdemo.debug}), over real HTTP on loopback:
CPU profiles of the real server under load from another process, allocation
traces, argument checking, one measurement at a time, the loopback-only
rule, and C{twistd tcpdemo --debug} as a subprocess.
"""

from __future__ import annotations

import io
import os
import platform
import pstats
import re
import shutil
import socket
import sys
import tempfile
from typing import Any, NamedTuple, cast
from xml.etree import ElementTree

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tcpdemo import profilegraph
from tcpdemo.debug import (
    ALLOCATION_ROWS,
    DEFAULT_SECONDS,
    MAX_SECONDS,
    PROFILE_ROWS,
    debugSite,
    requireLoopback,
)
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory
from tcpdemo.tap import Options

from .support import LOOPBACK, freePort, sleep, subprocessEnv, twistdCommand, waitUntil

PYPY = platform.python_implementation() == "PyPy"
#: The global reactor, typed loosely: it provides many interfaces at once.
reactor: Any = _reactor

# Helpers


class Response(NamedTuple):
    code: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class TrackingFactory(WrappingFactory):
    """
    Knows the server side of every connection, to close them all and wait
    for that in cleanup: a trial test must leave no socket open.
    """

    noisy = False

    def __init__(self, wrappedFactory: Any) -> None:
        super().__init__(wrappedFactory)
        self._allClosed: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._allClosed = self._allClosed, []
            for d in waiting:
                d.callback(None)

    def closeAll(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._allClosed.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


class Child(ProcessProtocol):
    """
    A child process: its output (stdout and stderr together), a way to wait
    for some of it, and a Deferred that fires with its exit code.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.exitCode: int | None = None
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pair in list(self._waiting):
            if pair[0] in self.output:
                self._waiting.remove(pair)
                pair[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, (ProcessDone, ProcessTerminated)):
            self.exitCode = value.exitCode
        waiting, self._waiting = self._waiting, []
        for text, d in waiting:
            d.errback(AssertionError(f"exited before printing {text!r}:\n{self.text()}"))
        self.ended.callback(self.exitCode)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def waitFor(self, text: bytes, timeout: float = 30.0) -> defer.Deferred[None]:
        if text in self.output:
            return defer.succeed(None)
        if self.ended.called:
            return defer.fail(AssertionError(f"exited before printing {text!r}:\n{self.text()}"))
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((text, d))

        def tooLong(result: Any, timeout: float) -> None:
            raise AssertionError(f"no {text!r} after {timeout}s; output:\n{self.text()}")

        d.addTimeout(timeout, reactor, onTimeoutCancel=tooLong)
        return d

    def kill(self) -> defer.Deferred[int | None]:
        """
        For cleanup: end the process if it still runs, and wait for that.
        """
        if not self.ended.called:
            self.signal("KILL")
        return self.ended

    def signal(self, name: str) -> None:
        transport: Any = self.transport
        transport.signalProcess(name)

    def closeStdin(self) -> None:
        transport: Any = self.transport
        transport.closeStdin()


class HTTPTestCase(TestCase):
    """
    A debug site on a loopback port, and an HTTP client for it.
    """

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor)
        self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(self.pool.closeCachedConnections)

    def listenSite(self) -> str:
        """
        Serve L{debugSite} on an ephemeral loopback port; return its base URL.
        """
        return self.listen(debugSite(reactor))

    def listen(self, factory: Any) -> str:
        tracked = TrackingFactory(factory)
        port = reactor.listenTCP(0, tracked, interface=LOOPBACK)
        # Cleanups run last-added first: client, then server side, then port.
        self.addCleanup(port.stopListening)
        self.addCleanup(tracked.closeAll)
        self.addCleanup(self.pool.closeCachedConnections)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://{LOOPBACK}:{address.port}"

    async def _get(self, url: str) -> Response:
        response: Any = await self.agent.request(b"GET", url.encode("ascii"))
        body = await readBody(response)
        return Response(response.code, response.headers, body)

    def get(self, url: str, timeout: float = 30.0) -> defer.Deferred[Response]:
        """
        GET C{url}; fail if the whole response takes over C{timeout}.
        """
        d = defer.ensureDeferred(self._get(url))
        d.addTimeout(timeout, reactor)
        return d

    async def waitForIndex(self, base: str, pattern: str, timeout: float = 10.0) -> str:
        """
        Poll C{/debug/} until its text matches C{pattern}; return the text.
        """
        deadline = reactor.seconds() + timeout
        while True:
            text = (await self.get(base + "/debug/")).text
            if re.search(pattern, text):
                return text
            if reactor.seconds() > deadline:
                raise AssertionError(f"/debug/ never matched {pattern!r}:\n{text}")
            await sleep(0.02)

    def assertOneLine(self, response: Response, code: int, *fragments: str) -> None:
        """
        A plain-text, one-line error response with C{code}.
        """
        self.assertEqual(response.code, code, response.body)
        self.assertTrue((response.header(b"content-type") or b"").startswith(b"text/plain"))
        text = response.text
        self.assertTrue(text.endswith("\n"), text)
        self.assertEqual(text.count("\n"), 1, text)
        for fragment in fragments:
            self.assertIn(fragment, text)


# Load: a separate process, so that none of it runs in the profiled thread.

LOAD_SCRIPT = r"""
import socket, struct, sys, threading, time

port, seconds, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
CONNECTIONS, BATCH, ACK = 4, 200, 14
stop = threading.Event()


def watchStdin():
    sys.stdin.read()
    stop.set()


threading.Thread(target=watchStdin, daemon=True).start()
frames = b"".join(
    struct.pack(">i", 4 + 1 + 8 + 20) + b"\x02" + b"%08d" % i + b"profile-load-payload"
    for i in range(1, BATCH + 1)
)
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CONNECTIONS)]
deadline = time.monotonic() + seconds
acks = 0
while not stop.is_set() and time.monotonic() < deadline and acks < limit:
    for s in socks:
        s.sendall(frames)
    for s in socks:
        want = BATCH * ACK
        while want:
            chunk = s.recv(want)
            if not chunk:
                sys.exit("the server closed a connection")
            want -= len(chunk)
        acks += BATCH
for s in socks:
    s.close()
print("acks", acks)
"""

#: A function of the server's own, in a profile table row.
OURS = re.compile(r"tcpdemo[/\\](protocol|frame)\.py:\d+\(\w+\)")
#: The server protocol's dataReceived, which every read goes through.
DATA_RECEIVED = re.compile(r"tcpdemo[/\\]protocol\.py:\d+\(dataReceived\)")


class ProfileUnderLoadTests(HTTPTestCase):
    """
    Profiles of the real server while another process loads it.
    """

    async def test_profileNamesTheHotFunctions(self) -> None:
        """
        A profile taken while Submits pour in names the server's own hot
        functions, in the text table and in the pstats file; the server
        keeps acking while it is profiled.
        """
        metrics = ServerMetrics.create()
        server = TcpDemoServerFactory(metrics=metrics, reactor=reactor)
        serverPort = reactor.listenTCP(0, server, interface=LOOPBACK)
        self.addCleanup(server.drainAll)
        self.addCleanup(serverPort.stopListening)
        base = self.listenSite()

        def acked() -> float:
            return metrics.registry.get_sample_value("tcpdemo_rsp_send_total") or 0.0

        load = Child()
        # At most 30 s and 50 million acks; closing its stdin stops it sooner.
        args = [sys.executable, "-c", LOAD_SCRIPT, str(serverPort.getHost().port), "30", "50000000"]
        reactor.spawnProcess(load, sys.executable, args, env=subprocessEnv())
        self.addCleanup(load.kill)
        await waitUntil(
            lambda: acked() >= 10000 or load.ended.called, "the load to start", timeout=15
        )
        self.assertFalse(load.ended.called, load.text())

        before = acked()
        table = await self.get(base + "/debug/profile?seconds=1&format=text")
        during = acked() - before
        self.assertEqual(table.code, 200, table.body)
        self.assertEqual(table.header(b"content-type"), b"text/plain; charset=utf-8")
        text = table.text
        self.assertIn("sorted by own time (tottime)", text)
        self.assertIn("tottime", text)
        # The hot spots' names change as the server is optimised: any of its
        # functions among those with the most own time will do here.
        self.assertRegex(text, OURS)
        rows = [line for line in text.splitlines() if re.search(r"\d+\.\d{3} .*\(.*\)$", line)]
        self.assertLessEqual(len(rows), PROFILE_ROWS)
        self.assertGreater(during, 1000, "the server stopped acking while profiled")

        binary = await self.get(base + "/debug/profile?seconds=1")
        self.assertEqual(binary.code, 200, binary.body)
        self.assertEqual(binary.header(b"content-type"), b"application/octet-stream")
        self.assertEqual(
            binary.header(b"content-disposition"), b"attachment; filename=tcpdemo.prof"
        )
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(binary.body)
        out = io.StringIO()
        pstats.Stats(path, stream=out).sort_stats("tottime").print_stats()
        # Every function is in the file, the server's own among them.
        self.assertRegex(out.getvalue(), DATA_RECEIVED)
        self.assertRegex(out.getvalue(), r"\d{4,} function calls")

        # The call graph as a picture, as pprof draws it (gprof2dot and
        # Graphviz's dot, both required by the tests: a missing one fails).
        picture = await self.get(base + "/debug/profile?seconds=1&format=svg")
        self.assertEqual(picture.code, 200, picture.body)
        self.assertEqual(picture.header(b"content-type"), b"image/svg+xml")
        svg = ElementTree.fromstring(picture.body)
        self.assertEqual(svg.tag, "{http://www.w3.org/2000/svg}svg")
        texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        shown = " ".join(texts)
        self.assertIn("tcpdemo CPU profile: 1s of the reactor thread", shown)
        # A box per hot function, with its total share and its call count.
        self.assertIn("protocol:", shown)
        self.assertTrue(any(re.fullmatch(r"protocol:\d+:dataReceived", t) for t in texts), texts)
        self.assertTrue(any(re.fullmatch(r"\d+\.\d\d%", t) for t in texts), texts)
        self.assertTrue(any(re.fullmatch(r"\d+×", t) for t in texts), texts)
        # Arrows between the boxes.
        edges = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "edge"]
        self.assertGreater(len(edges), 3)

        graph = await self.get(base + "/debug/profile?seconds=0.5&format=dot")
        self.assertEqual(graph.code, 200, graph.body)
        self.assertEqual(graph.header(b"content-type"), b"text/vnd.graphviz; charset=utf-8")
        self.assertTrue(graph.text.startswith("digraph {"), graph.text[:200])
        self.assertRegex(graph.text, r'label="protocol:\d+:dataReceived\\n')

        load.closeStdin()
        self.assertEqual(await load.ended, 0, load.text())
        self.assertRegex(load.text(), r"acks [1-9]\d*")


class DebugSiteTests(HTTPTestCase):
    async def test_index(self) -> None:
        """
        C{/debug/} says what the endpoints are and how to use them; C{/debug}
        redirects there and C{/} shows it too.
        """
        base = self.listenSite()
        index = await self.get(base + "/debug/")
        self.assertEqual(index.code, 200)
        self.assertEqual(index.header(b"content-type"), b"text/plain; charset=utf-8")
        for fragment in (
            "/debug/profile?seconds=N",
            "&format=text",
            "/debug/allocations?seconds=N",
            f"curl -o cpu.prof '{base}/debug/profile?seconds=30'",
            f"curl '{base}/debug/profile?seconds=10&format=text'",
            "python -m pstats cpu.prof",
            "snakeviz cpu.prof",
            "&format=svg",
            f"curl -o cpu.svg '{base}/debug/profile?seconds=30&format=svg'",
            "&format=dot",
            "now idle",
        ):
            self.assertIn(fragment, index.text)
        redirect = await self.get(base + "/debug")
        self.assertEqual(redirect.code, 302)
        self.assertEqual(redirect.header(b"location"), b"/debug/")
        self.assertEqual((await self.get(base + "/")).body, index.body)
        self.assertEqual((await self.get(base + "/debug/nothing")).code, 404)

    async def test_badArguments(self) -> None:
        """
        A C{seconds} that is not a number, not positive or above the maximum,
        or an unknown C{format}, gets 400 and a one-line reason.
        """
        base = self.listenSite()
        for endpoint in ("profile", "allocations"):
            for value in ("abc", "", "0", "-1", "100000", str(MAX_SECONDS + 1), "nan", "inf"):
                response = await self.get(f"{base}/debug/{endpoint}?seconds={value}")
                self.assertOneLine(response, 400, "seconds=")
        response = await self.get(base + "/debug/profile?seconds=abc")
        self.assertOneLine(response, 400, "not a number")
        response = await self.get(base + "/debug/profile?seconds=0")
        self.assertOneLine(response, 400, f"0 < seconds <= {MAX_SECONDS:g}")
        response = await self.get(base + "/debug/profile?seconds=1&format=png")
        self.assertOneLine(response, 400, "format=", "pstats, text, svg, dot")
        self.assertRegex(
            (await self.get(base + "/debug/")).text, "now idle", "a 400 must not hold the slot"
        )

    async def test_shortProfile(self) -> None:
        """
        Fractions of a second are allowed; the table is sorted by own time.
        """
        base = self.listenSite()
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        response = await self.get(base + "/debug/profile?seconds=0.2&format=text")
        self.assertEqual(response.code, 200, response.body)
        self.assertIn("tcpdemo CPU profile: 0.2s", response.text)
        self.assertIn("Ordered by: internal time", response.text)
        await self.get(base + "/debug/")
        # One line per measurement, and no access log.
        lines = [formatEvent(event) for event in events]
        about = [line for line in lines if "/debug/" in line or "profile" in line]
        self.assertEqual(len(about), 1, lines)
        self.assertRegex(about[0], r"^took a 0\.2s CPU profile \(text\) for 127\.0\.0\.1:\d+$")

    async def test_oneAtATimeAndKeepsServing(self) -> None:
        """
        While a profile runs, the reactor answers other requests, and another
        profile or allocation trace gets 409; afterwards the slot is free.
        """
        base = self.listenSite()
        first = self.get(base + "/debug/profile?seconds=2&format=text")
        index = await self.waitForIndex(base, r"now busy: a 2s CPU profile is running")
        self.assertIn("s left", index)
        self.assertFalse(first.called, "the index answered only after the profile")

        second = await self.get(base + "/debug/profile?seconds=1")
        self.assertOneLine(second, 409, "busy: a 2s CPU profile is running")
        allocations = await self.get(base + "/debug/allocations?seconds=1")
        if PYPY:
            self.assertEqual(allocations.code, 501)
        else:
            self.assertOneLine(allocations, 409, "busy: a 2s CPU profile is running")
        self.assertFalse(first.called)

        self.assertEqual((await first).code, 200)
        again = await self.get(base + "/debug/profile?seconds=0.1&format=text")
        self.assertEqual(again.code, 200, again.body)

    async def test_oneAtATimePerProcess(self) -> None:
        """
        The slot is the process's, not the site's: cProfile and tracemalloc
        are process-wide.
        """
        one, two = self.listenSite(), self.listenSite()
        first = self.get(one + "/debug/profile?seconds=1&format=text")
        await self.waitForIndex(two, "now busy: a 1s CPU profile is running")
        self.assertOneLine(await self.get(two + "/debug/profile?seconds=1"), 409, "busy")
        self.assertEqual((await first).code, 200)

    async def test_headMeasuresNothing(self) -> None:
        """
        HEAD of a measurement is refused rather than taking one.
        """
        base = self.listenSite()
        response: Any = await self.agent.request(b"HEAD", f"{base}/debug/profile".encode())
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET"])
        await readBody(response)
        self.assertIn("now idle", (await self.get(base + "/debug/")).text)

    async def test_pictureWithoutGraphviz(self) -> None:
        """
        Without Graphviz's dot, format=svg is refused at once with 501 and
        what to install, holding no slot; format=dot (the graph's source)
        still works.
        """
        base = self.listen(debugSite(reactor, dot="tcpdemo-test-no-such-dot"))
        response = await self.get(base + "/debug/profile?seconds=30&format=svg")
        self.assertOneLine(
            response,
            501,
            "format=svg",
            "tcpdemo-test-no-such-dot",
            "apt-get install graphviz",
            "format=dot",
        )
        self.assertIn("now idle", (await self.get(base + "/debug/")).text)
        source = await self.get(base + "/debug/profile?seconds=0.1&format=dot")
        self.assertEqual(source.code, 200, source.body)
        self.assertTrue(source.text.startswith("digraph {"))

    async def test_pictureWithoutTheExtra(self) -> None:
        """
        Without gprof2dot (the C{profile} extra), format=svg and format=dot
        are refused at once with 501 and the pip command; the other formats
        still work.
        """
        self.patch(profilegraph, "_gprof2dot", lambda: None)
        base = self.listenSite()
        for form in ("svg", "dot"):
            response = await self.get(f"{base}/debug/profile?seconds=30&format={form}")
            self.assertOneLine(
                response, 501, f"format={form}", "gprof2dot", "pip install 'tcpdemo[profile]'"
            )
        self.assertIn("now idle", (await self.get(base + "/debug/")).text)
        table = await self.get(base + "/debug/profile?seconds=0.1&format=text")
        self.assertEqual(table.code, 200, table.body)

    async def test_pictureDotFails(self) -> None:
        """
        A dot that fails gives 500 with a one-line reason, and the slot is
        free again.
        """
        base = self.listen(debugSite(reactor, dot="false"))
        response = await self.get(base + "/debug/profile?seconds=0.1&format=svg")
        self.assertOneLine(response, 500, "a 0.1s CPU profile failed: dot failed")
        self.flushLoggedErrors(RuntimeError)
        self.assertIn("now idle", (await self.get(base + "/debug/")).text)

    async def test_unixSocket(self) -> None:
        """
        Over a unix socket, the index's examples use curl --unix-socket.
        """
        # Not under mktemp(): a socket path must stay short (108 bytes on Linux).
        directory = tempfile.mkdtemp(prefix="tcpdemo-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "debug.sock")
        tracked = TrackingFactory(debugSite(reactor))
        port = reactor.listenUNIX(path, tracked)
        self.addCleanup(port.stopListening)
        self.addCleanup(tracked.closeAll)

        @implementer(IAgentEndpointFactory)
        class ToSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, path)

        agent = Agent.usingEndpointFactory(reactor, ToSocket(), pool=self.pool)
        response = await agent.request(b"GET", b"http://localhost/debug/")
        text = (await readBody(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertIn(
            f"curl --unix-socket {path} -o cpu.prof 'http://localhost/debug/profile?seconds=30'",
            text,
        )

    async def test_clientGoesAway(self) -> None:
        """
        A client that disconnects mid-profile stops the profiler and frees
        the slot at once.  Without C{seconds} a profile lasts the default
        30 s: trial would fail this test if that timer were left pending.
        """
        base = self.listenSite()
        request = self.get(base + "/debug/profile")
        await self.waitForIndex(base, rf"now busy: a {DEFAULT_SECONDS:g}s CPU profile")
        request.cancel()
        await self.assertFailure(request, defer.CancelledError, ResponseNeverReceived)
        await self.waitForIndex(base, "now idle")
        # A profiler left enabled would make this one 409 (sys.getprofile()
        # on Python < 3.12, the monitoring tool slot from 3.12 on).
        after = await self.get(base + "/debug/profile?seconds=0.1&format=text")
        self.assertEqual(after.code, 200, after.body)

    async def test_allocations(self) -> None:
        """
        On CPython: the lines whose allocations grew during the window, with
        sizes, counts and source, plus the traced totals; tracing is stopped
        afterwards if the request started it.  On PyPy: 501.
        """
        base = self.listenSite()
        if PYPY:
            response = await self.get(base + "/debug/allocations?seconds=0.1")
            self.assertOneLine(response, 501, "tracemalloc", "PyPy")
            return
        import tracemalloc

        wasTracing = tracemalloc.is_tracing()
        kept: list[bytearray] = []
        self.addCleanup(kept.clear)
        request = self.get(base + "/debug/allocations?seconds=1")
        await self.waitForIndex(base, "now busy: a 1s allocation trace")
        kept.extend(bytearray(2000) for _ in range(1000))  # the allocation to find
        response = await request
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")
        text = response.text
        self.assertIn("growth over 1s by line (tracemalloc)", text)
        self.assertRegex(text, r"traced memory now [\d.]+ \w?i?B, peak [\d.]+ \w?i?B")
        found = re.search(
            r"\+([\d,]+)B +\+([\d,]+) +[\d,]+B  \S*test_debug\.py:\d+: kept\.extend\(", text
        )
        self.assertIsNotNone(found, text)
        assert found is not None
        self.assertGreaterEqual(int(found.group(1).replace(",", "")), 2000 * 1000)
        self.assertGreaterEqual(int(found.group(2).replace(",", "")), 1000)
        rows = [line for line in text.splitlines() if re.match(r" *[+-][\d,]+B ", line)]
        self.assertLessEqual(len(rows), ALLOCATION_ROWS)
        self.assertEqual(tracemalloc.is_tracing(), wasTracing)

    async def test_allocationsClientGoesAway(self) -> None:
        """
        A client that disconnects mid-trace stops tracing (if the request
        started it) and frees the slot.
        """
        if PYPY:
            raise SkipTest("no tracemalloc on PyPy")
        import tracemalloc

        wasTracing = tracemalloc.is_tracing()
        base = self.listenSite()
        request = self.get(base + "/debug/allocations")
        await self.waitForIndex(base, "now busy: a 30s allocation trace")
        request.cancel()
        await self.assertFailure(request, defer.CancelledError, ResponseNeverReceived)
        await self.waitForIndex(base, "now idle")
        self.assertEqual(tracemalloc.is_tracing(), wasTracing)


# The loopback-only rule

ACCEPTED = [
    "tcp:6060:interface=127.0.0.1",
    "tcp:0:interface=127.0.0.1",
    "tcp:6060:interface=127.1.2.3",
    "tcp:6060:127.0.0.1",
    "tcp:interface=127.0.0.1:port=6060",
    "tcp:6060:interface=127.0.0.1:backlog=10",
    r"tcp6:6060:interface=\:\:1",
    r"tcp:6060:interface=\:\:1",
    "ssl:6060:interface=127.0.0.1:privateKey=key.pem",
    "unix:/run/tcpdemo/debug.sock",
    "unix:/tmp/debug.sock:mode=600",
]

REFUSED = [
    "tcp:6060",
    "tcp:6060:interface=0.0.0.0",
    "tcp:6060:0.0.0.0",
    "tcp:6060:interface=10.1.2.3",
    "tcp:6060:interface=192.168.0.1",
    "tcp:6060:interface=localhost",
    "tcp6:6060",
    r"tcp6:6060:interface=\:\:",
    r"tcp6:6060:interface=fe80\:\:1",
    "ssl:6060",
    "ssl:6060:interface=0.0.0.0",
    "systemd:domain=INET:index=0",
    "onion:6060",
    "tcp",
    "tcp:interface=127.0.0.1",
    "tcp:6060:interface=127.0.0.1:colour=blue",
]


class RequireLoopbackTests(SynchronousTestCase):
    def test_accepts(self) -> None:
        """
        Loopback tcp, tcp6 and ssl endpoints, and unix sockets, are accepted.
        """
        for description in ACCEPTED:
            requireLoopback(description)

    def test_refuses(self) -> None:
        """
        Everything else is refused, with a message that says how to fix it.
        """
        for description in REFUSED:
            with self.assertRaises(ValueError, msg=description) as caught:
                requireLoopback(description)
            self.assertIn(description, str(caught.exception))

    def test_messagesSayHowToFix(self) -> None:
        """
        Refusals of reachable endpoints show a loopback one to use instead.
        """
        for description in ["tcp:6060", "tcp:6060:interface=10.1.2.3", "systemd:index=0"]:
            with self.assertRaises(ValueError) as caught:
                requireLoopback(description)
            self.assertIn("tcp:6060:interface=127.0.0.1", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            requireLoopback("tcp:6060")
        self.assertIn("all interfaces", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            requireLoopback("tcp:6060:interface=10.1.2.3")
        self.assertIn("10.1.2.3 is not a loopback address", str(caught.exception))

    def test_escapedColons(self) -> None:
        """
        Colons escaped as Twisted endpoint strings require are understood,
        not split on.
        """
        requireLoopback(r"tcp6:6060:interface=\:\:1")
        with self.assertRaises(ValueError) as caught:
            requireLoopback(r"tcp6:6060:interface=2001\:db8\:\:1")
        self.assertIn("2001:db8::1 is not a loopback address", str(caught.exception))

    def test_commandLineRefuses(self) -> None:
        """
        C{--debug} on a reachable address is a usage error.
        """
        for description in ["tcp:6060", "tcp:6060:interface=0.0.0.0"]:
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--debug", description])
            self.assertIn("--debug", str(caught.exception))
            self.assertIn("interface=127.0.0.1", str(caught.exception))

    def test_commandLineAccepts(self) -> None:
        """
        C{--debug} on loopback parses; it is off by default.
        """
        options = Options()
        options.parseOptions(["--debug", "tcp:6060:interface=127.0.0.1"])
        self.assertEqual(options["debug"], "tcp:6060:interface=127.0.0.1")
        options = Options()
        options.parseOptions([])
        self.assertIsNone(options["debug"])


# The real twistd


class TwistdTests(TestCase):
    """
    C{twistd -n tcpdemo} in a subprocess, with and without C{--debug}.
    """

    def twistd(self, *extra: str) -> Child:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        args = twistdCommand() + [
            "-n",
            "--pidfile=",
            "tcpdemo",
            "--port",
            f"tcp:0:interface={LOOPBACK}",
            "--metrics",
            "none",
            *extra,
        ]
        child = Child()
        reactor.spawnProcess(child, args[0], args, env=subprocessEnv(), path=workdir)
        self.addCleanup(child.kill)
        return child

    async def test_debugListener(self) -> None:
        """
        With C{--debug} on loopback, the endpoints answer from the server
        process: the index, and a short profile of it.
        """
        child = self.twistd("--debug", f"tcp:0:interface={LOOPBACK}")
        # Port 0: the port chosen is read back from the line, once whole.
        listening = rf"tcpdemo debug \(/debug/\) listening on tcp:{re.escape(LOOPBACK)}:(\d+)\n"
        await child.waitFor(b"tcpdemo debug (/debug/) listening on")
        await waitUntil(lambda: re.search(listening, child.text()) is not None, "the debug port")
        match = re.search(listening, child.text())
        assert match is not None
        port = int(match.group(1))
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        base = f"http://{LOOPBACK}:{port}"
        response = await agent.request(b"GET", f"{base}/debug/".encode())
        self.assertEqual(response.code, 200)
        self.assertIn(b"/debug/profile?seconds=N", await readBody(response))
        response = await agent.request(
            b"GET", f"{base}/debug/profile?seconds=0.2&format=text".encode()
        )
        self.assertEqual(response.code, 200)
        self.assertIn(b"tottime", await readBody(response))
        response = await agent.request(
            b"GET", f"{base}/debug/profile?seconds=0.2&format=svg".encode()
        )
        self.assertEqual(response.code, 200)
        picture = ElementTree.fromstring(await readBody(response))
        self.assertEqual(picture.tag, "{http://www.w3.org/2000/svg}svg")
        await pool.closeCachedConnections()
        await child.waitFor(b"took a 0.2s CPU profile (text) for 127.0.0.1:")
        child.signal("TERM")
        await child.ended

    async def test_noDebugListenerByDefault(self) -> None:
        """
        Without C{--debug}, nothing more listens.
        """
        port = freePort()
        child = self.twistd()
        await child.waitFor(b"tcpdemo server listening on")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, port), timeout=5).close()
        self.assertNotIn("debug", child.text())
        child.signal("TERM")
        await child.ended

    async def test_refusesReachableDebugListener(self) -> None:
        """
        C{--debug} on all interfaces stops twistd before it listens at all.
        """
        child = self.twistd("--debug", "tcp:0")
        # Newer twistd exits 1 on a usage error, older (25.5) 0: not checked.
        await child.ended
        self.assertIn("--debug: 'tcp:0' listens on all interfaces", child.text())
        self.assertNotIn("listening on", child.text())
