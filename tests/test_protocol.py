"""
Unit tests of the server protocol and factory over in-memory transports.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.frame import frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.packet import Conn, ConnAck, encode
from tcpdemo.protocol import TcpDemoServerFactory, TcpDemoServerProtocol

from .support import ackFrame, submitFrame

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class RecordingTransport(StringTransport):
    """
    A StringTransport that keeps each write apart and, like a real TCP
    transport, pauses its streaming producer when more than C{bufferSize}
    bytes are unsent.  L{drain} plays the kernel taking the bytes.
    """

    bufferSize = 65536

    def __init__(self) -> None:
        StringTransport.__init__(self, peerAddress=PEER)
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        StringTransport.write(self, data)
        if (
            self.producer is not None
            and self.streaming
            and self.producerState == "producing"
            and len(self.io.getvalue()) > self.bufferSize
        ):
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        if self.producer is not None and self.producerState == "paused":
            self.producer.resumeProducing()
        return data

    def abortConnection(self) -> None:
        self.aborted = True
        StringTransport.abortConnection(self)


class CountingCounter:
    """
    Stands in for a prometheus Counter to count calls, not just totals.
    """

    def __init__(self) -> None:
        self.calls: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.calls.append(amount)

    @property
    def total(self) -> float:
        return sum(self.calls)


class ProtocolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.events: list[dict[str, Any]] = []
        self.patch(TcpDemoServerProtocol, "log", Logger(observer=self.events.append))  # type: ignore[arg-type]
        self.factory = self.makeFactory()

    def makeFactory(self, **kwargs: Any) -> TcpDemoServerFactory:
        return TcpDemoServerFactory(
            metrics=ServerMetrics.create(CollectorRegistry()), reactor=self.clock, **kwargs
        )

    def connect(
        self, factory: TcpDemoServerFactory | None = None
    ) -> tuple[TcpDemoServerProtocol, RecordingTransport]:
        factory = factory or self.factory
        protocol = factory.buildProtocol(PEER)
        assert protocol is not None
        transport = RecordingTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def value(self, name: str, **labels: str) -> float:
        result = self.factory.metrics.registry.get_sample_value(name, labels)
        assert result is not None, name
        return result

    def errors(self, reason: str) -> float:
        return self.value("tcpdemo_protocol_errors_total", reason=reason)

    def warnings(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]


class AckTests(ProtocolTestCase):
    def test_vectors(self) -> None:
        """
        The acks for docs/protocol.md's vectors, byte for byte.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(bytes.fromhex("00000012023030303030303031") + b"hello")
        self.assertEqual(transport.drain(), bytes.fromhex("0000000e81303030303030303100"))
        protocol.dataReceived(bytes.fromhex("0000000d023030303030303032"))
        self.assertEqual(transport.drain(), bytes.fromhex("0000000e81303030303030303200"))
        protocol.dataReceived(
            bytes.fromhex("0000000e023030303030303033610000000f0230303030303030346262")
        )
        self.assertEqual(
            transport.drain(),
            bytes.fromhex("0000000e813030303030303033000000000e81303030303030303400"),
        )

    def test_oneWritePerRead(self) -> None:
        """
        All acks earned by one read go out in one write, in order, and each
        counter moves once per read by the number of frames.
        """
        req, rsp = CountingCounter(), CountingCounter()
        self.factory.metrics.req_recv = req  # type: ignore[assignment]
        self.factory.metrics.rsp_send = rsp  # type: ignore[assignment]
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(submitFrame(i, b"x" * (i % 7)) for i in range(1, 501)))
        self.assertEqual(len(transport.writes), 1)
        self.assertEqual(transport.writes[0], b"".join(ackFrame(i) for i in range(1, 501)))
        self.assertEqual((req.calls, rsp.calls), ([500], [500]))

    def test_splitFrames(self) -> None:
        """
        A frame split across reads is acked once it is complete; a read that
        completes no frame writes nothing.
        """
        protocol, transport = self.connect()
        data = submitFrame(1, b"payload") + submitFrame(2)
        protocol.dataReceived(data[:10])
        self.assertEqual(transport.writes, [])
        protocol.dataReceived(data[10:25])
        self.assertEqual(transport.drain(), ackFrame(1))
        protocol.dataReceived(data[25:])
        self.assertEqual(transport.drain(), ackFrame(2))

    def test_idIsOpaque(self) -> None:
        """
        Any 8 bytes are an id, echoed exactly.
        """
        protocol, transport = self.connect()
        ident = bytes(range(248, 256))
        protocol.dataReceived(frame(b"\x02" + ident + b"data"))
        self.assertEqual(transport.drain(), frame(b"\x81" + ident + b"\x00"))

    def test_connAck(self) -> None:
        """
        Conn is answered with ConnAck(0), in order among the SubmitAcks.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            submitFrame(1) + frame(encode(Conn())) + submitFrame(2) + frame(encode(Conn(b"t")))
        )
        connAck = frame(encode(ConnAck(0)))
        self.assertEqual(transport.drain(), ackFrame(1) + connAck + ackFrame(2) + connAck)
        self.assertFalse(transport.disconnecting)

    def test_metrics(self) -> None:
        protocol, transport = self.connect()
        data = submitFrame(1, b"abc") + submitFrame(2)
        protocol.dataReceived(data)
        self.assertEqual(self.value("tcpdemo_req_recv_total"), 2)
        self.assertEqual(self.value("tcpdemo_rsp_send_total"), 2)
        self.assertEqual(self.value("tcpdemo_bytes_received_total"), len(data))
        self.assertEqual(self.value("tcpdemo_bytes_sent_total"), 28)
        self.assertEqual(self.value("tcpdemo_client_connected"), 1)
        self.assertEqual(self.value("tcpdemo_connections_total"), 1)
        protocol.connectionLost()
        self.assertEqual(self.value("tcpdemo_client_connected"), 0)


class BadInputTests(ProtocolTestCase):
    """
    Each bad input of docs/protocol.md: the acks owed before it are sent, then
    that connection alone is closed, counted by reason and logged once.
    """

    def assertRefused(self, bad: bytes, reason: str, logged: str) -> None:
        protocol, transport = self.connect()
        other, otherTransport = self.connect()
        protocol.dataReceived(submitFrame(1) + submitFrame(2) + bad + submitFrame(3))
        self.assertEqual(transport.value(), ackFrame(1) + ackFrame(2))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer, "producer left registered: close would hang")
        # Nothing more is read from it.
        protocol.dataReceived(submitFrame(4))
        self.assertEqual(transport.value(), ackFrame(1) + ackFrame(2))
        self.assertEqual(self.value("tcpdemo_protocol_errors_total", reason=reason), 1)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("127.0.0.1:40000", warnings[0])
        self.assertIn(reason, warnings[0])
        self.assertIn(logged, warnings[0])
        # The other connection is untouched.
        other.dataReceived(submitFrame(9))
        self.assertEqual(otherTransport.value(), ackFrame(9))
        self.assertFalse(otherTransport.disconnecting)

    def test_unknownCommand(self) -> None:
        for command in (0x00, 0x03, 0x7F, 0x82, 0xFF):
            self.setUp()
            bad = frame(bytes([command]) + b"x" * 8)
            self.assertRefused(bad, "unknown_command", f"0x{command:02x}")

    def test_connAckToServer(self) -> None:
        self.assertRefused(frame(encode(ConnAck(0))), "unexpected_command", "ConnAck")

    def test_submitAckToServer(self) -> None:
        self.assertRefused(ackFrame(7), "unexpected_command", "SubmitAck")

    def test_shortSubmit(self) -> None:
        for body in (b"", b"1234567"):
            self.setUp()
            self.assertRefused(frame(b"\x02" + body), "malformed_packet", body.hex() or "empty")

    def test_negativeLength(self) -> None:
        self.assertRefused(b"\xff\xff\xff\xff", "bad_length", "-1")

    def test_smallLengths(self) -> None:
        for length in (0, 1, 4):
            self.setUp()
            self.assertRefused(length.to_bytes(4, "big") + b"\x02", "bad_length", str(length))

    def test_tooLarge(self) -> None:
        for length in (self.factory.maxFrameLength + 1, 2**31 - 1):
            self.setUp()
            self.assertRefused(length.to_bytes(4, "big") + b"\x02", "frame_too_large", str(length))

    def test_tooLargeNotBuffered(self) -> None:
        """
        The body of an oversized frame is never buffered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived((2**31 - 1).to_bytes(4, "big") + b"\x02" * 100000)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol._unprocessed, b"")

    def test_configuredLimit(self) -> None:
        factory = self.makeFactory(maxFrameLength=100)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(submitFrame(1, b"x" * 87))  # exactly 100 bytes
        self.assertEqual(transport.value(), ackFrame(1))
        protocol.dataReceived(submitFrame(2, b"x" * 88))
        self.assertTrue(transport.disconnecting)


class BackpressureTests(ProtocolTestCase):
    def test_pauseAndResume(self) -> None:
        """
        The protocol is the transport's streaming producer: once the unsent
        acks pass the write-buffer limit, reading pauses (and is counted);
        when they drain it resumes; no ack is lost.
        """
        factory = self.makeFactory(writeBufferLimit=1400)
        protocol, transport = self.connect(factory)
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)
        self.assertEqual(transport.bufferSize, 1400)
        protocol.dataReceived(b"".join(submitFrame(i) for i in range(1, 101)))
        self.assertEqual(transport.producerState, "producing")  # exactly 1400 bytes
        protocol.dataReceived(submitFrame(101))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(
            factory.metrics.registry.get_sample_value("tcpdemo_backpressure_pauses_total"), 1
        )
        received = transport.drain()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(received, b"".join(ackFrame(i) for i in range(1, 102)))

    def test_pausedMidBuffer(self) -> None:
        """
        Frames left unparsed when reading pauses are answered on resume.
        """
        protocol, transport = self.connect()
        protocol.pauseProducing()
        protocol.dataReceived(submitFrame(1) + submitFrame(2))
        self.assertEqual(transport.value(), b"")
        transport.drain()
        protocol.resumeProducing()
        self.assertEqual(transport.value(), ackFrame(1) + ackFrame(2))


class IdleTimeoutTests(ProtocolTestCase):
    def test_idle(self) -> None:
        factory = self.makeFactory(idleTimeout=30)
        protocol, transport = self.connect(factory)
        self.clock.advance(20)
        protocol.dataReceived(submitFrame(1))
        self.clock.advance(20)
        self.assertFalse(transport.aborted)
        self.clock.advance(11)
        self.assertTrue(transport.aborted)
        self.assertEqual(
            factory.metrics.registry.get_sample_value("tcpdemo_idle_timeouts_total"), 1
        )

    def test_offByDefault(self) -> None:
        protocol, transport = self.connect()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        protocol.connectionLost()


class MaxConnectionsTests(ProtocolTestCase):
    def test_refuseBeyond(self) -> None:
        factory = self.makeFactory(maxConnections=2)
        factoryEvents: list[dict[str, Any]] = []
        self.patch(TcpDemoServerFactory, "log", Logger(observer=factoryEvents.append))  # type: ignore[arg-type]
        first, _ = self.connect(factory)
        self.connect(factory)
        for _ in range(5):
            self.assertIsNone(factory.buildProtocol(PEER))
        self.assertEqual(
            factory.metrics.registry.get_sample_value("tcpdemo_connections_refused_total"), 5
        )
        # One log line for the burst, not one per refusal.
        self.assertEqual(len(factoryEvents), 1)
        first.connectionLost()
        self.connect(factory)  # room for one again
        self.clock.advance(factory.refusalLogInterval)
        self.assertIsNone(factory.buildProtocol(PEER))
        self.assertEqual(len(factoryEvents), 2)


class AuthTests(ProtocolTestCase):
    def setUp(self) -> None:
        ProtocolTestCase.setUp(self)
        self.factory = self.makeFactory(authToken=b"s3cret")

    def test_submitBeforeConn(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(submitFrame(1))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.errors("unexpected_command"), 1)

    def test_wrongToken(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(frame(encode(Conn(b"guess"))) + submitFrame(1))
        self.assertEqual(transport.value(), frame(encode(ConnAck(1))))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.value("tcpdemo_protocol_errors_total", reason="auth_failed"), 1)
        self.assertNotIn("s3cret", " ".join(self.warnings()))

    def test_rightToken(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(frame(encode(Conn(b"s3cret"))) + submitFrame(1))
        self.assertEqual(transport.value(), frame(encode(ConnAck(0))) + ackFrame(1))
        self.assertFalse(transport.disconnecting)


class DrainTests(ProtocolTestCase):
    def test_drainAnswersBufferedFrames(self) -> None:
        """
        On shutdown, complete frames already received are answered, even
        while reading was paused; a partial frame is not; then it closes.
        """
        protocol, transport = self.connect()
        protocol.pauseProducing()
        protocol.dataReceived(submitFrame(1) + submitFrame(2) + submitFrame(3)[:5])
        d = self.factory.drainAll()
        self.assertEqual(transport.value(), ackFrame(1) + ackFrame(2))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertNoResult(d)
        protocol.connectionLost()
        self.successResultOf(d)

    def test_drainNothing(self) -> None:
        self.successResultOf(self.factory.drainAll())


class HalfClosingTransport(RecordingTransport):
    """
    A transport that, like TCP, can shut its write side alone.
    """

    writeClosed = False
    reading = True

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def pauseProducing(self) -> None:
        self.reading = False
        RecordingTransport.pauseProducing(self)

    def resumeProducing(self) -> None:
        self.reading = True
        RecordingTransport.resumeProducing(self)


class LingeringCloseTests(ProtocolTestCase):
    """
    Closing while the peer still sends would reset the connection and can
    destroy acks the peer has not read yet: the server shuts its write side,
    drops further input, and closes when the peer does or the linger ends.
    """

    def connectHalfClosing(self) -> tuple[TcpDemoServerProtocol, HalfClosingTransport]:
        protocol = self.factory.buildProtocol(PEER)
        assert protocol is not None
        transport = HalfClosingTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_lingerThenAbort(self) -> None:
        protocol, transport = self.connectHalfClosing()
        protocol.dataReceived(submitFrame(1) + b"\x00\x00\x00\x05\x09" + submitFrame(2))
        self.assertEqual(transport.value(), ackFrame(1))
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(transport.reading, "input must be drained, not left to cause a reset")
        protocol.dataReceived(submitFrame(3))
        self.assertEqual(transport.value(), ackFrame(1))
        # However slowly the peer reads its acks, the linger only starts
        # once they are all written.
        self.clock.advance(self.factory.lingerTimeout * 10)
        self.assertFalse(transport.aborted)
        protocol.writeConnectionLost()
        self.clock.advance(self.factory.lingerTimeout)
        self.assertTrue(transport.aborted)

    def test_noHalfCloseBeneath(self) -> None:
        """
        A transport that only passes a half-close through from the one
        beneath it (TLS over TCP) is closed whole, with a bounded wait.
        """
        protocol, transport = self.connect()
        transport.loseWriteConnection = lambda: self.fail("half-closed beneath TLS")  # type: ignore[attr-defined]
        protocol.dataReceived(b"\x00\x00\x00\x05\x09")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(self.factory.lingerTimeout)
        self.assertTrue(transport.aborted)

    def test_peerClosesFirst(self) -> None:
        protocol, transport = self.connectHalfClosing()
        protocol.dataReceived(b"\x00\x00\x00\x05\x09")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_halfCloseAfterSubmits(self) -> None:
        """
        A client that shuts its sending side gets its acks, then the close.
        """
        protocol, transport = self.connectHalfClosing()
        protocol.dataReceived(submitFrame(1) + submitFrame(2))
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), ackFrame(1) + ackFrame(2))
        self.assertTrue(transport.disconnecting)


class DirectionTests(ProtocolTestCase):
    def test_malformedAckIsUnexpected(self) -> None:
        """
        An ack sent to the server is refused for its direction, even when
        its body is malformed too.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(frame(b"\x81" + b"short"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.errors("unexpected_command"), 1)
        self.assertEqual(self.value("tcpdemo_protocol_errors_total", reason="malformed_packet"), 0)
