"""
Tests for L{tcpdemo.client.endpoint}: endpoint strings, and TLS that verifies
the server's certificate by default, over loopback against the real server
listening with a certificate from a throwaway CA made in the test.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tcpdemo.client import ConnectFailed, EndpointError, connect
from tcpdemo.client.endpoint import clientEndpoint, isTLS, loadTrustRoot
from tcpdemo.client.load import LoadConfig, LoadRun, SetupError
from tcpdemo.endpoints import Description, parseDescription
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory
from tests.clientsupport import LOCALHOST, reactor, writeTLSFiles
from tests.support import REPO_ROOT, subprocessEnv


class DescriptionTests(unittest.TestCase):
    def test_parse(self) -> None:
        self.assertEqual(
            parseDescription("tcp:127.0.0.1:8888"),
            Description("tcp", ("127.0.0.1", "8888"), {}),
        )
        self.assertEqual(
            parseDescription("ssl:host=\\:\\:1:port=9:caCertsDir=/etc/ssl/certs"),
            Description("ssl", (), {"host": "::1", "port": "9", "caCertsDir": "/etc/ssl/certs"}),
        )
        self.assertEqual(parseDescription("unix:/a\\:b"), Description("unix", ("/a:b",), {}))
        self.assertTrue(isTLS("ssl:h:1"))
        self.assertTrue(isTLS("tls:h:1"))
        self.assertFalse(isTLS("tcp:h:1"))

    def test_errors(self) -> None:
        """
        Unusable descriptions are one-line L{EndpointError}s.
        """
        for description, text in [
            ("foo:bar", "Unknown endpoint type: 'foo'"),
            ("nonsense", "not an endpoint string"),
            ("ssl:127.0.0.1", "needs a host and a port"),
            ("ssl:127.0.0.1:x", "invalid literal"),
            ("ssl:127.0.0.1:1:caCertsDir=/nonexistent", "cannot read CA certificates"),
            ("tls:127.0.0.1:1:bogus=1", "unknown option(s) bogus"),
            ("tcp:127.0.0.1:1\\", "is not an endpoint description"),
        ]:
            error = self.assertRaises(EndpointError, clientEndpoint, reactor, description)
            self.assertIn(text, str(error))
            self.assertNotIn("\n", str(error))

    def test_trustRoot(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        paths = writeTLSFiles(directory)
        self.assertIsNotNone(loadTrustRoot(paths["ca"]))
        self.assertIsNotNone(loadTrustRoot(os.path.dirname(paths["ca"])))
        error = self.assertRaises(EndpointError, loadTrustRoot, paths["key"])
        self.assertIn("no PEM certificate found", str(error))


class TLSTests(unittest.TestCase):
    """
    The real server on C{ssl:} with a certificate for 127.0.0.1 and
    C{tcpdemo.test}, signed by a CA made here.
    """

    timeout = 30

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.paths = writeTLSFiles(self.directory)
        self.caDirectory = os.path.join(self.directory, "cas")
        os.makedirs(self.caDirectory)
        os.link(self.paths["ca"], os.path.join(self.caDirectory, "ca.pem"))
        self.factory = TcpDemoServerFactory(metrics=ServerMetrics.create())
        description = (
            f"ssl:0:interface={LOCALHOST}:privateKey={self.paths['key']}"
            f":certKey={self.paths['cert']}"
        )
        d: defer.Deferred[None] = serverFromString(reactor, description).listen(self.factory)
        d.addCallback(self.listening)
        return d

    def listening(self, port: Any) -> None:
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    @defer.inlineCallbacks
    def roundTrip(self, endpoint: str, **kwargs: Any) -> Any:
        client = yield connect(reactor, endpoint, **kwargs)
        results = yield defer.gatherResults([client.submit(b"tls") for _ in range(100)])
        yield client.close()
        self.assertEqual(results, [0] * 100)

    def test_trusted(self) -> defer.Deferred[Any]:
        """
        Trusting the CA explicitly (a PEM file) works, by IP address.
        """
        return self.roundTrip(f"ssl:{LOCALHOST}:{self.port}", trustRoot=self.paths["ca"])

    def test_trustedByDescription(self) -> defer.Deferred[Any]:
        """
        C{caCertsDir=} in an C{ssl:} description is a trust root too.
        """
        return self.roundTrip(f"ssl:{LOCALHOST}:{self.port}:caCertsDir={self.caDirectory}")

    def test_tlsEndpoint(self) -> defer.Deferred[Any]:
        """
        Twisted's C{tls:} endpoint, with C{trustRoots=}, and with the host
        name checked against C{hostname=} of an C{ssl:} description.
        """
        d = self.roundTrip(f"tls:{LOCALHOST}:{self.port}:trustRoots={self.caDirectory}")
        d.addCallback(
            lambda _: self.roundTrip(
                f"ssl:{LOCALHOST}:{self.port}:hostname=tcpdemo.test",
                trustRoot=self.paths["ca"],
            )
        )
        return d

    @defer.inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        By default (the platform's trust roots) the test CA is not trusted:
        connect fails with a clear error.  So with another CA.
        """
        choices: list[dict[str, Any]] = [{}, {"trustRoot": self.paths["otherCA"]}]
        for kwargs in choices:
            error = yield self.assertFailure(
                connect(reactor, f"ssl:{LOCALHOST}:{self.port}", **kwargs), ConnectFailed
            )
            self.assertIn("TLS handshake failed", str(error))
            self.assertIn("certificate could not be verified", str(error))
            self.assertIn("certificate verify failed", str(error))

    @defer.inlineCallbacks
    def test_wrongName(self) -> Any:
        """
        A trusted certificate for another name is refused.
        """
        error = yield self.assertFailure(
            connect(
                reactor,
                f"ssl:{LOCALHOST}:{self.port}:hostname=other.test",
                trustRoot=self.paths["ca"],
            ),
            ConnectFailed,
        )
        self.assertIn("TLS handshake failed", str(error))
        self.assertIn("not for this host name", str(error))

    def test_verifyOff(self) -> defer.Deferred[Any]:
        """
        C{tlsVerify=False} accepts the untrusted certificate.
        """
        return self.roundTrip(f"ssl:{LOCALHOST}:{self.port}", tlsVerify=False)

    @defer.inlineCallbacks
    def test_loadRun(self) -> Any:
        """
        The load client verifies too: untrusted is a setup error, trusted
        or --no-verify runs.
        """

        def load(suffix: str = "", **kwargs: Any) -> defer.Deferred[Any]:
            endpoint = f"ssl:{LOCALHOST}:{self.port}{suffix}"
            config = LoadConfig(endpoint, connections=2, count=50, **kwargs)
            result: defer.Deferred[Any] = LoadRun(reactor, config).run()
            return result

        error = yield self.assertFailure(load(), SetupError)
        self.assertIn("certificate could not be verified", str(error))
        error = yield self.assertFailure(
            load(":hostname=other.test", trustRoot=self.paths["ca"]), SetupError
        )
        self.assertIn("not for this host name", str(error))
        report = yield load(trustRoot=self.paths["ca"])
        self.assertEqual((report.acked, report.errors), (50, 0))
        self.assertTrue(report.config["tls_verify"])
        report = yield load(tlsVerify=False)
        self.assertEqual((report.acked, report.errors), (50, 0))
        self.assertFalse(report.config["tls_verify"])

    def client(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(  # type: ignore[no-any-return]
            sys.executable,
            ["-m", "tcpdemo.client", "-q", "-c", "2", "--count", "100", *args],
            env=subprocessEnv(),
            path=REPO_ROOT,
            reactor=reactor,
        )

    @defer.inlineCallbacks
    def test_commandLine(self) -> Any:
        """
        C{tcpdemo-client}: untrusted exits 2 with one line; C{--ca-file}
        works; C{--no-verify} works and says so on stderr and in the summary.
        """
        endpoint = f"ssl:{LOCALHOST}:{self.port}"
        out, err, code = yield self.client("--port", endpoint)
        self.assertEqual(code, 2, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(b"certificate could not be verified", err)
        out, err, code = yield self.client("--port", endpoint, "--ca-file", self.paths["ca"])
        self.assertEqual(code, 0, err)
        self.assertIn(b"TLS verified", out)
        self.assertIn(b"OK: every Submit got its ack", out)
        out, err, code = yield self.client("--port", endpoint, "--no-verify")
        self.assertEqual(code, 0, err)
        self.assertIn(b"WARNING: TLS certificate verification is OFF (--no-verify)", err)
        self.assertIn(b"TLS NOT VERIFIED (--no-verify)", out)
