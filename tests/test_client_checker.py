"""
Tests for L{tcpdemo.client.checker}: the load client's ack checker, without
sockets.
"""

from __future__ import annotations

from twisted.trial import unittest

from tcpdemo.client.checker import (
    ACK_SIZE,
    BAD_LENGTH,
    BAD_RESULT,
    TRUNCATED_ACK,
    UNEXPECTED_ACK,
    WRONG_COMMAND,
    WRONG_ID,
    AckChecker,
    expectedAcks,
)
from tcpdemo.client.ids import idBytes
from tests.support import ackFrame


class AckCheckerTests(unittest.TestCase):
    def checker(self, owed: int, failOnResult: bool = False) -> AckChecker:
        c = AckChecker(failOnResult=failOnResult)
        c.expect(owed)
        return c

    def test_vector(self) -> None:
        """
        The SubmitAck of the protocol's test vector is what it expects.
        """
        self.assertEqual(expectedAcks(1, 1), bytes.fromhex("0000000e81303030303030303100"))
        self.assertEqual(ACK_SIZE, 14)

    def test_bulk(self) -> None:
        c = self.checker(1000)
        self.assertEqual(c.feed(b"".join(ackFrame(n) for n in range(1, 1001))), 1000)
        self.assertEqual((c.owed, c.nextId, c.problems), (0, 1001, []))

    def test_splitAnywhere(self) -> None:
        """
        Acks split at every byte boundary are all counted, none twice.
        """
        data = b"".join(ackFrame(n) for n in range(1, 6))
        for cut in range(len(data) + 1):
            c = self.checker(5)
            self.assertEqual(c.feed(data[:cut]) + c.feed(data[cut:]), 5)
            self.assertEqual(c.problems, [])
        c = self.checker(5)
        self.assertEqual(sum(c.feed(data[i : i + 1]) for i in range(len(data))), 5)

    def test_wrongId(self) -> None:
        c = self.checker(3)
        self.assertEqual(c.feed(ackFrame(1) + ackFrame(3) + ackFrame(2)), 1)
        [p] = c.problems
        self.assertEqual(p.kind, WRONG_ID)
        self.assertIn("expected '00000002', got '00000003'", p.message)
        self.assertTrue(c.fatal)
        self.assertEqual(c.feed(ackFrame(2)), 0)

    def test_nonAsciiId(self) -> None:
        c = self.checker(1)
        c.feed(b"\x00\x00\x00\x0e\x81" + b"\xff" * 8 + b"\x00")
        self.assertIn("got 0xffffffffffffffff", c.problems[0].message)

    def test_wrongCommand(self) -> None:
        c = self.checker(2)
        bad = b"\x00\x00\x00\x0e\x80" + idBytes(2) + b"\x00"
        self.assertEqual(c.feed(ackFrame(1) + bad), 1)
        [p] = c.problems
        self.assertEqual(p.kind, WRONG_COMMAND)
        self.assertIn("wrong command byte 0x80 (a ConnAck)", p.message)
        self.assertIn("expected 0x81", p.message)

    def test_badResult(self) -> None:
        """
        With C{failOnResult}, a non-zero result is reported, but the ack
        still answers its Submit and checking goes on.
        """
        c = self.checker(3, failOnResult=True)
        self.assertEqual(c.feed(ackFrame(1) + ackFrame(2, result=1) + ackFrame(3)), 3)
        [p] = c.problems
        self.assertEqual(p.kind, BAD_RESULT)
        self.assertIn("id '00000002' has result 1 (expected 0 = ok)", p.message)
        self.assertFalse(c.fatal)
        self.assertEqual((c.results[0], c.results[1]), (2, 1))

    def test_resultsCounted(self) -> None:
        """
        By default a non-zero result is the server's answer, not a problem:
        it is counted by result, in bulk and frame by frame alike.
        """
        c = self.checker(1005)
        self.assertEqual(c.feed(b"".join(ackFrame(n) for n in range(1, 1001))), 1000)
        mixed = ackFrame(1001, 3) + ackFrame(1002) + ackFrame(1003, 255) + ackFrame(1004, 3)
        self.assertEqual(c.feed(mixed), 4)
        self.assertEqual(c.problems, [])
        self.assertFalse(c.fatal)
        self.assertEqual((c.results[0], c.results[3], c.results[255]), (1001, 2, 1))
        self.assertEqual(sum(c.results), 1004)

    def test_badLength(self) -> None:
        c = self.checker(2)
        long = b"\x00\x00\x00\x0f\x81" + idBytes(2) + b"\x00\x00"
        self.assertEqual(c.feed(ackFrame(1) + long), 1)
        [p] = c.problems
        self.assertEqual(p.kind, BAD_LENGTH)
        self.assertIn("bad length 15 (a SubmitAck frame is 14 bytes)", p.message)

    def test_badLengthSeenEarly(self) -> None:
        """
        A wrong length field is reported as soon as it arrives, without
        waiting for 14 bytes that may never come.
        """
        c = self.checker(1)
        c.feed(b"\xff\xff\xff\xff\x81")
        self.assertEqual(c.problems[0].kind, BAD_LENGTH)
        self.assertIn("bad length -1 (not a valid frame length)", c.problems[0].message)

    def test_unexpectedAck(self) -> None:
        c = self.checker(1)
        self.assertEqual(c.feed(ackFrame(1) + ackFrame(2)), 1)
        [p] = c.problems
        self.assertEqual(p.kind, UNEXPECTED_ACK)
        self.assertIn("no Submit is awaiting an ack", p.message)

    def test_truncatedAtClose(self) -> None:
        c = self.checker(2)
        c.feed(ackFrame(1) + ackFrame(2)[:7])
        c.atClose()
        [p] = c.problems
        self.assertEqual(p.kind, TRUNCATED_ACK)
        self.assertIn("got 7 of 14 bytes where the ack for id '00000002' was owed", p.message)

    def test_idsWrap(self) -> None:
        """
        Past 99999999 the ids wrap, staying 8 bytes.
        """
        self.assertEqual(idBytes(99999999), b"99999999")
        self.assertEqual(idBytes(100000000), b"00000000")
        c = AckChecker()
        c.nextId = 99999999
        c.expect(2)
        self.assertEqual(c.feed(expectedAcks(99999999, 2)), 2)
        self.assertEqual(c.problems, [])
