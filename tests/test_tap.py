"""
Options, the service and the plugin, in-process over real loopback sockets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from tcpdemo import endpoints, limits, tap
from tcpdemo.frame import DEFAULT_MAX_FRAME_LENGTH

from .support import Collector, ackFrame, connectTo, submitFrame, waitUntil


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["port"], "tcp:8888")
        self.assertEqual(options["metrics"], "tcp:8889")
        self.assertIsNone(options["debug"])
        self.assertEqual(options["max-frame-length"], DEFAULT_MAX_FRAME_LENGTH)
        self.assertEqual(options["max-connections"], 0)
        self.assertEqual(options["idle-timeout"], 0)
        self.assertEqual(options["backlog"], 4096)
        self.assertIsNone(options["auth-token"])

    def test_metricsOff(self) -> None:
        self.assertIsNone(self.parse("--metrics", "none")["metrics"])

    def test_badValues(self) -> None:
        for args in (
            ["--max-frame-length", "4"],
            ["--max-frame-length", str(2**31)],
            ["--max-connections", "-1"],
            ["--idle-timeout", "-3"],
            ["--write-buffer-limit", "0"],
            ["--backlog", "x"],
            ["--auth-token-file", "/nonexistent/token"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_authToken(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"  s3cret\n")
        self.assertEqual(self.parse("--auth-token-file", path)["auth-token"], b"s3cret")
        with open(path, "wb") as f:
            f.write(b"\n")
        self.assertRaises(usage.UsageError, self.parse, "--auth-token-file", path)

    def test_helpDocumentsEveryOption(self) -> None:
        text = str(tap.Options())
        for name in (
            "--port",
            "--metrics",
            "--debug",
            "--max-frame-length",
            "--max-connections",
            "--idle-timeout",
            "--write-buffer-limit",
            "--backlog",
            "--grace-period",
            "--auth-token-file",
        ):
            self.assertIn(name, text)
        flat = " ".join(text.split())
        self.assertIn("[default: tcp:8888]", flat)
        self.assertIn("[default: tcp:8889]", flat)
        self.assertIn("[default: 4096]", flat)
        self.assertIn("Off by default", flat)

    def test_withBacklog(self) -> None:
        self.assertEqual(endpoints.withBacklog("tcp:8888", 4096), "tcp:8888:backlog=4096")
        self.assertEqual(endpoints.withBacklog("unix:/tmp/s", 10), "unix:/tmp/s:backlog=10")
        self.assertEqual(endpoints.withBacklog("tcp:1:backlog=5", 4096), "tcp:1:backlog=5")
        self.assertEqual(
            endpoints.withBacklog("systemd:domain=INET:index=0", 5), "systemd:domain=INET:index=0"
        )


class PluginTests(SynchronousTestCase):
    def test_discoverable(self) -> None:
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("tcpdemo", makers)
        self.assertIs(makers["tcpdemo"].options, tap.Options)


class ServiceTests(TestCase):
    def startService(self, *args: str) -> tap.TcpDemoService:
        options = tap.Options()
        options.parseOptions(
            ["--port", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1", *args]
        )
        svc = tap.makeService(options, reactor, CollectorRegistry())
        assert isinstance(svc, tap.TcpDemoService)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(lambda: svc.running and svc.stopService())
        return svc

    async def connect(self, svc: tap.TcpDemoService) -> Collector:
        return await connectTo(svc)

    async def test_servesAndDrains(self) -> None:
        """
        Acks arrive over real TCP; /metrics is served by the same reactor;
        stopping delivers owed acks and closes every connection.
        """
        svc = self.startService()
        client = await self.connect(svc)
        frames = b"".join(submitFrame(i, b"x") for i in range(1, 1001))
        client.transport.write(frames)  # type: ignore[union-attr]
        await waitUntil(lambda: len(client.data) >= 14 * 1000, "1000 acks")
        self.assertEqual(client.data, b"".join(ackFrame(i) for i in range(1, 1001)))

        assert svc.metricsListener is not None and svc.metricsListener.port is not None
        metricsPort = svc.metricsListener.port.getHost().port  # type: ignore[attr-defined]
        response = await Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d/metrics" % metricsPort
        )
        self.assertEqual(response.code, 200)
        body = (await readBody(response)).decode()
        samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
        self.assertEqual(samples["tcpdemo_req_recv_total"], 1000)
        self.assertEqual(samples["tcpdemo_client_connected"], 1)

        await svc.stopService()
        self.assertEqual(await client.closed, b"".join(ackFrame(i) for i in range(1, 1001)))
        self.assertEqual(svc.factory.connections, {})

    async def test_maxConnections(self) -> None:
        svc = self.startService("--max-connections", "1")
        first = await self.connect(svc)
        second = await self.connect(svc)
        self.assertEqual(await second.closed, b"")
        first.transport.write(submitFrame(1))  # type: ignore[union-attr]
        await waitUntil(lambda: len(first.data) >= 14, "the ack")
        self.assertEqual(first.data, ackFrame(1))
        registry = svc.factory.metrics.registry
        self.assertEqual(registry.get_sample_value("tcpdemo_connections_refused_total"), 1)
        self.assertEqual(registry.get_sample_value("tcpdemo_max_connections"), 1)

    async def test_halfClose(self) -> None:
        """
        A client that shuts down its sending side still gets every ack.
        """
        svc = self.startService()
        client = await self.connect(svc)
        client.transport.write(b"".join(submitFrame(i) for i in range(1, 101)))  # type: ignore[union-attr]
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.assertEqual(await client.closed, b"".join(ackFrame(i) for i in range(1, 101)))

    def test_addressInUse(self) -> None:
        """
        A listener that cannot listen fails the start, loudly.
        """
        svc = self.startService()
        assert svc.server.port is not None
        port = svc.server.port.getHost().port  # type: ignore[attr-defined]
        options = tap.Options()
        options.parseOptions(["--port", f"tcp:{port}:interface=127.0.0.1", "--metrics", "none"])
        clash = tap.makeService(options, reactor, CollectorRegistry())
        from tcpdemo.startup import StartupError

        error = self.assertRaises(StartupError, clash.privilegedStartService)
        self.assertIn(f"--port: cannot listen on 127.0.0.1:{port}", str(error))


class FileLimitTests(SynchronousTestCase):
    def test_raised(self) -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        self.assertEqual(limits.raiseFileLimit(), hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
