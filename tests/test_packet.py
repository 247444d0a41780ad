"""
Tests for L{tcpdemo.packet}: the test vectors of docs/protocol.md, round trips of
every packet type, and that no input makes L{decode} fail other than with a
L{ProtocolError}.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import packet
from tcpdemo.frame import frame
from tcpdemo.packet import (
    COMMANDS,
    BadLength,
    Conn,
    ConnAck,
    FrameTooLarge,
    MalformedPacket,
    Packet,
    ProtocolError,
    Submit,
    SubmitAck,
    UnexpectedCommand,
    UnknownCommand,
    abbreviate,
    decode,
    encode,
)


def vector(text: str) -> bytes:
    """
    Bytes from hex as docs/protocol.md writes it, with spaces between fields.
    """
    return bytes.fromhex(text.replace(" ", ""))


# The test vectors of docs/protocol.md, copied as they are written there.
SUBMIT_1 = vector("00000012 02 3030303030303031 68656c6c6f")
SUBMIT_ACK_1 = vector("0000000e 81 3030303030303031 00")
SUBMIT_2 = vector("0000000d 02 3030303030303032")
SUBMIT_ACK_2 = vector("0000000e 81 3030303030303032 00")
TWO_SUBMITS = vector("0000000e 02 3030303030303033 61  0000000f 02 3030303030303034 6262")
TWO_SUBMIT_ACKS = vector("0000000e 81 3030303030303033 00  0000000e 81 3030303030303034 00")

# Not captured from the reference (it has no ConnAck body): this project's
# extension as docs/protocol.md's "Extensions" defines it.
CONN = vector("00000005 01")
CONN_ACK = vector("00000006 80 00")

#: Every vector: the framed bytes and the packet they carry.
VECTORS: list[tuple[bytes, Packet]] = [
    (SUBMIT_1, Submit(b"00000001", b"hello")),
    (SUBMIT_ACK_1, SubmitAck(b"00000001", 0)),
    (SUBMIT_2, Submit(b"00000002", b"")),
    (SUBMIT_ACK_2, SubmitAck(b"00000002", 0)),
    (TWO_SUBMITS[:14], Submit(b"00000003", b"a")),
    (TWO_SUBMITS[14:], Submit(b"00000004", b"bb")),
    (TWO_SUBMIT_ACKS[:14], SubmitAck(b"00000003", 0)),
    (TWO_SUBMIT_ACKS[14:], SubmitAck(b"00000004", 0)),
    (CONN, Conn()),
    (CONN_ACK, ConnAck(0)),
]


# Strategies for every packet type.
ids = st.binary(min_size=packet.ID_SIZE, max_size=packet.ID_SIZE)
results = st.integers(min_value=0, max_value=255)
conns = st.builds(Conn, st.binary())
conn_acks = st.builds(ConnAck, results)
submits = st.builds(Submit, ids, st.binary())
submit_acks = st.builds(SubmitAck, ids, results)
packets = st.one_of(conns, conn_acks, submits, submit_acks)

#: Payloads that start with a known command id, so that the body decoders
#: see arbitrary bodies much more often than with plain arbitrary bytes.
known_command_payloads = st.builds(
    lambda command, body: bytes((command,)) + body,
    st.sampled_from(sorted(COMMANDS)),
    st.binary(max_size=32),
)
payloads = st.one_of(st.binary(), known_command_payloads)


class VectorTests(SynchronousTestCase):
    """
    The test vectors of docs/protocol.md, byte for byte.
    """

    def test_commandIds(self) -> None:
        """
        The command ids are those on the wire, not those in the reference's
        comments: ConnAck is 0x80 and SubmitAck 0x81.
        """
        self.assertEqual(COMMANDS, {0x01: Conn, 0x02: Submit, 0x80: ConnAck, 0x81: SubmitAck})
        self.assertEqual(
            (packet.CONN, packet.SUBMIT, packet.CONN_ACK, packet.SUBMIT_ACK),
            (0x01, 0x02, 0x80, 0x81),
        )

    def test_encodeSubmit(self) -> None:
        """
        A Submit with id "00000001" and payload "hello" frames to the vector.
        """
        self.assertEqual(frame(encode(Submit(b"00000001", b"hello"))), SUBMIT_1)

    def test_encodeSubmitAck(self) -> None:
        """
        Its SubmitAck frames to the vector captured from the reference server.
        """
        self.assertEqual(frame(encode(SubmitAck(b"00000001", packet.RESULT_OK))), SUBMIT_ACK_1)

    def test_encodeEmptySubmit(self) -> None:
        """
        A Submit with an empty payload, and its ack.
        """
        self.assertEqual(frame(encode(Submit(b"00000002", b""))), SUBMIT_2)
        self.assertEqual(frame(encode(SubmitAck(b"00000002"))), SUBMIT_ACK_2)

    def test_encodeTwoSubmits(self) -> None:
        """
        Two Submits written together, and their two acks in order.
        """
        self.assertEqual(
            frame(encode(Submit(b"00000003", b"a"))) + frame(encode(Submit(b"00000004", b"bb"))),
            TWO_SUBMITS,
        )
        self.assertEqual(
            frame(encode(SubmitAck(b"00000003"))) + frame(encode(SubmitAck(b"00000004"))),
            TWO_SUBMIT_ACKS,
        )

    def test_encodeConnAndConnAck(self) -> None:
        """
        Conn is a bare command id; ConnAck carries a one-byte result.
        """
        self.assertEqual(frame(encode(Conn())), CONN)
        self.assertEqual(frame(encode(ConnAck(packet.RESULT_OK))), CONN_ACK)
        self.assertEqual(frame(encode(ConnAck(packet.RESULT_ERROR))), vector("00000006 80 01"))

    def test_encodeAll(self) -> None:
        """
        Every vector encodes byte for byte.
        """
        for framed, expected in VECTORS:
            self.assertEqual(frame(encode(expected)), framed, expected)

    def test_decodeAll(self) -> None:
        """
        Every vector's payload (after its four-byte length) decodes to its
        packet, and the length counts itself.
        """
        for framed, expected in VECTORS:
            self.assertEqual(int.from_bytes(framed[:4], "big"), len(framed))
            self.assertEqual(decode(framed[4:]), expected)

    def test_idIsOpaque(self) -> None:
        """
        The id is echoed as bytes, never parsed: non-ASCII and non-digit ids
        survive.
        """
        for raw in [b"\x00" * 8, b"\xff" * 8, b"abcdefgh", b" 1\r\n\t\x80z!"]:
            self.assertEqual(decode(encode(Submit(raw, b"x"))), Submit(raw, b"x"))
            self.assertEqual(decode(encode(SubmitAck(raw))).id, raw)  # type: ignore[union-attr]


class RoundTripTests(SynchronousTestCase):
    """
    Every packet survives an encode/decode round trip, and the encoding is
    the only one: decoding then encoding gives back the same bytes.
    """

    def assertRoundTrip(self, p: Packet) -> None:
        encoded = encode(p)
        self.assertEqual(encoded[0], packet.COMMAND_IDS[type(p)])
        self.assertEqual(decode(encoded), p)

    @given(conns)
    def test_conn(self, p: Conn) -> None:
        self.assertRoundTrip(p)

    @given(conn_acks)
    def test_connAck(self, p: ConnAck) -> None:
        self.assertRoundTrip(p)

    @given(submits)
    def test_submit(self, p: Submit) -> None:
        self.assertRoundTrip(p)
        self.assertEqual(encode(p), b"\x02" + p.id + p.payload)

    @given(submit_acks)
    def test_submitAck(self, p: SubmitAck) -> None:
        self.assertRoundTrip(p)
        self.assertEqual(encode(p), b"\x81" + p.id + bytes((p.result,)))

    @given(packets)
    def test_framedLength(self, p: Packet) -> None:
        """
        A framed packet's length field is the length of the whole frame.
        """
        framed = frame(encode(p))
        self.assertEqual(int.from_bytes(framed[:4], "big", signed=True), len(framed))

    @given(payloads)
    def test_canonical(self, payload: bytes) -> None:
        """
        Whatever L{decode} accepts, L{encode} gives back unchanged.
        """
        try:
            p = decode(payload)
        except ProtocolError:
            return
        self.assertEqual(encode(p), payload)


class DecodeErrorTests(SynchronousTestCase):
    """
    Bad payloads raise L{ProtocolError} subclasses whose messages name the
    offending bytes, and nothing else.
    """

    @given(payloads)
    @example(b"")
    @example(b"\x02")
    @example(b"\x02" + b"0" * 7)
    @example(b"\x80")
    @example(b"\x80\x00\x00")
    @example(b"\x81" + b"0" * 8)
    @example(b"\x81" + b"0" * 10)
    @example(b"\x00")
    @example(b"\xff" * 100)
    def test_arbitraryBytes(self, payload: bytes) -> None:
        """
        Arbitrary bytes decode to a packet or raise a L{ProtocolError}: never
        C{IndexError}, C{struct.error}, C{ValueError} or any other exception.
        """
        try:
            result = decode(payload)
        except ProtocolError as e:
            self.assertIsInstance(e.reason, str)
            self.assertTrue(str(e))
        else:
            self.assertIsInstance(result, (Conn, ConnAck, Submit, SubmitAck))

    def test_empty(self) -> None:
        e = self.assertRaises(MalformedPacket, decode, b"")
        self.assertIn("empty", str(e))

    def test_unknownCommand(self) -> None:
        """
        Every command id other than the four is unknown; the message names the
        id and shows the payload in hex.
        """
        for command in range(256):
            if command in COMMANDS:
                continue
            payload = bytes((command,)) + b"0000"
            e = self.assertRaises(UnknownCommand, decode, payload)
            self.assertIn(f"0x{command:02x}", str(e))
            self.assertIn(payload.hex(), str(e))
            self.assertEqual(e.reason, "unknown_command")

    def test_commentValuesAreUnknown(self) -> None:
        """
        0x82, the SubmitAck value in the reference's comments, is not a command.
        """
        self.assertRaises(UnknownCommand, decode, b"\x82" + b"00000001" + b"\x00")

    def test_shortSubmit(self) -> None:
        """
        A Submit body shorter than the 8-byte id (the reference panics on it)
        is a L{MalformedPacket} naming the body's bytes.
        """
        for size in range(packet.ID_SIZE):
            body = b"1234567"[:size]
            e = self.assertRaises(MalformedPacket, decode, b"\x02" + body)
            self.assertIn(abbreviate(body), str(e))
            self.assertEqual(e.reason, "malformed_packet")

    def test_shortSubmitMessage(self) -> None:
        e = self.assertRaises(MalformedPacket, decode, b"\x02abc")
        self.assertIn("616263 (3 bytes)", str(e))

    def test_badSubmitAck(self) -> None:
        for body in [b"", b"0" * 8, b"0" * 10, b"\xab" * 40]:
            e = self.assertRaises(MalformedPacket, decode, b"\x81" + body)
            self.assertIn(abbreviate(body), str(e))

    def test_badConnAck(self) -> None:
        for body in [b"", b"\x00\x00", b"\xcd" * 17]:
            e = self.assertRaises(MalformedPacket, decode, b"\x80" + body)
            self.assertIn(abbreviate(body), str(e))

    def test_longPayloadAbbreviated(self) -> None:
        """
        A long bad payload is abbreviated in the message, not copied whole.
        """
        payload = b"\x7f" + b"\xee" * 10_000
        e = self.assertRaises(UnknownCommand, decode, payload)
        self.assertIn("(10001 bytes)", str(e))
        self.assertLess(len(str(e)), 200)


class AbbreviateTests(SynchronousTestCase):
    def test_empty(self) -> None:
        self.assertEqual(abbreviate(b""), "(empty)")

    def test_short(self) -> None:
        self.assertEqual(abbreviate(b"\x00\x01\xff"), "0001ff (3 bytes)")

    def test_atLimit(self) -> None:
        self.assertEqual(abbreviate(b"\xaa" * 16), "aa" * 16 + " (16 bytes)")

    def test_long(self) -> None:
        self.assertEqual(abbreviate(b"\xaa" * 17), "aa" * 16 + "... (17 bytes)")

    def test_limit(self) -> None:
        self.assertEqual(abbreviate(b"abcdef", limit=2), "6162... (6 bytes)")


class ModelTests(SynchronousTestCase):
    """
    The packet classes refuse values that cannot be encoded.
    """

    def test_idSize(self) -> None:
        for bad in [b"", b"0000001", b"000000001"]:
            self.assertRaises(ValueError, Submit, bad)
            self.assertRaises(ValueError, SubmitAck, bad)

    def test_idType(self) -> None:
        self.assertRaises(ValueError, Submit, "00000001")

    def test_result(self) -> None:
        for bad in [-1, 256]:
            self.assertRaises(ValueError, ConnAck, bad)
            self.assertRaises(ValueError, SubmitAck, b"00000001", bad)

    def test_defaults(self) -> None:
        self.assertEqual(Conn().token, b"")
        self.assertEqual(ConnAck().result, packet.RESULT_OK)
        self.assertEqual(Submit(b"00000001").payload, b"")
        self.assertEqual(SubmitAck(b"00000001").result, packet.RESULT_OK)
        self.assertEqual((packet.RESULT_OK, packet.RESULT_ERROR), (0, 1))

    def test_frozen(self) -> None:
        p = Submit(b"00000001", b"x")
        self.assertRaises(AttributeError, setattr, p, "payload", b"y")


class ExceptionTests(SynchronousTestCase):
    """
    The exception hierarchy and the metric labels.
    """

    def test_hierarchy(self) -> None:
        self.assertTrue(issubclass(BadLength, ProtocolError))
        self.assertTrue(issubclass(FrameTooLarge, BadLength))
        for cls in [UnknownCommand, UnexpectedCommand, MalformedPacket]:
            self.assertTrue(issubclass(cls, ProtocolError))
            self.assertFalse(issubclass(cls, BadLength))

    def test_reasons(self) -> None:
        reasons = {
            cls: cls.reason
            for cls in [
                ProtocolError,
                BadLength,
                FrameTooLarge,
                UnknownCommand,
                UnexpectedCommand,
                MalformedPacket,
            ]
        }
        self.assertEqual(len(set(reasons.values())), len(reasons))
        for reason in reasons.values():
            self.assertRegex(reason, r"^[a-z_]+$")
