"""
Checking the acks of one connection: every Submit gets exactly one SubmitAck,
well formed, with the id owed next, in order.

The common case is checked in bulk: the acks a read brings are compared in
one C{startswith} with the bytes they must be, built with a few joins.  Only
when that fails are the frames walked one by one, to say exactly which ack
was wrong and how.
"""

from __future__ import annotations

import attrs

from tcpdemo.client.ids import SUFFIXES, idBlocks, idBytes
from tcpdemo.client.wire import ACK_SIZE as ACK_SIZE
from tcpdemo.frame import DEFAULT_MAX_FRAME_LENGTH, HEADER_SIZE, LENGTH, MIN_FRAME_LENGTH, frame
from tcpdemo.packet import (
    CONN_ACK,
    ID_SIZE,
    RESULT_OK,
    SUBMIT_ACK,
    SubmitAck,
    abbreviate,
    encode,
)

_ACK_HEAD = frame(encode(SubmitAck(b"0" * ID_SIZE)))[: -ID_SIZE - 1]
_ACK_OK_TAIL = bytes((RESULT_OK,))
#: Between the ids of back-to-back successful acks (before the id's prefix).
_ACK_SEPARATOR = _ACK_OK_TAIL + _ACK_HEAD

# Error kinds, stable labels for counting and for --json.
WRONG_ID = "wrong_id"
WRONG_COMMAND = "wrong_command"
BAD_RESULT = "bad_result"
BAD_LENGTH = "bad_length"
UNEXPECTED_ACK = "unexpected_ack"
TRUNCATED_ACK = "truncated_ack"
EARLY_CLOSE = "early_close"
MISSING_ACKS = "missing_acks"

#: Problems after which a connection's acks cannot be understood any more.
FATAL_KINDS = frozenset((WRONG_ID, WRONG_COMMAND, BAD_LENGTH, UNEXPECTED_ACK))

ERROR_KINDS = (
    WRONG_ID,
    WRONG_COMMAND,
    BAD_RESULT,
    BAD_LENGTH,
    UNEXPECTED_ACK,
    TRUNCATED_ACK,
    EARLY_CLOSE,
    MISSING_ACKS,
)


def expectedAcks(first: int, count: int) -> bytes:
    """
    The exact bytes of C{count} successful acks for ids C{first} onwards.
    """
    parts: list[bytes] = []
    for prefix, lo, hi in idBlocks(first, count):
        parts += (_ACK_HEAD, prefix, (_ACK_SEPARATOR + prefix).join(SUFFIXES[lo:hi]), _ACK_OK_TAIL)
    return b"".join(parts)


def showId(raw: bytes) -> str:
    """
    An id for a message: as text when it is printable ASCII, else as hex.
    """
    if raw.isascii() and raw.decode("ascii").isprintable():
        return repr(raw.decode("ascii"))
    return "0x" + raw.hex()


@attrs.frozen
class Problem:
    """
    One thing the server got wrong, with a message saying exactly what.
    """

    kind: str
    message: str


class AckChecker:
    """
    The ack stream of one connection.

    The sender calls L{expect} for every Submit it writes; L{feed} takes
    bytes as they arrive and returns how many owed acks they answered, in
    order.  Wrong answers become L{Problem}s in C{problems}; after a
    C{fatal} one the stream cannot be trusted any more and nothing else is
    consumed.  A non-zero result is the server's answer, not a wire error:
    it is counted in C{results}, and is a C{bad_result} problem only with
    C{failOnResult}.
    """

    def __init__(self, failOnResult: bool = False) -> None:
        #: Number of the Submit whose ack is owed next.
        self.nextId = 1
        #: Acks owed: Submits written and not yet answered.
        self.owed = 0
        #: Problems found since the owner last emptied this list.
        self.problems: list[Problem] = []
        #: A problem after which the stream is not understood any more.
        self.fatal = False
        self.failOnResult = failOnResult
        #: Acks that answered a Submit, by result byte.
        self.results = [0] * 256
        self._buffer = b""

    def expect(self, count: int) -> None:
        """
        C{count} more Submits were written.
        """
        self.owed += count

    def feed(self, data: bytes) -> int:
        """
        Check newly received bytes; return the number of owed acks answered.
        """
        if self.fatal:
            return 0
        buffer = self._buffer + data if self._buffer else data
        count = len(buffer) // ACK_SIZE
        owed = self.owed
        if count > owed:
            count = owed
        end = count * ACK_SIZE
        if count and buffer.startswith(expectedAcks(self.nextId, count)):
            self.nextId += count
            self.owed = owed - count
            self.results[RESULT_OK] += count
            rest = buffer[end:] if end < len(buffer) else b""
        else:
            count = 0
            rest = buffer
        # Anything left must be the start of the next ack, or we walk it.
        if len(rest) >= ACK_SIZE or (
            len(rest) >= HEADER_SIZE and not rest.startswith(_ACK_HEAD[:HEADER_SIZE])
        ):
            walked, rest = self._walk(rest)
            count += walked
        self._buffer = rest
        return count

    def _walk(self, data: bytes) -> tuple[int, bytes]:
        """
        Check frame by frame, naming the first wrong one; return how many
        owed acks were answered and the bytes of an incomplete last frame.
        """
        offset = 0
        answered = 0
        size = len(data)
        while size - offset >= HEADER_SIZE:
            (length,) = LENGTH.unpack_from(data, offset)
            if length != ACK_SIZE:
                self._badLength(length, data[offset:])
                return answered, b""
            if size - offset < ACK_SIZE:
                break
            ack = data[offset : offset + ACK_SIZE]
            if not self._checkOne(ack):
                return answered, b""
            answered += 1
            offset += ACK_SIZE
        return answered, data[offset:]

    def _checkOne(self, ack: bytes) -> bool:
        """
        Check one complete 14-byte frame; return whether it answered a Submit.
        """
        command = ack[HEADER_SIZE]
        ackId = ack[HEADER_SIZE + 1 : HEADER_SIZE + 1 + ID_SIZE]
        result = ack[-1]
        if command != SUBMIT_ACK:
            what = " (a ConnAck)" if command == CONN_ACK else ""
            self._fail(
                WRONG_COMMAND,
                f"wrong command byte 0x{command:02x}{what} where the ack for id "
                f"{showId(idBytes(self.nextId))} was owed (expected 0x{SUBMIT_ACK:02x} "
                f"SubmitAck); frame {ack.hex()}",
            )
            return False
        if not self.owed:
            self._fail(
                UNEXPECTED_ACK,
                f"ack for id {showId(ackId)} but no Submit is awaiting an ack "
                f"(last id sent {showId(idBytes(self.nextId - 1))}); frame {ack.hex()}",
            )
            return False
        expected = idBytes(self.nextId)
        if ackId != expected:
            self._fail(
                WRONG_ID,
                f"wrong id: expected {showId(expected)}, got {showId(ackId)}; frame {ack.hex()}",
            )
            return False
        self.nextId += 1
        self.owed -= 1
        self.results[result] += 1
        if result != RESULT_OK and self.failOnResult:
            self.problems.append(
                Problem(
                    BAD_RESULT,
                    f"ack for id {showId(ackId)} has result {result} "
                    f"(expected {RESULT_OK} = ok); frame {ack.hex()}",
                )
            )
        return True

    def _badLength(self, length: int, data: bytes) -> None:
        shown = abbreviate(data[:length] if MIN_FRAME_LENGTH <= length <= len(data) else data)
        if length < MIN_FRAME_LENGTH or length > DEFAULT_MAX_FRAME_LENGTH:
            why = "not a valid frame length"
        else:
            why = f"a SubmitAck frame is {ACK_SIZE} bytes"
        self._fail(
            BAD_LENGTH,
            f"bad length {length} ({why}) where the ack for id "
            f"{showId(idBytes(self.nextId))} was owed; bytes {shown}",
        )

    def _fail(self, kind: str, message: str) -> None:
        self.problems.append(Problem(kind, message))
        self.fatal = True
        self._buffer = b""

    def atClose(self) -> None:
        """
        The connection closed: a partial frame left over is a truncated ack.
        """
        if self._buffer and not self.fatal:
            data = self._buffer
            self._buffer = b""
            if self.owed:
                where = f"where the ack for id {showId(idBytes(self.nextId))} was owed"
            else:
                where = "with no ack owed"
            self.problems.append(
                Problem(
                    TRUNCATED_ACK,
                    f"truncated ack at close: got {len(data)} of {ACK_SIZE} bytes "
                    f"{where}; bytes {data.hex()}",
                )
            )
