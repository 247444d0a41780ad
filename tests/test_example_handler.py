"""
Tests for the example handler package, C{examples/tcpdemo-sizelimit}: its
handler and plugin as units, and a real C{twistd -n tcpdemo --handler
sizelimit:16} answering Submits over TCP.

The package must be installed with pip, as a user would install it (tox.ini
does it for every test env), not found on the checkout's path: a test
checks where it was imported from.  Not installed, these tests fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import tcpdemo_sizelimit
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from tcpdemo_sizelimit import RESULT_TOO_LARGE, SizeLimitHandler, parseLimit
from twisted.plugin import getPlugins
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from tcpdemo.handlers import (
    HandlerArgumentError,
    IHandlerMaker,
    ISubmitHandler,
    SubmitBatch,
    findMaker,
)
from tests.support import (
    REPO_ROOT,
    TwistdServer,
    ackFrame,
    recvExactly,
    submitFrame,
    subprocessEnv,
    twistdCommand,
    waitFor,
    waitForWorkers,
)

EXAMPLE = os.path.join(REPO_ROOT, "examples", "tcpdemo-sizelimit")


def makeBatch(payloads: list[bytes], first: int = 0) -> SubmitBatch:
    """
    A batch of Submits numbered from C{first}, as one read would bring them.
    """
    frames = b"".join(submitFrame(first + i, p) for i, p in enumerate(payloads))
    return SubmitBatch(
        frames=frames,
        count=len(payloads),
        connection=1,
        peer="127.0.0.1:4242",
        received=time.time(),
    )


def expectedResult(payload: bytes, limit: int) -> int:
    return RESULT_TOO_LARGE if len(payload) > limit else 0


class InstalledTests(unittest.TestCase):
    def test_installedWithPip(self) -> None:
        """
        The package comes from an installation (site-packages), not from
        the examples/ directory of the checkout.
        """
        path = os.path.realpath(tcpdemo_sizelimit.__file__)
        self.assertFalse(path.startswith(os.path.realpath(EXAMPLE) + os.sep), path)
        self.assertIn("-packages", path)

    def test_pluginFound(self) -> None:
        """
        twisted.plugin finds the maker, and C{findMaker} picks it by name.
        """
        names = [maker.name for maker in getPlugins(IHandlerMaker)]
        self.assertEqual(names.count("sizelimit"), 1, names)
        maker, argument = findMaker("sizelimit:16")
        self.assertTrue(verifyObject(IHandlerMaker, maker))
        self.assertEqual(argument, "16")
        handler = maker.makeHandler(argument, None)
        self.assertIsInstance(handler, SizeLimitHandler)
        self.assertEqual(handler.limit, 16)

    def test_pluginBadArgument(self) -> None:
        maker, _ = findMaker("sizelimit")
        error = self.assertRaises(HandlerArgumentError, maker.makeHandler, None, None)
        self.assertIn("--handler sizelimit:BYTES", str(error))

    def test_pluginIsLazy(self) -> None:
        """
        Listing plugins imports neither the handler module (which creates
        its counter) nor prometheus_client: only C{--handler sizelimit} does.
        """
        code = (
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from tcpdemo.handlers import IHandlerMaker\n"
            "names = [m.name for m in getPlugins(IHandlerMaker)]\n"
            "print('sizelimit' in names, 'tcpdemo_sizelimit' in sys.modules,"
            " 'prometheus_client' in sys.modules)\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", code],
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        self.assertEqual(output.split(), ["True", "False", "False"])


class ParseLimitTests(unittest.TestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parseLimit("16"), 16)
        self.assertEqual(parseLimit("0"), 0)

    def test_bad(self) -> None:
        for argument in (None, "", "abc", "-1", "1.5"):
            self.assertRaises(HandlerArgumentError, parseLimit, argument)


class SizeLimitHandlerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("sizelimit_results", "test", ["result"], registry=self.registry)
        self.handler = SizeLimitHandler(16, self.counter)

    def count(self, result: int) -> float | None:
        return self.registry.get_sample_value("sizelimit_results_total", {"result": str(result)})

    def test_interface(self) -> None:
        handler: ISubmitHandler = self.handler
        self.assertTrue(verifyObject(ISubmitHandler, handler))
        self.assertIsNone(handler.startHandler())
        self.assertIsNone(handler.stopHandler())

    def test_results(self) -> None:
        """
        One result per Submit, in order: 0 up to the limit, 3 above it.
        """
        payloads = [b"", b"a" * 16, b"b" * 17, b"c" * 1000, b"d", b"e" * 17]
        results = self.handler.handle(makeBatch(payloads))
        self.assertEqual(RESULT_TOO_LARGE, 3)
        self.assertEqual(list(results), [0, 0, 3, 3, 0, 3])

    def test_counts(self) -> None:
        """
        Both labels exist from the start; each batch adds its results.
        """
        self.assertEqual((self.count(0), self.count(3)), (0.0, 0.0))
        self.handler.handle(makeBatch([b"x" * 20, b"y"]))
        self.handler.handle(makeBatch([b"y", b"y", b"z" * 17]))
        self.handler.handle(makeBatch([b"z" * 17]))
        self.assertEqual((self.count(0), self.count(3)), (3.0, 3.0))

    def test_zeroLimit(self) -> None:
        handler = SizeLimitHandler(0, self.counter)
        self.assertEqual(list(handler.handle(makeBatch([b"", b"a"]))), [0, 3])

    def test_defaultRegistry(self) -> None:
        """
        By default the counter is in prometheus_client's default registry,
        the one the server serves on /metrics.
        """
        before = REGISTRY.get_sample_value("sizelimit_results_total", {"result": "3"})
        assert before is not None
        SizeLimitHandler(1).handle(makeBatch([b"ab", b"a"]))
        self.assertEqual(
            REGISTRY.get_sample_value("sizelimit_results_total", {"result": "3"}), before + 1
        )


class TwistdTests(unittest.TestCase):
    """
    A real C{twistd -n tcpdemo --handler sizelimit:16}, over loopback TCP.
    """

    LIMIT = 16

    def test_resultsOverTCP(self) -> None:
        """
        Two connections pipeline Submits of every size around the limit: the
        acks come in order, with result 0 up to 16 bytes and 3 above, and the
        results are counted on /metrics, both by the handler's own counter
        and by the server's acks by result.  SIGTERM then stops it cleanly.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        server = TwistdServer(workdir, ["--handler", f"sizelimit:{self.LIMIT}"])
        self.addCleanup(server.kill)
        # Sizes 0..40, many times over, so that reads carry batches of many.
        payloads = [b"p" * (i % 41) for i in range(2000)]
        expected = b"".join(
            ackFrame(i, expectedResult(p, self.LIMIT)) for i, p in enumerate(payloads)
        )
        request = b"".join(submitFrame(i, p) for i, p in enumerate(payloads))
        socks = [server.connect(), server.connect()]
        for sock in socks:
            self.addCleanup(sock.close)
            sock.sendall(request)
        for sock in socks:
            self.assertEqual(recvExactly(sock, len(expected)), expected)

        tooLarge = 2 * sum(1 for p in payloads if len(p) > self.LIMIT)
        ok = 2 * len(payloads) - tooLarge
        wanted = {
            'sizelimit_results_total{result="0"}': ok,
            'sizelimit_results_total{result="3"}': tooLarge,
            'tcpdemo_acks_total{result="0"}': ok,
            'tcpdemo_acks_total{result="3"}': tooLarge,
            'tcpdemo_acks_total{result="1"}': 0,
            'tcpdemo_acks_total{result="2"}': 0,
        }

        def counted() -> bool:
            samples = server.scrape()
            return all(samples.get(name) == value for name, value in wanted.items())

        waitFor(counted, what=f"{wanted} on /metrics")
        for sock in socks:
            sock.close()
        self.assertEqual(server.terminate(), 0, server.log())

    def test_workers(self) -> None:
        """
        With C{--workers 2} each worker builds its own handler, and the
        parent's /metrics sums the handler's own counter over the workers
        (prometheus_client's multiprocess mode, which the workers run in).
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        server = TwistdServer(workdir, ["--workers", "2", "--handler", f"sizelimit:{self.LIMIT}"])
        self.addCleanup(server.kill)
        waitForWorkers(server, 2)
        payloads = [b"s" * 16, b"l" * 17, b"l" * 100]
        request = b"".join(submitFrame(i, p) for i, p in enumerate(payloads))
        expected = b"".join(
            ackFrame(i, expectedResult(p, self.LIMIT)) for i, p in enumerate(payloads)
        )
        connections = 8
        for _ in range(connections):
            with server.connect() as sock:
                sock.sendall(request)
                self.assertEqual(recvExactly(sock, len(expected)), expected)
        wanted = {
            'sizelimit_results_total{result="0"}': connections,
            'sizelimit_results_total{result="3"}': 2 * connections,
        }

        def counted() -> bool:
            samples = server.scrape()
            return all(samples.get(name) == value for name, value in wanted.items())

        waitFor(counted, what=f"{wanted} on the parent's /metrics")
        self.assertEqual(server.terminate(), 0, server.log())

    def test_missingArgument(self) -> None:
        """
        C{--handler sizelimit} without a size stops twistd with the plugin's
        one-line explanation.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        process = subprocess.run(
            [
                *twistdCommand(), "-n", "--pidfile=", "--logfile", os.path.join(workdir, "log"),
                "tcpdemo", "--port", "tcp:0:interface=127.0.0.1", "--metrics", "none",
                "--handler", "sizelimit",
            ],
            cwd=workdir,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        with open(os.path.join(workdir, "log"), "a+", encoding="utf-8") as f:
            f.seek(0)
            log = f.read()
        output = process.stdout.decode() + process.stderr.decode() + log
        self.assertNotEqual(process.returncode, 0, output)
        self.assertIn("sizelimit needs a size", output)
