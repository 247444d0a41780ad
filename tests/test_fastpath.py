"""
The server's fast paths (the pure L{submitRunAcks} for runs of equal
Submits, then L{scanSubmits}, together L{pureSubmitAcks}; or the compiled
C{submitAcks}, see tests/test_scan.py) must make exactly the decisions of
the general path (the frame layer, then L{decode}) on every input, and
answer the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import protocol, scan
from tcpdemo.frame import FrameReceiver, frame
from tcpdemo.metrics import ServerMetrics
from tcpdemo.packet import ProtocolError, Submit, decode
from tcpdemo.protocol import TcpDemoServerFactory, TcpDemoServerProtocol
from tcpdemo.scan import MIN_RUN
from tcpdemo.scan import pureScanSubmits as scanSubmits
from tcpdemo.scan import pureSubmitRunAcks as submitRunAcks

from .support import ackFrame, submitFrame
from .test_protocol import PEER, RecordingTransport

ids = st.binary(min_size=8, max_size=8)


@st.composite
def uniformRun(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(0, 40))
    return b"".join(submitFrame(i, b"u" * size) for i in draw(st.lists(ids, max_size=30)))


anyFrame = st.one_of(
    st.builds(submitFrame, ids, st.binary(max_size=40)),
    uniformRun(),
    st.just(frame(b"\x01")),
    st.builds(lambda body: frame(b"\x02" + body), st.binary(max_size=7)),
    st.builds(
        lambda c, body: frame(bytes([c]) + body), st.integers(0, 255), st.binary(max_size=12)
    ),
    st.sampled_from(
        [b"\xff\xff\xff\xff", b"\x00\x00\x00\x04", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]
    ),
    st.binary(max_size=20),
)
streams = st.lists(anyFrame, max_size=25).map(b"".join)
maxLengths = st.sampled_from([13, 20, 64, 1024 * 1024])


class GeneralPath(FrameReceiver):
    """
    The frame layer and decode, one frame at a time, stopping at the first
    frame that is not a well-formed Submit.
    """

    def __init__(self, maxLength: int) -> None:
        self.MAX_LENGTH = maxLength
        self.ids: list[bytes] = []
        self.consumed = 0
        self.stopped = False

    def stringReceived(self, string: bytes) -> None:
        if self.stopped:
            return
        try:
            packet = decode(string)
        except ProtocolError:
            packet = None
        if isinstance(packet, Submit):
            self.ids.append(packet.id)
            self.consumed += len(string) + 4
        else:
            self.stopped = True
            self.paused = True

    def badLengthReceived(self, length: int) -> None:
        self.stopped = True


class ScanTests(SynchronousTestCase):
    def fastPaths(self, data: bytes, maxLength: int) -> tuple[bytes, int]:
        """
        What the server's fast paths answer for C{data}, and how far they
        read: a run of equal Submits in bulk, then the rest one by one.
        """
        end, count, acks = submitRunAcks(data, maxLength)
        found: list[bytes] = []
        offset = scanSubmits(data, maxLength, found, end)
        return acks + b"".join(ackFrame(i) for i in found), offset

    @given(streams, maxLengths)
    def test_agreesWithGeneralPath(self, data: bytes, maxLength: int) -> None:
        general = GeneralPath(maxLength)
        general.dataReceived(data)
        self.assertEqual(
            self.fastPaths(data, maxLength),
            (b"".join(ackFrame(i) for i in general.ids), general.consumed),
        )

    @given(st.lists(ids, min_size=MIN_RUN, max_size=50), st.integers(0, 40), st.binary(max_size=30))
    def test_runOfEqualSubmits(self, idents: list[bytes], size: int, tail: bytes) -> None:
        """
        A run of MIN_RUN or more equal-sized Submits is answered in bulk,
        whatever follows.
        """
        data = b"".join(submitFrame(i, b"r" * size) for i in idents)
        end, count, acks = submitRunAcks(data + tail, 1 << 20)
        self.assertGreaterEqual(end, len(data))
        self.assertGreaterEqual(count, len(idents))
        self.assertEqual(acks[: 14 * len(idents)], b"".join(ackFrame(i) for i in idents))

    @given(st.lists(ids, min_size=2, max_size=50), st.integers(0, 40), st.binary(max_size=30))
    def test_minRun(self, idents: list[bytes], size: int, tail: bytes) -> None:
        """
        The shortest run taken in bulk is C{minRun}: a shorter one is left
        to L{scanSubmits}, which answers it all the same.
        """
        run = b"".join(submitFrame(i, b"r" * size) for i in idents)
        data = run + frame(b"\x09") + tail
        end, count, acks = submitRunAcks(data, 1 << 20)
        if len(idents) < MIN_RUN:
            self.assertEqual((end, count, acks), (0, 0, b""))
        else:
            self.assertEqual((end, count), (len(run), len(idents)))
        self.assertEqual(submitRunAcks(data, 1 << 20, 2)[:2], (len(run), len(idents)))
        answered = b"".join(ackFrame(i) for i in idents)
        self.assertEqual(self.fastPaths(data, 1 << 20), (answered, len(run)))

    def test_uniformRun(self) -> None:
        data = b"".join(submitFrame(b"%08d" % i, b"x" * 20) for i in range(1000))
        self.assertEqual(
            submitRunAcks(data + data[:10], 1 << 20),
            (len(data), 1000, b"".join(ackFrame(b"%08d" % i) for i in range(1000))),
        )

    def test_uniformRunThenOther(self) -> None:
        """
        A run of equal frames followed by another frame of the same size:
        the run is answered in bulk up to it, and the other frame stops it.
        """
        data = submitFrame(b"a" * 8, b"xy") * 20 + frame(b"\x09" + b"b" * 10)
        self.assertEqual(submitRunAcks(data, 1 << 20), (20 * 15, 20, ackFrame(b"a" * 8) * 20))
        self.assertEqual(self.fastPaths(data, 1 << 20), (ackFrame(b"a" * 8) * 20, 20 * 15))


class SlowProtocol(TcpDemoServerProtocol):
    """
    The server without its fast path: every frame through the frame layer.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        FrameReceiver.dataReceived(self, data)


def run(
    protocolClass: type[TcpDemoServerProtocol], data: bytes, cuts: list[int], maxLength: int
) -> tuple[bytes, bool, dict[str, float]]:
    registry = CollectorRegistry()
    factory = TcpDemoServerFactory(
        metrics=ServerMetrics.create(registry), reactor=Clock(), maxFrameLength=maxLength
    )
    factory.protocol = protocolClass
    protocol = factory.buildProtocol(PEER)
    assert protocol is not None
    transport = RecordingTransport()
    protocol.makeConnection(transport)
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        protocol.dataReceived(data[start:cut])
        start = cut
    errors = {
        s.labels["reason"]: s.value
        for m in registry.collect()
        if m.name == "tcpdemo_protocol_errors"
        for s in m.samples
        if s.name.endswith("_total")
    }
    return transport.value(), transport.disconnecting, errors


@contextmanager
def _purePath() -> Iterator[None]:
    """
    The server with the pure-Python versions, whatever L{scan} chose.
    """
    saved = protocol.submitAcks, getattr(protocol, "_acks")  # noqa: B009
    protocol.submitAcks = scan.pureSubmitAcks
    setattr(protocol, "_acks", scan.pureAcks)  # noqa: B010
    try:
        yield
    finally:
        protocol.submitAcks = saved[0]
        setattr(protocol, "_acks", saved[1])  # noqa: B010


class ProtocolEquivalenceTests(SynchronousTestCase):
    @given(streams, st.lists(st.integers(0, 2000), max_size=8), maxLengths)
    def test_sameAnswers(self, data: bytes, cuts: list[int], maxLength: int) -> None:
        """
        With or without the fast path, the same bytes answer the same
        stream, cut anywhere, and the same errors are counted.
        """
        cuts = [c for c in cuts if c <= len(data)]
        slow = run(SlowProtocol, data, cuts, maxLength)
        self.assertEqual(run(TcpDemoServerProtocol, data, cuts, maxLength), slow)
        # And with the pure versions where the compiled ones are in use.
        with _purePath():
            self.assertEqual(run(TcpDemoServerProtocol, data, cuts, maxLength), slow)
