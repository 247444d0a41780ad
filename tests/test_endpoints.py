"""
L{tcpdemo.endpoints}: the one place endpoint descriptions are parsed,
checked, described, given a backlog and quoted, and peers are described.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.python import usage
from twisted.trial import unittest

from tcpdemo.endpoints import (
    Description,
    ListenTCPReactor,
    checkServerEndpoint,
    describeListening,
    describePeer,
    parseDescription,
    portArgument,
    quoteArgument,
    serverArguments,
    withBacklog,
)


class ParseTests(unittest.TestCase):
    def test_escapesAndKeywords(self) -> None:
        self.assertEqual(
            parseDescription(r"tcp6:6060:interface=\:\:1"),
            Description("tcp6", ("6060",), {"interface": "::1"}),
        )

    def test_trailingBackslash(self) -> None:
        self.assertRaises(ValueError, parseDescription, "tcp:a\\")

    def test_kindAsWritten(self) -> None:
        self.assertEqual(parseDescription("TCP:1").kind, "TCP")

    def test_quoteRoundTrip(self) -> None:
        """
        What L{quoteArgument} writes, L{parseDescription} reads back.
        """
        for value in ("::1", "a\\b", "/run/x:y", "plain"):
            parsed = parseDescription(f"unix:{quoteArgument(value)}:mode={quoteArgument(value)}")
            self.assertEqual(parsed, Description("unix", (value,), {"mode": value}))


class BacklogTests(unittest.TestCase):
    def test_added(self) -> None:
        self.assertEqual(withBacklog("tcp6:8888", 7), "tcp6:8888:backlog=7")
        self.assertEqual(withBacklog("SSL:8443:privateKey=k", 7), "SSL:8443:privateKey=k:backlog=7")

    def test_escapedNameIsNotAKeyword(self) -> None:
        """
        A path that merely contains C{backlog=} after an escaped colon is
        not a backlog argument.
        """
        self.assertEqual(
            withBacklog(r"unix:/tmp/a\:backlog=1", 9), r"unix:/tmp/a\:backlog=1:backlog=9"
        )


class PortAndArgumentsTests(unittest.TestCase):
    def test_port(self) -> None:
        self.assertEqual(portArgument("tcp:8888"), "8888")
        self.assertEqual(portArgument("tcp:interface=::1:port=70000"), "70000")
        self.assertEqual(portArgument("ssl:8443:privateKey=k.pem"), "8443")
        self.assertIsNone(portArgument("unix:/tmp/s"))
        self.assertIsNone(portArgument("tcp:interface=127.0.0.1"))

    def test_serverArguments(self) -> None:
        arguments = serverArguments(parseDescription("TCP:6060:127.0.0.1"))
        self.assertEqual(arguments["interface"], "127.0.0.1")
        self.assertEqual(arguments["port"], "6060")
        self.assertEqual(serverArguments(parseDescription("tcp6:1"))["interface"], "::")
        self.assertRaises(TypeError, serverArguments, parseDescription("tcp:1:nope=2"))
        self.assertRaises(ValueError, serverArguments, parseDescription("unix:/s"))

    def test_checkServerEndpoint(self) -> None:
        checkServerEndpoint("--port", "tcp:0")
        checkServerEndpoint("--port", "unix:/tmp/x.sock")
        error = self.assertRaises(usage.UsageError, checkServerEndpoint, "--port", "tcp:65536")
        self.assertIn("--port 'tcp:65536': port 65536 is out of range", str(error))
        error = self.assertRaises(usage.UsageError, checkServerEndpoint, "--metrics", "nope:1")
        self.assertIn("--metrics 'nope:1' is not a valid endpoint", str(error))


class DescribeTests(unittest.TestCase):
    def test_peers(self) -> None:
        self.assertEqual(describePeer(IPv4Address("TCP", "127.0.0.1", 5)), "127.0.0.1:5")
        self.assertEqual(describePeer(IPv6Address("TCP", "::1", 5)), "[::1]:5")
        self.assertEqual(describePeer(UNIXAddress("/tmp/s")), "unix:/tmp/s")
        self.assertEqual(describePeer(UNIXAddress(b"/tmp/s")), "unix:/tmp/s")
        self.assertEqual(describePeer(UNIXAddress(None)), "unix socket")
        self.assertEqual(describePeer(None), "None")

    def test_listening(self) -> None:
        self.assertEqual(describeListening(IPv4Address("TCP", "0.0.0.0", 80)), "tcp:0.0.0.0:80")
        self.assertEqual(describeListening(UNIXAddress("/tmp/s")), "unix:/tmp/s")


class ListenTCPReactorTests(unittest.TestCase):
    def test_capturesWhatTheEndpointParsed(self) -> None:
        """
        Twisted's own tcp and tcp6 endpoints hand their parsed port, backlog
        and interface to the given C{listenTCP}.
        """
        calls: list[tuple[Any, ...]] = []
        sentinel = object()

        def listenTCP(
            port: int, factory: Factory[Any], backlog: int = 50, interface: str = ""
        ) -> object:
            calls.append((port, backlog, interface))
            return sentinel

        factory = Factory()
        for description in (r"tcp:0:backlog=9:interface=127.0.0.1", r"tcp6:0:interface=\:\:1"):
            outcome: list[object] = []
            endpoint = serverFromString(ListenTCPReactor(listenTCP), description)
            endpoint.listen(factory).addBoth(outcome.append)
            self.assertEqual(outcome, [sentinel])
        self.assertEqual(calls, [(0, 9, "127.0.0.1"), (0, 50, "::1")])
