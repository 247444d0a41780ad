"""
HISTORICAL STEPS OF THE OPTIMISATION RECORD -- NOT THE PRODUCT.

Each class below is the server protocol as it stood at one step of
BENCHMARKS.md, kept so that the benchmark can run every step as a real
C{twistd} server process (see C{step_app.tac}) and measure them side by side
with the product.  The product is L{tcpdemo.protocol.TcpDemoServerProtocol};
it is the last step ("final": step7, with runs of fewer than 16 equal
Submits left to the per-frame loop), and is run as C{twistd -n tcpdemo}
itself.

The steps subclass the product's protocol, so that connection handling, Conn,
bad input, backpressure and drain stay the product's; each overrides only the
path of a Submit and its ack, and reads as much at a time as they all did:
C{--write-buffer-limit}, 256 KiB by default (L{WholeLimitReads}).  They
also pin the frame parse loop as it was (L{HistoricalFrameLoop}), so that
later work on C{tcpdemo.frame} does not leak into them.

  - step0 "naive": C{stringReceived} -> C{packet.decode} -> an attrs
    C{Submit} -> C{packet.encode(SubmitAck)} -> C{sendString}, so one
    C{transport.write} per ack, and C{req_recv.inc()}, C{rsp_send.inc()} per
    message, as the seed article's first version does.
  - step1 "batched writes": the same decode/encode through attrs, but the
    acks of one read are collected and written once, in C{endOfRead}.
  - step2 "counters per read": as step1, counters moved once per read by n.
  - step3 "ids fast path": commit 4f851ad's C{tcpdemo/protocol.py}: a
    well-formed Submit is reduced to its 8-byte id in C{stringReceived}, and
    the acks of a read are built with one join.
  - step4 "bulk scan": commits 59f54f1..69176ba: the leading run of Submits
    of each read is taken in bulk (strided header checks, one comprehension
    for the ids) before the frame loop sees it.
  - step5 "acks built in C": commits a0a88d2..9f73ec6: the product's frame
    path (the acks of a run of equal-sized Submits built by strided copies,
    C{submitRunAcks}, then C{scanSubmits}; sent at once when nothing waits),
    with the four counters moved by C{Counter.inc} on every read.
  - step6 "counts in bulk": commit 05ceba7: as step5, but a read adds its
    counts to the factory's C{ReadTally}, which moves them into the
    counters at most 0.1 s later and before every scrape.
  - step7 "64 KiB reads": commit 1253a3f: as step6, but each read takes at
    most 64 KiB, whatever C{--write-buffer-limit} is.

Steps 5 to 7 take any run of two or more equal Submits with
C{submitRunAcks}; the product only runs of C{MIN_RUN} (16) or more.

What the steps use of the product is its public subclass interface (see
L{TcpDemoServerProtocol}: C{closing}, C{authenticated},
C{otherPacketReceived}, C{queueReply}, C{parseReceived}, C{finishIfClosing},
C{takeSubmits}, C{readSize}, C{minRun}) and the factory's C{metrics} and
C{tally}; none of its private members.  Steps 0 to 4 carry their own state
(the bytes not yet parsed, the ids and the output of a read), as their
commits did.
"""

from __future__ import annotations

from typing import Any

from tcpdemo.frame import HEADER_SIZE, LENGTH, MIN_FRAME_LENGTH, FrameReceiver, frame
from tcpdemo.metrics import ReadTally
from tcpdemo.packet import (
    ID_SIZE,
    RESULT_OK,
    SUBMIT,
    ProtocolError,
    Submit,
    SubmitAck,
    decode,
    encode,
)
from tcpdemo.protocol import TcpDemoServerProtocol
from tcpdemo.scan import acks as idsToAcks
from tcpdemo.scan import pureScanSubmits as scanSubmits
from tcpdemo.scan import pureSubmitRunAcks as submitRunAcks

#: Commit 4f851ad's ack encoding: the 14 bytes of a SubmitAck but its id.
_ACK_HEAD = frame(encode(SubmitAck(b"\0" * ID_SIZE)))[: -ID_SIZE - 1]
_ACK_OK_TAIL = bytes((RESULT_OK,))
_ACK_SEPARATOR = _ACK_OK_TAIL + _ACK_HEAD


class WholeLimitReads(TcpDemoServerProtocol):
    """
    Each read takes up to C{--write-buffer-limit} bytes, as every step did:
    Twisted uses one figure, C{transport.bufferSize}, for the most a read
    takes and for the unsent bytes that pause reading (the product reads
    at most 64 KiB since step6).
    """

    @property
    def readSize(self) -> int:  # type: ignore[override]
        return self.factory.writeBufferLimit


class HistoricalFrameLoop(WholeLimitReads):
    """
    The receiving path of commits 97bb614..4f851ad, pinned: count the bytes,
    then the per-frame parse loop of C{FrameReceiver.dataReceived}, which
    calls C{stringReceived} once per frame and C{endOfRead} once per read.
    It keeps its own state, as those commits did: the bytes not yet parsed,
    the ids of the read's Submits and its output.
    """

    _stepUnparsed = b""
    _stepIds: list[bytes]
    _stepOut: list[bytes]

    def connectionMade(self) -> None:
        self._stepIds = []
        self._stepOut = []
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if data:
            self.factory.metrics.bytes_received.inc(len(data))
            if self.timeOut is not None:
                self.resetTimeout()
        self.parseFrames(data)

    def takeStepUnparsed(self, data: bytes) -> bytes:
        buffered = self._stepUnparsed
        if not buffered:
            return data
        self._stepUnparsed = b""
        return buffered + data

    def parseFrames(self, data: bytes) -> None:
        transport: Any = self.transport
        if transport is not None and transport.disconnecting:
            self._stepUnparsed = b""
            self.endOfRead()
            return
        alldata = self.takeStepUnparsed(data)
        offset = 0
        size = len(alldata)
        maxLength = self.MAX_LENGTH
        unpack_from = LENGTH.unpack_from
        while size - offset >= HEADER_SIZE and not self.paused:
            if transport is not None and transport.disconnecting:
                break
            (length,) = unpack_from(alldata, offset)
            if length < MIN_FRAME_LENGTH or length > maxLength:
                self._stepUnparsed = b""
                self.badLengthReceived(length)
                self.endOfRead()
                return
            end = offset + length
            if end > size:
                break
            self.stringReceived(alldata[offset + HEADER_SIZE : end])
            offset = end
        self._stepUnparsed = alldata[offset:] if offset else alldata
        self.endOfRead()

    def parseReceived(self) -> None:
        # The product's drain: every complete frame already received.
        self.parseFrames(b"")

    # Sending, as of 4f851ad: the ids of a read become one join, the
    # queued output one write, the counters move once per read.

    def moveStepIdsToOut(self) -> None:
        ids = self._stepIds
        if ids:
            self._stepOut.append(_ACK_HEAD + _ACK_SEPARATOR.join(ids) + _ACK_OK_TAIL)
            metrics = self.factory.metrics
            metrics.req_recv.inc(len(ids))
            metrics.rsp_send.inc(len(ids))
            self._stepIds = []

    def queueReply(self, data: bytes, answered: int = 0) -> None:
        # A ConnAck from the product's Conn handling: after the acks owed.
        self.moveStepIdsToOut()
        self._stepOut.append(data)

    def endOfRead(self) -> None:
        if self._stepIds:
            self.moveStepIdsToOut()
        out = self._stepOut
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._stepOut = []
            self.transport.write(data)
            self.factory.metrics.bytes_sent.inc(len(data))
        # Closing is the product's business, not part of the record.
        self.finishIfClosing()


class Step0Naive(HistoricalFrameLoop):
    """
    step0 "naive": decode to an attrs Submit, encode an attrs SubmitAck,
    write it at once; two counter increments per message.  C{endOfRead} has
    nothing to do for Submits (it only flushes a ConnAck or a close).
    """

    def stringReceived(self, string: bytes) -> None:
        try:
            packet = decode(string)
        except ProtocolError as error:
            self.protocolError(error)
            return
        if isinstance(packet, Submit) and self.authenticated:
            self.factory.metrics.req_recv.inc()
            self.sendString(encode(SubmitAck(packet.id, RESULT_OK)))
            self.factory.metrics.rsp_send.inc()
        else:
            # Conn, or a refusal: the product's handling.
            self.otherPacketReceived(string)

    def queueReply(self, data: bytes, answered: int = 0) -> None:
        # A ConnAck, written at once so that it keeps its place among the acks.
        self.transport.write(data)


class Step1BatchedWrites(HistoricalFrameLoop):
    """
    step1 "batched writes": the same attrs decode/encode per message, but
    the acks of a read go out in one C{transport.write} from C{endOfRead};
    counters still per message.
    """

    def stringReceived(self, string: bytes) -> None:
        try:
            packet = decode(string)
        except ProtocolError as error:
            self.protocolError(error)
            return
        if isinstance(packet, Submit) and self.authenticated:
            self.factory.metrics.req_recv.inc()
            self._stepOut.append(frame(encode(SubmitAck(packet.id, RESULT_OK))))
            self.factory.metrics.rsp_send.inc()
        else:
            # Conn or a refusal; a ConnAck joins the output in its place.
            self.otherPacketReceived(string)


class Step2CountersPerRead(Step1BatchedWrites):
    """
    step2 "counters per read": as step1, but the two counters move once per
    read, by the number of acks it earned.
    """

    _stepAcked = 0

    def stringReceived(self, string: bytes) -> None:
        try:
            packet = decode(string)
        except ProtocolError as error:
            self.protocolError(error)
            return
        if isinstance(packet, Submit) and self.authenticated:
            self._stepOut.append(frame(encode(SubmitAck(packet.id, RESULT_OK))))
            self._stepAcked += 1
        else:
            self.otherPacketReceived(string)

    def endOfRead(self) -> None:
        n = self._stepAcked
        if n:
            self._stepAcked = 0
            metrics = self.factory.metrics
            metrics.req_recv.inc(n)
            metrics.rsp_send.inc(n)
        super().endOfRead()


class Step3IdsFastPath(HistoricalFrameLoop):
    """
    step3 "ids fast path", as in commit 4f851ad: a well-formed Submit is
    kept as its 8-byte id only; everything else is decoded fully.  The acks
    of a read are one join, written once, counters moved once per read.
    """

    def stringReceived(self, string: bytes) -> None:
        if string[0] == SUBMIT and len(string) > ID_SIZE and self.authenticated:
            self._stepIds.append(string[1 : ID_SIZE + 1])
        else:
            self.otherPacketReceived(string)


_SUBMIT_FRAME_MIN = HEADER_SIZE + 1 + ID_SIZE
_unpackLength = LENGTH.unpack_from


def bulkScanSubmits(data: bytes, maxLength: int, ids: list[bytes]) -> int:
    """
    C{scanSubmits} as of commits 59f54f1..69176ba: append the id of every
    complete, well-formed Submit frame at the start of C{data} to C{ids};
    return where the first other (or incomplete) frame starts.  A run of
    equal-sized frames is checked with five strided slices and its ids cut
    out with one comprehension; frames of varied sizes one at a time.
    """
    size = len(data)
    if size < _SUBMIT_FRAME_MIN:
        return 0
    (length,) = _unpackLength(data, 0)
    if not _SUBMIT_FRAME_MIN <= length <= maxLength or data[HEADER_SIZE] != SUBMIT:
        return 0
    offset = 0
    count = size // length
    if count > 1:
        end = count * length
        for i in range(HEADER_SIZE + 1):
            if data[i:end:length] != data[i : i + 1] * count:
                break
        else:
            idStart = HEADER_SIZE + 1
            ids += [data[o : o + ID_SIZE] for o in range(idStart, end, length)]
            offset = end
    append = ids.append
    while size - offset >= _SUBMIT_FRAME_MIN:
        (length,) = _unpackLength(data, offset)
        end = offset + length
        if (
            not _SUBMIT_FRAME_MIN <= length <= maxLength
            or data[offset + HEADER_SIZE] != SUBMIT
            or end > size
        ):
            break
        append(data[offset + HEADER_SIZE + 1 : offset + _SUBMIT_FRAME_MIN])
        offset = end
    return offset


class Step4BulkScan(Step3IdsFastPath):
    """
    step4 "bulk scan", as in commits 59f54f1..69176ba: before the frame
    loop sees a read, L{bulkScanSubmits} takes its leading run of
    well-formed Submits as ids, without a method call per frame; the frame
    loop (and step3's C{stringReceived}) handles whatever is left.  Acks as
    in step3: one join, one C{transport.write} per read.
    """

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if data:
            self.factory.metrics.bytes_received.inc(len(data))
            if self.timeOut is not None:
                self.resetTimeout()
        if self.authenticated and not self.paused:
            alldata = self.takeStepUnparsed(data)
            offset = bulkScanSubmits(alldata, self.MAX_LENGTH, self._stepIds)
            data = alldata[offset:] if offset else alldata
        self.parseFrames(data)


class CountsEveryRead(ReadTally):
    """
    The counters as steps 0 to 5 moved them: on every read, by
    C{Counter.inc} (bytes received, bytes sent, Submits received, acks
    sent), rather than in bulk at most 0.1 s later as the product's tally
    does since step6.
    """

    __slots__ = ()

    def changed(self) -> None:
        self.flush()

    def flush(self) -> None:
        metrics = self.metrics
        if self.bytesReceived:
            metrics.bytes_received.inc(self.bytesReceived)
            self.bytesReceived = 0
        if self.bytesSent:
            metrics.bytes_sent.inc(self.bytesSent)
            self.bytesSent = 0
        if self.answered:
            metrics.req_recv.inc(self.answered)
            metrics.rsp_send.inc(self.answered)
            self.answered = 0


class Step5AcksBuiltInC(WholeLimitReads):
    """
    step5 "acks built in C", as in commits a0a88d2..9f73ec6: the product's
    receiving and sending path, with the pure-Python scans of the time
    taking any run of two or more equal Submits, and each read moving the
    counters itself, four C{Counter.inc} calls (L{CountsEveryRead}, which
    C{step_app.tac} gives the factory; the product adds to its
    C{ReadTally}).
    """

    stepTally = CountsEveryRead

    def takeSubmits(self, data: bytes) -> bytes:
        maxLength = self.MAX_LENGTH
        end, count, acks = submitRunAcks(data, maxLength, 2)
        if count:
            self.queueReply(acks, count)
        ids: list[bytes] = []
        offset = scanSubmits(data, maxLength, ids, end)
        if ids:
            self.queueReply(idsToAcks(ids), len(ids))
        return data[offset:] if offset else data


class Step6CountsInBulk(WholeLimitReads):
    """
    step6 "counts in bulk", as in commit 05ceba7: the product but for the
    read size and the shortest run taken in bulk.
    """

    minRun = 2


class Step7ReadSize(TcpDemoServerProtocol):
    """
    step7 "64 KiB reads", as in commit 1253a3f: the product but for the
    shortest run taken in bulk.
    """

    minRun = 2


#: Step name -> protocol class, in the order of the record.
STEPS: dict[str, type[FrameReceiver]] = {
    "step0": Step0Naive,
    "step1": Step1BatchedWrites,
    "step2": Step2CountersPerRead,
    "step3": Step3IdsFastPath,
    "step4": Step4BulkScan,
    "step5": Step5AcksBuiltInC,
    "step6": Step6CountsInBulk,
    "step7": Step7ReadSize,
}

__all__: list[str] = ["STEPS"] + [cls.__name__ for cls in STEPS.values()]
