"""
The frame layer: finding message boundaries in the TCP byte stream.

Every frame starts with a signed big-endian int32 C{total_length} that counts
I{itself}: a frame with a 9-byte payload carries 13.  Twisted's
L{Int32StringReceiver} counts only the payload, so L{FrameReceiver} keeps its
interface (C{stringReceived}, C{sendString}, C{MAX_LENGTH},
C{lengthLimitExceeded}) and replaces the parse loop and the framing.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from twisted.protocols.basic import Int32StringReceiver

#: The length field: signed, because the reference reads it as an int32 and a
#: negative value must be recognised as such rather than as a huge length.
LENGTH = Struct("!i")
HEADER_SIZE = LENGTH.size

#: The smallest well-formed frame: the length field and a command byte.
MIN_FRAME_LENGTH = HEADER_SIZE + 1

#: Default upper bound on C{total_length}, checked before any body is buffered.
DEFAULT_MAX_FRAME_LENGTH = 1024 * 1024


def frame(payload: bytes) -> bytes:
    """
    Return C{payload} with its length prefix, the prefix counting itself.
    """
    return LENGTH.pack(len(payload) + HEADER_SIZE) + payload


class FrameReceiver(Int32StringReceiver):
    """
    An L{Int32StringReceiver} whose length prefix counts its own four bytes.

    Subclasses override:
      - C{stringReceived(payload)}: one complete frame payload;
      - C{badLengthReceived(length)}: a length below L{MIN_FRAME_LENGTH}
        (including negative ones) or above C{MAX_LENGTH}; the default closes
        the connection;
      - C{endOfRead()}: called once after every read's frames were delivered,
        so that work for all of them (acks, counters) can be done in one go.

    Parsing stops at the first bad length, and as soon as the transport is
    disconnecting or the receiver is paused; nothing after a bad length is
    ever delivered, and the body of an oversized frame is never buffered.
    """

    structFormat = LENGTH.format
    prefixLength = HEADER_SIZE
    MAX_LENGTH = DEFAULT_MAX_FRAME_LENGTH

    def badLengthReceived(self, length: int) -> None:
        """
        A malformed C{total_length} arrived.  Too large ones go to Twisted's
        C{lengthLimitExceeded}; the others close the connection.
        """
        if length > self.MAX_LENGTH:
            self.lengthLimitExceeded(length)
        elif self.transport is not None:
            self.transport.loseConnection()

    def endOfRead(self) -> None:
        """
        All complete frames of the latest read have been delivered.
        """

    def dataReceived(self, data: bytes) -> None:
        # Every Twisted transport has "disconnecting", but ITransport does not
        # declare it.
        transport: Any = self.transport
        if transport is not None and transport.disconnecting:
            # Nothing is parsed once the connection is closing (after a bad
            # length, say), so nothing is kept either: a transport may still
            # deliver the rest of a read, and it must not pile up here.
            self._unprocessed = b""
            self.endOfRead()
            return
        buffered = self._unprocessed
        alldata = buffered + data if buffered else data
        offset = 0
        size = len(alldata)
        maxLength = self.MAX_LENGTH
        unpack_from = LENGTH.unpack_from
        while size - offset >= HEADER_SIZE and not self.paused:
            if transport is not None and transport.disconnecting:
                break
            (length,) = unpack_from(alldata, offset)
            if length < MIN_FRAME_LENGTH or length > maxLength:
                # Nothing after a bad length can be trusted: drop it all.
                self._unprocessed = b""
                self.badLengthReceived(length)
                self.endOfRead()
                return
            end = offset + length
            if end > size:
                break
            self.stringReceived(alldata[offset + HEADER_SIZE : end])
            offset = end
        self._unprocessed = alldata[offset:] if offset else alldata
        self.endOfRead()

    def sendString(self, string: bytes) -> None:
        """
        Send C{string} as one frame.
        """
        transport = self.transport
        assert transport is not None, "sendString before makeConnection"
        transport.write(frame(string))
