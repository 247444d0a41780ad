"""
Tests for L{tcpdemo.client.cli}: the options, the summary and JSON output,
the progress display, and the command line in a child process.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial import unittest

from tcpdemo.client.checker import BAD_RESULT, WRONG_ID
from tcpdemo.client.cli import Options, Progress, endpointFor, formatJSON, formatSummary
from tcpdemo.client.load import LoadConfig, LoadRun
from tcpdemo.client.stats import Report
from tests.clientsupport import (
    FakeFactory,
    LoadTestsMixin,
    WrongId,
    WrongResult,
    reactor,
)
from tests.support import REPO_ROOT, freePort, subprocessEnv


class OptionsTests(unittest.TestCase):
    def parse(self, *args: str) -> Options:
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_defaults(self) -> None:
        config = self.parse().config()
        self.assertEqual(config.endpoint, "tcp:host=127.0.0.1:port=8888")
        self.assertEqual((config.connections, config.window, config.rate), (100, 1000, None))
        self.assertEqual(self.parse("--window", "0").config().window, 0)
        self.assertEqual((config.duration, config.count), (10.0, None))

    def test_endpoints(self) -> None:
        self.assertEqual(endpointFor("9", "::1"), "tcp:host=\\:\\:1:port=9")
        self.assertEqual(endpointFor("unix:/tmp/s", None), "unix:/tmp/s")
        self.assertRaises(usage.UsageError, endpointFor, "unix:/tmp/s", "localhost")
        self.assertRaises(usage.UsageError, endpointFor, "nonsense", None)

    def test_rateExcludesWindow(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--rate", "10", "--window", "1")
        # A count could be reached inside the warm-up, leaving nothing measured.
        self.assertRaises(usage.UsageError, self.parse, "--warmup", "1", "--count", "10")
        self.assertEqual(self.parse("--warmup", "1", "--duration", "2")["warmup"], 1.0)
        self.assertRaises(usage.UsageError, self.parse, "--connections", "0")

    def test_tlsOptions(self) -> None:
        """
        --no-verify and --ca-file go with TLS endpoints only, not together;
        an unreadable CA file is a usage error; both reach the config.
        """
        self.assertRaises(usage.UsageError, self.parse, "--no-verify")
        self.assertRaises(usage.UsageError, self.parse, "--ca-file", __file__)
        self.assertRaises(
            usage.UsageError,
            self.parse,
            "--port",
            "ssl:127.0.0.1:1",
            "--no-verify",
            "--ca-file",
            __file__,
        )
        error = self.assertRaises(
            usage.UsageError, self.parse, "--port", "ssl:127.0.0.1:1", "--ca-file", "/nonexistent"
        )
        self.assertIn("cannot read CA certificates from /nonexistent", str(error))
        config = self.parse("--port", "tls:127.0.0.1:1", "--no-verify").config()
        self.assertEqual((config.tlsVerify, config.trustRoot), (False, None))
        self.assertIs(config.asJSON()["tls_verify"], False)
        config = self.parse("--fail-on-result").config()
        self.assertEqual((config.tlsVerify, config.failOnResult), (True, True))
        self.assertIsNone(config.asJSON()["tls_verify"])

    def test_tokenFile(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b" secret\n")
        o = self.parse("--token-file", path, "--count", "5")
        config = o.config()
        self.assertEqual((config.conn, config.token, config.duration), (True, b"secret", None))


class OutputTests(unittest.TestCase):
    def report(self, **kwargs: Any) -> Report:
        fields: dict[str, Any] = dict(
            config=LoadConfig("tcp:host=127.0.0.1:port=1", window=1, duration=1.0).asJSON(),
            connections=1,
            sent=10,
            acked=9,
            answered=10,
            unanswered=0,
            errors=1,
            errorsByKind={WRONG_ID: 0, BAD_RESULT: 1},
            messages=["connection 0: bad_result: ack for id '00000004' has result 1"],
            duration=2.0,
            sendDuration=1.0,
            latencyUs={
                "count": 10,
                "p50": 100,
                "p90": 200,
                "p99": 300,
                "p99.9": 400,
                "min": 50,
                "mean": 120.0,
                "max": 500,
            },
            cpuUser=0.5,
            cpuSystem=0.25,
        )
        fields.update(kwargs)
        return Report(**fields)

    def test_summary(self) -> None:
        text = formatSummary(self.report())
        for expected in (
            "request/response (window 1)",
            "acked",
            "4 acks/s",
            "client cpu",
            "0.750 s",
            "38% of one core",
            "0.100     0.200     0.300     0.400     0.500",
            "errors by kind: bad_result 1",
            "has result 1",
            "FAILED: 1 error(s)",
        ):
            self.assertIn(expected, text)

    def test_json(self) -> None:
        data = json.loads(formatJSON(self.report()))
        self.assertEqual(data["throughput_acks_per_s"], 4.5)
        self.assertEqual(data["cpu_s"], {"user": 0.5, "system": 0.25, "total": 0.75})
        self.assertEqual(data["errors"]["by_kind"][BAD_RESULT], 1)

    def test_progress(self) -> None:
        run = LoadRun(reactor, LoadConfig("tcp:127.0.0.1:1", connections=2))
        for tty in (True, False):
            stream = io.StringIO()
            progress = Progress(run, stream, 1.0, tty)
            progress.update()
            self.assertIn("connecting 0...", stream.getvalue())
            run.stats.start(100.0)
            run.stats.acked = run.stats.sent = 500
            stream.truncate(0)
            stream.seek(0)
            self.assertIn("250 acks/s", progress.line(102.0))
            progress.update()
            out = stream.getvalue()
            self.assertTrue(out.startswith("\r") if tty else out.endswith("\n"), out)
            progress.stop()
            run.stats.startTime = None


class CommandLineTests(LoadTestsMixin, unittest.TestCase):
    timeout = 30

    def client(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(  # type: ignore[no-any-return]
            sys.executable,
            ["-m", "tcpdemo.client", *args],
            env=dict(os.environ),
            reactor=reactor,
        )

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        endpoint = self.realServer()
        out, err, code = yield self.client(
            "--json", "--port", endpoint, "-c", "4", "--count", "20000", "--window", "100"
        )
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        for key in (
            "config",
            "connections",
            "sent",
            "acked",
            "unanswered",
            "errors",
            "duration_s",
            "throughput_acks_per_s",
            "latency_us",
            "cpu_s",
        ):
            self.assertIn(key, data)
        self.assertEqual((data["sent"], data["acked"], data["errors"]["total"]), (20000, 20000, 0))
        self.assertEqual(data["latency_us"]["count"], 20000)
        self.assertEqual(
            set(data["latency_us"]), {"count", "p50", "p90", "p99", "p99.9", "min", "mean", "max"}
        )
        self.assertEqual(data["config"]["window"], 100)
        self.assertGreaterEqual(data["cpu_s"]["total"], 0)

    @defer.inlineCallbacks
    def test_wrongServer(self) -> Any:
        endpoint = self.listen(FakeFactory(WrongId))
        port = endpoint.rsplit(":", 1)[1]
        out, err, code = yield self.client("--port", port, "-c", "1", "--count", "10", "-q")
        self.assertEqual(code, 1, err)
        self.assertIn(b"wrong_id: wrong id: expected '00000005', got '00000006'", out, err)
        self.assertIn(b"FAILED: 1 error(s)", out)

    @defer.inlineCallbacks
    def test_usage(self) -> Any:
        out, err, code = yield self.client("--rate", "5", "--window", "2")
        self.assertEqual(code, 2)
        self.assertIn(b"cannot be combined with --window", err)

    @defer.inlineCallbacks
    def test_cannotConnect(self) -> Any:
        free = freePort()
        out, err, code = yield self.client("--port", str(free), "-c", "2", "-q")
        self.assertEqual(code, 2, err)
        self.assertIn(b"could not connect", err)

    @defer.inlineCallbacks
    def test_badEndpoints(self) -> Any:
        """
        An unusable endpoint string is a usage error: one line, exit 2.
        """
        for port, text in [
            ("foo:bar", b"Unknown endpoint type: 'foo'"),
            ("ssl:127.0.0.1:8443:caCertsDir=/nonexistent", b"cannot read CA certificates"),
        ]:
            out, err, code = yield self.client("--port", port)
            self.assertEqual(code, 2, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(text, err)
            self.assertEqual(out, b"")

    @defer.inlineCallbacks
    def test_results(self) -> Any:
        """
        A non-zero result is counted by result, not an error (exit 0);
        C{--fail-on-result} makes it one (exit 1).
        """
        endpoint = self.listen(FakeFactory(WrongResult))
        args = ("--port", endpoint, "-c", "1", "--count", "10", "-q")
        out, err, code = yield self.client(*args)
        self.assertEqual(code, 0, err)
        self.assertIn(b"0: 9, 1: 1", out)
        self.assertIn(b"OK: every Submit got its ack, in order; 1 with a non-zero result", out)
        out, err, code = yield self.client(*args, "--json")
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual(data["results"], {"0": 9, "1": 1})
        self.assertEqual((data["acked"], data["errors"]["total"]), (10, 0))
        self.assertFalse(data["config"]["fail_on_result"])
        out, err, code = yield self.client(*args, "--fail-on-result")
        self.assertEqual(code, 1, err)
        self.assertIn(b"bad_result: ack for id '00000004' has result 1", out)
        self.assertIn(b"FAILED: 1 error(s)", out)

    @defer.inlineCallbacks
    def test_interrupted(self) -> Any:
        """
        Ctrl-C (SIGINT) stops the run early: it drains and reports, but says
        INTERRUPTED, not OK, and exits 130.
        """
        endpoint = self.realServer()
        script = (
            "import signal, sys\n"
            # A child of a shell without job control may inherit SIGINT
            # ignored; a user's terminal delivers it.
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "sys.argv[0] = 'tcpdemo-client'\n"
            "from tcpdemo.client import main\n"
            "main()\n"
        )
        process = ChildProcess()
        reactor.spawnProcess(
            process,
            sys.executable,
            [
                sys.executable,
                "-c",
                script,
                "--port",
                endpoint,
                "-c",
                "2",
                "--duration",
                "60",
                "--window",
                "10",
                "--progress-interval",
                "0.1",
            ],
            env=subprocessEnv(),
            path=REPO_ROOT,
        )
        yield process.waitForErr(b"acks/s")
        process.transport.signalProcess("INT")
        code = yield process.ended
        out = process.out.decode()
        self.assertEqual(code, 130, process.err)
        self.assertNotIn("OK", out)
        self.assertIn("(interrupted)", out)
        self.assertIn("INTERRUPTED: stopped early by a signal", out)
        self.assertIn("errors                    0", out)


class ChildProcess(protocol.ProcessProtocol):
    """
    Collects a child's output; C{ended} fires with its exit status.
    """

    transport: Any

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data
        for text, d in list(self._waiting):
            if text in self.err:
                self._waiting.remove((text, d))
                d.callback(None)

    def waitForErr(self, text: bytes, timeout: float = 20.0) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if text in self.err:
            d.callback(None)
        else:
            self._waiting.append((text, d))
            d.addTimeout(timeout, reactor)
        return d

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)
