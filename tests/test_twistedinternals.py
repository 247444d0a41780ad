"""
The private Twisted names of L{tcpdemo.twistedinternals} exist on the
installed Twisted and still mean what the wrappers assume.  A Twisted
release that renames one fails here, by name.
"""

from __future__ import annotations

import signal
import socket

from twisted.internet import base, endpoints, tcp
from twisted.internet.error import ConnectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from tcpdemo import twistedinternals
from tcpdemo.frame import FrameReceiver

LOCALHOST = "127.0.0.1"


class _IdleReactor:
    """
    Enough of a reactor for a C{tcp.Connection} that is never run: it
    only buffers.
    """

    def addWriter(self, selectable: object) -> None:
        pass

    def removeWriter(self, selectable: object) -> None:
        pass


class PrivateNamesExistTests(unittest.TestCase):
    """
    Each private name, looked up on the installed Twisted.
    """

    def assertPrivate(self, owner: object, name: str) -> None:
        self.assertTrue(
            hasattr(owner, name),
            f"Twisted no longer has {getattr(owner, '__name__', owner)}.{name}: "
            f"tcpdemo.twistedinternals must be updated for this Twisted",
        )

    def test_endpointParsers(self) -> None:
        for name in ("_parse", "_parseTCP", "_parseSSL", "_TCP6ServerParser"):
            self.assertPrivate(endpoints, name)
        self.assertPrivate(endpoints._TCP6ServerParser, "_parseServer")

    def test_exitSignal(self) -> None:
        self.assertPrivate(base.ReactorBase, "_exitSignal")

    def test_connectionBuffer(self) -> None:
        # Instance attributes, set by FileDescriptor.__init__.
        server, client = socket.socketpair()
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        connection = tcp.Connection(server, None, _IdleReactor())  # type: ignore[arg-type]
        for name in twistedinternals.CONNECTION_BUFFER_ATTRIBUTES:
            self.assertPrivate(connection, name)

    def test_readDelivery(self) -> None:
        self.assertPrivate(tcp.Connection, "_dataReceived")

    def test_optionDispatchers(self) -> None:
        class Options(usage.Options):
            optParameters = [["count", None, 1, "", int]]

        options = Options()
        dispatchers = twistedinternals.optionDispatchers(options)
        self.assertIsInstance(dispatchers["count"], usage.CoerceParameter)
        options.parseOptions(["--count", "7"])
        self.assertEqual(options["count"], 7)

    def test_requestDisconnected(self) -> None:
        request = server.Request(DummyChannel())
        self.assertFalse(twistedinternals.requestDisconnected(request))
        request.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(twistedinternals.requestDisconnected(request))

    def test_frameBufferIsOurOwn(self) -> None:
        """
        L{FrameReceiver} declares C{_unprocessed} itself rather than relying
        on Twisted's; Twisted's deprecated C{recvd} reads the same name.
        """
        self.assertIn("_unprocessed", vars(FrameReceiver))
        self.assertPrivate(Int32StringReceiver, "_unprocessed")


class SplitDescriptionTests(unittest.TestCase):
    def test_split(self) -> None:
        self.assertEqual(
            twistedinternals.splitDescription(r"tcp6:6060:interface=\:\:1"),
            (["tcp6", "6060"], {"interface": "::1"}),
        )

    def test_equalsAfterKey(self) -> None:
        self.assertEqual(
            twistedinternals.splitDescription("unix:/a\\:b:mode=600:x=a=b"),
            (["unix", "/a:b"], {"mode": "600", "x": "a=b"}),
        )


class BindServerArgumentsTests(unittest.TestCase):
    def test_positionalInterface(self) -> None:
        bound = twistedinternals.bindServerArguments("tcp", ["6060", "127.0.0.1"], {})
        self.assertEqual(bound.arguments["port"], "6060")
        self.assertEqual(bound.arguments["interface"], "127.0.0.1")
        self.assertEqual(bound.arguments["backlog"], 50)

    def test_tcp6Default(self) -> None:
        bound = twistedinternals.bindServerArguments("tcp6", ["6060"], {})
        self.assertEqual(bound.arguments["interface"], "::")

    def test_ssl(self) -> None:
        bound = twistedinternals.bindServerArguments(
            "ssl", ["8443"], {"privateKey": "k.pem", "interface": "::1"}
        )
        self.assertEqual(bound.arguments["interface"], "::1")
        self.assertEqual(bound.arguments["privateKey"], "k.pem")

    def test_badArguments(self) -> None:
        self.assertRaises(
            TypeError, twistedinternals.bindServerArguments, "tcp", ["1"], {"nope": "x"}
        )

    def test_unknownType(self) -> None:
        self.assertRaises(ValueError, twistedinternals.bindServerArguments, "unix", ["/s"], {})


class ClearExitSignalTests(unittest.TestCase):
    def test_clears(self) -> None:
        reactor = _IdleReactor()
        reactor._exitSignal = None  # type: ignore[attr-defined]
        self.assertFalse(twistedinternals.clearExitSignal(reactor))
        # What the reactor's SIGTERM handler records before it stops.
        reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        self.assertTrue(twistedinternals.clearExitSignal(reactor))
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]

    def test_noAttribute(self) -> None:
        self.assertFalse(twistedinternals.clearExitSignal(object()))


class SendBufferTests(unittest.TestCase):
    """
    The buffer state on a real connected TCP socket: empty, then holding
    what C{write} could not send yet.
    """

    def test_emptyThenBuffered(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind((LOCALHOST, 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        self.addCleanup(peer.close)
        sender.setblocking(False)
        connection = tcp.Connection(sender, None, _IdleReactor())  # type: ignore[arg-type]
        self.addCleanup(sender.close)
        connection.connected = True  # as tcp.Server and tcp.Client set it
        self.assertTrue(twistedinternals.sendBufferEmpty(connection))
        self.assertEqual(twistedinternals.bufferedBytes(connection), 0)
        # write() only buffers: nothing is sent until the reactor runs.
        connection.write(b"x" * 1000)
        self.assertFalse(twistedinternals.sendBufferEmpty(connection))
        self.assertEqual(twistedinternals.bufferedBytes(connection), 1000)
