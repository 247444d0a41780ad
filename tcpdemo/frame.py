"""
The frame layer: finding message boundaries in the TCP byte stream.

Every frame starts with a signed big-endian int32 C{total_length} that counts
I{itself}: a frame with a 9-byte payload carries 13.  Twisted's
L{Int32StringReceiver} counts only the payload, so L{FrameReceiver} keeps its
interface (C{stringReceived}, C{sendString}, C{MAX_LENGTH},
C{lengthLimitExceeded}) and replaces the parse loop and the framing.
"""

from __future__ import annotations

import mmap
from struct import Struct
from typing import Any, Union

from twisted.protocols.basic import Int32StringReceiver

#: The length field: signed, because the reference reads it as an int32 and a
#: negative value must be recognised as such rather than as a huge length.
LENGTH = Struct("!i")
HEADER_SIZE = LENGTH.size

#: The smallest well-formed frame: the length field and a command byte.
MIN_FRAME_LENGTH = HEADER_SIZE + 1

#: Default upper bound on C{total_length}, checked before any body is buffered.
DEFAULT_MAX_FRAME_LENGTH = 1024 * 1024

#: A partial frame whose C{total_length} is at least this is gathered in a
#: growing buffer, so that it costs O(its size) however small the reads that
#: bring it; a shorter one is re-joined with each read, which costs at most
#: this many bytes copied per read.
GATHER_THRESHOLD = 4096

#: A partial frame whose C{total_length} is at least this is gathered in an
#: anonymous memory map of that length rather than in a bytearray: the
#: kernel gives it pages only as bytes arrive, it never moves or grows, and
#: closing it gives its memory back to the system at once -- where the
#: C allocator would keep the freed blocks of a bytearray that grew to
#: 1 MiB (measured: 80 MiB kept after 1000 such connections left).
MAP_THRESHOLD = 128 * 1024

_Gathered = Union[bytearray, mmap.mmap]


def _gatherBuffer(length: int, first: memoryview) -> _Gathered:
    """
    A buffer for a frame of C{length} bytes, holding C{first}.
    """
    if length >= MAP_THRESHOLD:
        try:
            mapped = mmap.mmap(-1, length)
        except (OSError, ValueError):
            pass  # e.g. vm.max_map_count reached: a bytearray does
        else:
            # bytes: PyPy's mmap takes no other buffer (one read's copy).
            mapped.write(bytes(first))
            return mapped
    return bytearray(first)


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
        so that work for all of them (acks, counters) can be done in one go;
      - C{gatheredChanged(held)}: the partial frame being gathered now holds
        C{held} bytes (0: none), for a memory budget over all connections;
      - C{turnEnded()}: C{framesPerTurn} frames were delivered by one call
        and the rest waits in C{_unprocessed}; the subclass stops reading
        and calls C{dataReceived(b"")} again on a later reactor turn.

    Parsing stops at the first bad length, and as soon as the transport is
    disconnecting or the receiver is paused; nothing after a bad length is
    ever delivered, and the body of an oversized frame is never buffered.
    """

    structFormat = LENGTH.format
    prefixLength = HEADER_SIZE
    MAX_LENGTH = DEFAULT_MAX_FRAME_LENGTH
    #: The most frames one call of C{dataReceived} delivers (None: all).
    framesPerTurn: int | None = None
    #: The partial frame being gathered (header included), if it is at
    #: least L{GATHER_THRESHOLD} long; C{_gatherLength} is its total_length.
    _gathered: _Gathered | None = None
    _gatherLength = 0
    _gatheredSize = 0
    #: Bytes received but not yet parsed.  Declared here, not inherited:
    #: C{dataReceived} is this class's own, so it does not rely on Twisted's
    #: private attribute; the name is Twisted's so that its deprecated
    #: C{recvd} still reads this buffer.
    _unprocessed: bytes = b""

    def takeUnprocessed(self, data: bytes) -> bytes:
        """
        The bytes kept unparsed from earlier reads followed by C{data}; the
        kept bytes are forgotten, so the caller owns the rest and passes
        what it does not parse on to L{dataReceived}.
        """
        buffered = self._unprocessed
        if not buffered:
            return data
        self._unprocessed = b""
        return buffered + data

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

    def gatheredChanged(self, held: int) -> None:
        """
        The partial frame being gathered now holds C{held} bytes (0: none).
        """

    def turnEnded(self) -> None:
        """
        C{framesPerTurn} frames were delivered; the rest is kept unparsed.
        """

    def dropGathered(self) -> None:
        """
        Forget the partial frame being gathered, if any (the connection is
        closing: it will never be complete).
        """
        gathered = self._gathered
        if gathered is not None:
            self._gathered = None
            if isinstance(gathered, mmap.mmap):
                gathered.close()
            self.gatheredChanged(0)

    def gather(self, data: bytes) -> bytes | None:
        """
        Add C{data} to the partial frame being gathered.  If that completes
        it, deliver it (or, while paused, keep it for later) and return the
        bytes that follow it; else return None.

        Each byte is copied into the buffer once, and the frame out of it
        once: O(its size) whatever the sizes of the reads.
        """
        gathered = self._gathered
        assert gathered is not None
        size = self._gatheredSize
        length = self._gatherLength
        need = length - size
        if len(data) < need:
            end = size + len(data)
            if isinstance(gathered, bytearray):
                # Amortised O(1) a byte (a slice assignment is not: it
                # resizes to the exact size every time).
                gathered += data
            else:
                gathered[size:end] = data
            self._gatheredSize = end
            self.gatheredChanged(end)
            return None
        if isinstance(gathered, bytearray):
            gathered += memoryview(data)[:need]
        else:
            # bytes: PyPy's mmap takes no other buffer (one read's copy).
            gathered[size:length] = data[:need] if need < len(data) else data
        rest = data[need:] if need else data
        # While paused the whole frame waits, header and all, to be parsed.
        start = 0 if self.paused else HEADER_SIZE
        if isinstance(gathered, mmap.mmap):
            gatheredFrame = gathered[start:length]
            gathered.close()
        else:
            gatheredFrame = bytes(memoryview(gathered)[start:])
        self._gathered = None
        self.gatheredChanged(0)
        if start == 0:
            self._unprocessed = gatheredFrame + rest
            return b""
        self.stringReceived(gatheredFrame)
        return rest

    def dataReceived(self, data: bytes) -> None:
        # Every Twisted transport has "disconnecting", but ITransport does not
        # declare it.
        transport: Any = self.transport
        if transport is not None and transport.disconnecting:
            # Nothing is parsed once the connection is closing (after a bad
            # length, say), so nothing is kept either: a transport may still
            # deliver the rest of a read, and it must not pile up here.
            self._unprocessed = b""
            self.dropGathered()
            self.endOfRead()
            return
        budget = self.framesPerTurn
        if self._gathered is not None:
            rest = self.gather(data)
            if rest is None:
                self.endOfRead()
                return
            data = rest
            if budget is not None:
                budget -= 1
        buffered = self._unprocessed
        alldata = buffered + data if buffered else data
        offset = 0
        size = len(alldata)
        maxLength = self.MAX_LENGTH
        unpack_from = LENGTH.unpack_from
        while size - offset >= HEADER_SIZE and not self.paused:
            if transport is not None and transport.disconnecting:
                break
            if budget is not None:
                if budget <= 0:
                    # Enough for this turn: the rest waits for the next.
                    self._unprocessed = alldata[offset:]
                    self.turnEnded()
                    self.endOfRead()
                    return
                budget -= 1
            (length,) = unpack_from(alldata, offset)
            if length < MIN_FRAME_LENGTH or length > maxLength:
                # Nothing after a bad length can be trusted: drop it all.
                self._unprocessed = b""
                self.badLengthReceived(length)
                self.endOfRead()
                return
            end = offset + length
            if end > size:
                if length >= GATHER_THRESHOLD:
                    # A long frame, incomplete: gather it from now on.
                    self._unprocessed = b""
                    self._gatherLength = length
                    self._gatheredSize = size - offset
                    self._gathered = _gatherBuffer(length, memoryview(alldata)[offset:])
                    self.gatheredChanged(size - offset)
                    self.endOfRead()
                    return
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
