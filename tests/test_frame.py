"""
Tests for L{tcpdemo.frame}: the length prefix that counts itself, frames
split and joined at any byte, and bad lengths.
"""

from __future__ import annotations

from typing import Callable

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.frame import (
    DEFAULT_MAX_FRAME_LENGTH,
    HEADER_SIZE,
    LENGTH,
    MIN_FRAME_LENGTH,
    FrameReceiver,
    frame,
)
from tcpdemo.packet import Submit, decode

from .test_packet import SUBMIT_1, SUBMIT_2, TWO_SUBMITS

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class Recorder(FrameReceiver):
    """
    A L{FrameReceiver} that records what it is told, and keeps the default
    reaction to a bad length (closing the connection).
    """

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.badLengths: list[int] = []
        self.limitsExceeded: list[int] = []
        self.reads = 0

    def stringReceived(self, string: bytes) -> None:
        self.payloads.append(string)

    def badLengthReceived(self, length: int) -> None:
        self.badLengths.append(length)
        super().badLengthReceived(length)

    def lengthLimitExceeded(self, length: int) -> None:
        self.limitsExceeded.append(length)
        super().lengthLimitExceeded(length)

    def endOfRead(self) -> None:
        self.reads += 1


class Tolerant(Recorder):
    """
    A receiver that records bad lengths but never closes the connection, so
    that it goes on parsing whatever follows.
    """

    def badLengthReceived(self, length: int) -> None:
        self.badLengths.append(length)


def connected(
    factory: Callable[[], Recorder] = Recorder, maxLength: int | None = None
) -> tuple[Recorder, StringTransport]:
    receiver = factory()
    if maxLength is not None:
        receiver.MAX_LENGTH = maxLength
    transport = StringTransport()
    receiver.makeConnection(transport)
    return receiver, transport


def feed(receiver: FrameReceiver, chunks: list[bytes]) -> None:
    for chunk in chunks:
        receiver.dataReceived(chunk)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """
    Split C{data} at C{points} (any order, repeats giving empty chunks).
    """
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def model(stream: bytes, maxLength: int) -> tuple[list[bytes], list[int]]:
    """
    What a receiver that closes on a bad length should deliver for C{stream}:
    every complete frame up to the first bad length, and that length.
    """
    payloads: list[bytes] = []
    offset = 0
    while len(stream) - offset >= HEADER_SIZE:
        length = int.from_bytes(stream[offset : offset + HEADER_SIZE], "big", signed=True)
        if length < MIN_FRAME_LENGTH or length > maxLength:
            return payloads, [length]
        if offset + length > len(stream):
            break
        payloads.append(stream[offset + HEADER_SIZE : offset + length])
        offset += length
    return payloads, []


# A frame payload is at least the command byte.
frame_payloads = st.binary(min_size=1, max_size=300)

#: Length values that are bad with the default limit.
bad_lengths = st.one_of(
    st.integers(min_value=INT32_MIN, max_value=MIN_FRAME_LENGTH - 1),
    st.integers(min_value=DEFAULT_MAX_FRAME_LENGTH + 1, max_value=INT32_MAX),
    st.sampled_from([0, 1, 2, 3, 4, -1, INT32_MIN, DEFAULT_MAX_FRAME_LENGTH + 1, INT32_MAX]),
)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """
    C{data} cut at points drawn by Hypothesis: anything from one chunk to one
    byte per chunk, with empty reads now and then.
    """
    if not data:
        return [data]
    points = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=len(data)))
    return cut(data, points)


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """
    A list of valid frame payloads, and their frames concatenated then cut
    into chunks.
    """
    payloads = draw(st.lists(frame_payloads, max_size=20))
    stream = b"".join(frame(p) for p in payloads)
    return payloads, draw(chunked(stream))


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """
    A byte stream made of valid frames, bare length fields (good, bad, or
    beyond the stream's end) and arbitrary bytes, in any order.
    """
    segment = st.one_of(
        frame_payloads.map(frame),
        st.integers(min_value=INT32_MIN, max_value=INT32_MAX).map(LENGTH.pack),
        st.integers(min_value=-8, max_value=80).map(LENGTH.pack),
        bad_lengths.map(LENGTH.pack),
        st.binary(max_size=40),
    )
    return b"".join(draw(st.lists(segment, max_size=12)))


class VectorTests(SynchronousTestCase):
    """
    The framing of docs/protocol.md's test vectors.
    """

    def test_frame(self) -> None:
        """
        The length counts itself: a 9-byte payload gets 13.
        """
        self.assertEqual(frame(b"123456789"), b"\x00\x00\x00\x0d123456789")
        self.assertEqual(frame(b"\x01"), b"\x00\x00\x00\x05\x01")

    def test_submit(self) -> None:
        receiver, transport = connected()
        receiver.dataReceived(SUBMIT_1)
        self.assertEqual(receiver.payloads, [SUBMIT_1[4:]])
        self.assertEqual(decode(receiver.payloads[0]), Submit(b"00000001", b"hello"))
        self.assertEqual(receiver._unprocessed, b"")
        self.assertFalse(transport.disconnecting)

    def test_emptySubmit(self) -> None:
        receiver, _ = connected()
        receiver.dataReceived(SUBMIT_2)
        self.assertEqual([decode(p) for p in receiver.payloads], [Submit(b"00000002", b"")])

    def test_twoSubmitsInOneWrite(self) -> None:
        """
        Two frames in one read give exactly two payloads, in order, and one
        C{endOfRead}.
        """
        receiver, transport = connected()
        receiver.dataReceived(TWO_SUBMITS)
        self.assertEqual(
            receiver.payloads,
            [bytes.fromhex("02 3030303030303033 61"), bytes.fromhex("02 3030303030303034 6262")],
        )
        self.assertEqual(
            [decode(p) for p in receiver.payloads],
            [Submit(b"00000003", b"a"), Submit(b"00000004", b"bb")],
        )
        self.assertEqual(receiver.reads, 1)
        self.assertEqual(receiver._unprocessed, b"")
        self.assertFalse(transport.disconnecting)

    def test_everySplit(self) -> None:
        """
        The two-Submit write split in two at every byte gives the same two
        payloads.
        """
        expected = [TWO_SUBMITS[4:14], TWO_SUBMITS[18:]]
        for point in range(len(TWO_SUBMITS) + 1):
            receiver, _ = connected()
            feed(receiver, cut(TWO_SUBMITS, [point]))
            self.assertEqual(receiver.payloads, expected, point)
            self.assertEqual(receiver.reads, 2)

    def test_byteByByte(self) -> None:
        receiver, _ = connected()
        stream = SUBMIT_1 + SUBMIT_2 + TWO_SUBMITS
        for i in range(len(stream)):
            receiver.dataReceived(stream[i : i + 1])
        self.assertEqual(len(receiver.payloads), 4)
        self.assertEqual(receiver.reads, len(stream))

    def test_sendString(self) -> None:
        """
        C{sendString} writes one frame whose length counts itself.
        """
        receiver, transport = connected()
        receiver.sendString(SUBMIT_1[4:])
        self.assertEqual(transport.value(), SUBMIT_1)


class StreamTests(SynchronousTestCase):
    """
    Frames cut at any bytes, and any bytes at all.
    """

    @given(framed_streams())
    @example(([b"\x02"], [b"\x00", b"\x00", b"\x00", b"\x05", b"\x02"]))
    @example(([b"\x02", b"\x01"], [b"\x00\x00\x00\x05\x02\x00", b"\x00\x00\x05\x01"]))
    def test_chunked(self, case: tuple[list[bytes], list[bytes]]) -> None:
        """
        Valid frames, concatenated and cut anywhere, give exactly their
        payloads in order, and C{endOfRead} once per read.
        """
        payloads, chunks = case
        receiver, transport = connected()
        feed(receiver, chunks)
        self.assertEqual(receiver.payloads, payloads)
        self.assertEqual(receiver.reads, len(chunks))
        self.assertEqual(receiver.badLengths, [])
        self.assertEqual(receiver._unprocessed, b"")
        self.assertFalse(transport.disconnecting)

    @given(framed_streams(), st.integers(min_value=0, max_value=20))
    def test_chunkedWithLeftover(self, case: tuple[list[bytes], list[bytes]], keep: int) -> None:
        """
        The start of a frame not yet complete stays buffered, and is not
        delivered.
        """
        payloads, chunks = case
        extra = frame(b"\x02" + b"z" * 20)[:keep]
        receiver, _ = connected()
        feed(receiver, [*chunks, extra])
        self.assertEqual(receiver.payloads, payloads)
        self.assertEqual(receiver._unprocessed, extra)

    @given(st.data())
    def test_chunkedAtLimit(self, data: st.DataObject) -> None:
        """
        With a small limit, frames right at it pass and the first one over it
        stops everything.
        """
        limit = data.draw(st.integers(min_value=MIN_FRAME_LENGTH, max_value=40))
        sizes = data.draw(
            st.lists(st.integers(min_value=MIN_FRAME_LENGTH - HEADER_SIZE, max_value=limit - 3))
        )
        payloads = [bytes([1 + i % 250]) * size for i, size in enumerate(sizes)]
        stream = b"".join(frame(p) for p in payloads)
        chunks = data.draw(chunked(stream))
        receiver, transport = connected(maxLength=limit)
        feed(receiver, chunks)
        expected, bad = model(stream, limit)
        self.assertEqual(receiver.payloads, expected)
        self.assertEqual(receiver.badLengths, bad)
        self.assertEqual(transport.disconnecting, bool(bad))
        self.assertEqual(receiver.reads, len(chunks))

    @given(st.data(), hostile_streams())
    def test_hostile(self, data: st.DataObject, stream: bytes) -> None:
        """
        Any bytes in any chunks: the receiver never raises, delivers exactly
        the frames before the first bad length, reports that length once,
        closes the connection, and buffers less than one frame.
        """
        limit = data.draw(st.sampled_from([DEFAULT_MAX_FRAME_LENGTH, 64]))
        chunks = data.draw(chunked(stream))
        receiver, transport = connected(maxLength=limit)
        for chunk in chunks:
            receiver.dataReceived(chunk)
            self.assertLess(len(receiver._unprocessed), max(limit, HEADER_SIZE))
        expected, bad = model(stream, limit)
        self.assertEqual(receiver.payloads, expected)
        self.assertEqual(receiver.badLengths, bad)
        self.assertEqual(transport.disconnecting, bool(bad))
        self.assertEqual(receiver.reads, len(chunks))
        if bad and bad[0] > limit:
            self.assertEqual(receiver.limitsExceeded, bad)
        else:
            self.assertEqual(receiver.limitsExceeded, [])

    @given(st.data(), st.binary(max_size=400))
    def test_arbitraryBytesNeverRaise(self, data: st.DataObject, stream: bytes) -> None:
        """
        Arbitrary bytes, to a receiver that does not close on a bad length:
        it only ever delivers payloads or reports bad lengths.
        """
        chunks = data.draw(chunked(stream))
        receiver, transport = connected(Tolerant, maxLength=64)
        feed(receiver, chunks)
        self.assertEqual(receiver.reads, len(chunks))
        for length in receiver.badLengths:
            self.assertTrue(length < MIN_FRAME_LENGTH or length > 64, length)
        for payload in receiver.payloads:
            self.assertTrue(1 <= len(payload) <= 64 - HEADER_SIZE)
        self.assertFalse(transport.disconnecting)


class BadLengthTests(SynchronousTestCase):
    """
    Lengths below L{MIN_FRAME_LENGTH} (negative ones included) or above
    C{MAX_LENGTH}.
    """

    BAD = [0, 1, 2, 3, 4, -1, -2, INT32_MIN, DEFAULT_MAX_FRAME_LENGTH + 1, INT32_MAX]

    def test_badLengths(self) -> None:
        """
        Each bad length is reported with its value, nothing after it is
        delivered, nothing is kept, and the connection is closed.
        """
        for length in self.BAD:
            receiver, transport = connected()
            receiver.dataReceived(SUBMIT_1 + LENGTH.pack(length) + SUBMIT_2 + b"\x00" * 50)
            self.assertEqual(receiver.payloads, [SUBMIT_1[4:]], length)
            self.assertEqual(receiver.badLengths, [length])
            self.assertEqual(receiver._unprocessed, b"")
            self.assertTrue(transport.disconnecting, length)
            self.assertEqual(receiver.reads, 1)
            # Whatever comes after is never delivered nor kept.
            receiver.dataReceived(SUBMIT_2 * 3)
            self.assertEqual(receiver.payloads, [SUBMIT_1[4:]], length)
            self.assertEqual(receiver.badLengths, [length])
            self.assertLessEqual(len(receiver._unprocessed), HEADER_SIZE)
            self.assertEqual(receiver.reads, 2)

    def test_badLengthSplit(self) -> None:
        """
        A bad length arriving one byte at a time is seen once its four bytes
        are in.
        """
        for length in self.BAD:
            receiver, transport = connected()
            header = LENGTH.pack(length)
            for i in range(HEADER_SIZE - 1):
                receiver.dataReceived(header[i : i + 1])
            self.assertEqual(receiver.badLengths, [])
            self.assertFalse(transport.disconnecting)
            receiver.dataReceived(header[-1:])
            self.assertEqual(receiver.badLengths, [length])
            self.assertTrue(transport.disconnecting)

    def test_tooSmallDoesNotExceedLimit(self) -> None:
        """
        Lengths that are too small close the connection without calling
        Twisted's C{lengthLimitExceeded}; too large ones go through it.
        """
        for length in [0, 4, -1, INT32_MIN]:
            receiver, _ = connected()
            receiver.dataReceived(LENGTH.pack(length))
            self.assertEqual(receiver.limitsExceeded, [])
        for length in [DEFAULT_MAX_FRAME_LENGTH + 1, INT32_MAX]:
            receiver, _ = connected()
            receiver.dataReceived(LENGTH.pack(length))
            self.assertEqual(receiver.limitsExceeded, [length])

    def test_oversizedBodyNeverBuffered(self) -> None:
        """
        After a huge length, the body that follows is not buffered, however
        much of it arrives.
        """
        for length in [INT32_MAX, DEFAULT_MAX_FRAME_LENGTH + 1]:
            receiver, transport = connected()
            receiver.dataReceived(LENGTH.pack(length) + b"\x02" + b"x" * 65536)
            self.assertEqual(receiver._unprocessed, b"")
            for _ in range(64):
                receiver.dataReceived(b"x" * 65536)
                self.assertLessEqual(len(receiver._unprocessed), HEADER_SIZE)
            self.assertEqual(receiver.payloads, [])
            self.assertEqual(receiver.badLengths, [length])
            self.assertTrue(transport.disconnecting)

    def test_defaultClosesTransport(self) -> None:
        """
        An unmodified L{FrameReceiver} closes the connection on a bad length.
        """

        class Plain(FrameReceiver):
            def stringReceived(self, string: bytes) -> None:
                raise AssertionError("no payload expected")

        for length in self.BAD:
            receiver = Plain()
            transport = StringTransport()
            receiver.makeConnection(transport)
            receiver.dataReceived(LENGTH.pack(length) + SUBMIT_2)
            self.assertTrue(transport.disconnecting, length)

    def test_defaultEndOfRead(self) -> None:
        """
        The default C{endOfRead} does nothing.
        """

        class Plain(FrameReceiver):
            def stringReceived(self, string: bytes) -> None:
                pass

        receiver = Plain()
        receiver.makeConnection(StringTransport())
        receiver.dataReceived(SUBMIT_1)


class LimitTests(SynchronousTestCase):
    """
    C{MAX_LENGTH} bounds C{total_length}, the prefix included.
    """

    def test_default(self) -> None:
        self.assertEqual(FrameReceiver.MAX_LENGTH, DEFAULT_MAX_FRAME_LENGTH)
        self.assertEqual(MIN_FRAME_LENGTH, 5)
        self.assertEqual(HEADER_SIZE, 4)

    def test_exactlyMaxLength(self) -> None:
        """
        A frame of exactly C{MAX_LENGTH} bytes is accepted.
        """
        receiver, transport = connected()
        payload = b"\x02" + b"p" * (DEFAULT_MAX_FRAME_LENGTH - HEADER_SIZE - 1)
        framed = frame(payload)
        self.assertEqual(len(framed), DEFAULT_MAX_FRAME_LENGTH)
        receiver.dataReceived(framed[:1000])
        receiver.dataReceived(framed[1000:])
        self.assertEqual(receiver.payloads, [payload])
        self.assertEqual(receiver.badLengths, [])
        self.assertFalse(transport.disconnecting)

    def test_justOverMaxLength(self) -> None:
        receiver, transport = connected()
        receiver.dataReceived(frame(b"\x02" + b"p" * (DEFAULT_MAX_FRAME_LENGTH - HEADER_SIZE)))
        self.assertEqual(receiver.payloads, [])
        self.assertEqual(receiver.badLengths, [DEFAULT_MAX_FRAME_LENGTH + 1])
        self.assertTrue(transport.disconnecting)

    def test_smallestFrame(self) -> None:
        """
        A 5-byte frame (a command byte alone) is the smallest accepted.
        """
        receiver, transport = connected()
        receiver.dataReceived(b"\x00\x00\x00\x05\x01")
        self.assertEqual(receiver.payloads, [b"\x01"])
        self.assertFalse(transport.disconnecting)

    def test_customLimit(self) -> None:
        receiver, transport = connected(maxLength=20)
        receiver.dataReceived(frame(b"a" * 16) + frame(b"b" * 17))
        self.assertEqual(receiver.payloads, [b"a" * 16])
        self.assertEqual(receiver.badLengths, [21])
        self.assertTrue(transport.disconnecting)


class FlowTests(SynchronousTestCase):
    """
    Delivery stops when the transport is closing or the receiver is paused.
    """

    def test_loseConnectionStops(self) -> None:
        """
        Once C{stringReceived} closes the connection, the frames after it in
        the same read are not delivered.
        """

        class Closer(Recorder):
            def stringReceived(self, string: bytes) -> None:
                super().stringReceived(string)
                assert self.transport is not None
                self.transport.loseConnection()

        receiver, _ = connected(Closer)
        receiver.dataReceived(TWO_SUBMITS + SUBMIT_1)
        self.assertEqual(len(receiver.payloads), 1)
        self.assertEqual(receiver.reads, 1)
        # Nor later: what a closing connection still delivers is dropped.
        receiver.dataReceived(SUBMIT_2)
        self.assertEqual(len(receiver.payloads), 1)
        self.assertEqual(receiver._unprocessed, b"")
        self.assertEqual(receiver.reads, 2)

    def test_pauseAndResume(self) -> None:
        """
        Pausing in C{stringReceived} keeps the rest buffered; resuming
        delivers it.
        """

        class Pauser(Recorder):
            def stringReceived(self, string: bytes) -> None:
                super().stringReceived(string)
                self.pauseProducing()

        receiver, _ = connected(Pauser)
        receiver.dataReceived(TWO_SUBMITS + SUBMIT_1)
        self.assertEqual(receiver.payloads, [TWO_SUBMITS[4:14]])
        self.assertEqual(receiver._unprocessed, TWO_SUBMITS[14:] + SUBMIT_1)
        receiver.resumeProducing()
        self.assertEqual(len(receiver.payloads), 2)
        receiver.resumeProducing()
        receiver.resumeProducing()
        self.assertEqual(receiver.payloads, [TWO_SUBMITS[4:14], TWO_SUBMITS[18:], SUBMIT_1[4:]])
        self.assertEqual(receiver._unprocessed, b"")

    def test_endOfReadOncePerRead(self) -> None:
        """
        C{endOfRead} is called once per read: for an empty read, a read with
        no complete frame, one with several, and one with a bad length.
        """
        receiver, _ = connected()
        for chunk, reads in [
            (b"", 1),
            (SUBMIT_1[:3], 2),
            (SUBMIT_1[3:] + TWO_SUBMITS, 3),
            (LENGTH.pack(-1), 4),
        ]:
            receiver.dataReceived(chunk)
            self.assertEqual(receiver.reads, reads)
