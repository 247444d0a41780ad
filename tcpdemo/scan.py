"""
The server's fast paths over a read's bytes: find the well-formed Submits
and build their SubmitAcks.

Each function here has a pure-Python version (C{pure*}), the reference,
and on CPython a compiled one from the optional extension C{tcpdemo._scan}
(tcpdemo/_scan.c), which makes exactly the same decisions
(tests/test_scan.py checks it on random input) without an interpreted loop
per frame.  PyPy answers Submits through L{pypySubmitAcks}, the pure
version written for its JIT, which also makes the same decisions.  The
public names are the compiled versions where they were built and allowed,
else the pure ones (L{pypySubmitAcks} for C{submitAcks} on PyPy);
L{ACCELERATED} says which.

The compiled versions are skipped on PyPy, when the extension was not built
(C{pip install .} with no C compiler still works: see setup.py), and when
the environment variable C{TCPDEMO_NO_ACCEL} is set to a non-empty value at
import time.
"""

from __future__ import annotations

import os
import platform
from typing import Protocol

from tcpdemo.frame import HEADER_SIZE, LENGTH, frame
from tcpdemo.packet import ID_SIZE, RESULT_OK, SUBMIT, SubmitAck, encode

#: A SubmitAck is the same 14 bytes but for its id: the frame header and
#: command byte before it, the result byte after it.
_ACK_HEAD = frame(encode(SubmitAck(b"\0" * ID_SIZE)))[: -ID_SIZE - 1]
_ACK_OK_TAIL = bytes((RESULT_OK,))
#: Joining ids with this separator yields back-to-back acks (see L{pureAcks}).
_ACK_SEPARATOR = _ACK_OK_TAIL + _ACK_HEAD

_ID_START = HEADER_SIZE + 1
_SUBMIT_FRAME_MIN = _ID_START + ID_SIZE
#: One successful SubmitAck with a zero id, for L{pureSubmitRunAcks} to fill in.
_ACK_TEMPLATE = _ACK_HEAD + b"\0" * ID_SIZE + _ACK_OK_TAIL
_ACK_SIZE = len(_ACK_TEMPLATE)
_unpackLength = LENGTH.unpack_from

#: The shortest run L{submitRunAcks} takes by default.  The pure version's
#: strided checks and copies cost a few microseconds whatever the count, and
#: a read of fewer Submits goes faster through L{scanSubmits}' loop
#: (break-even near 16 frames on CPython 3.11, 128 on PyPy 3.9: see
#: benchmarks/minrun.py).
MIN_RUN = 16


def pureAcks(ids: list[bytes]) -> bytes:
    """
    Encode one successful SubmitAck per id, back to back.
    """
    return _ACK_HEAD + _ACK_SEPARATOR.join(ids) + _ACK_OK_TAIL


def _equalFrames(data: bytes, length: int, count: int) -> bool:
    """
    Whether the first C{count} frames of C{length} bytes in C{data} all have
    the first one's five header bytes: strided slices, compared in C.
    """
    end = count * length
    return all(data[i:end:length] == data[i : i + 1] * count for i in range(_ID_START))


def pureSubmitRunAcks(data: bytes, maxLength: int, minRun: int = MIN_RUN) -> tuple[int, int, bytes]:
    """
    The fastest path, for what load generators send: if C{data} starts with
    a run of C{minRun} (at least 1) or more complete, well-formed Submit
    frames all of one size, return C{(end, count, acks)} -- where the run
    ends, how many frames it has, and their SubmitAcks back to back -- else
    C{(0, 0, b"")}.

    No object is made per Submit: the five header bytes of every frame are
    checked with strided slices (L{_equalFrames}), and the ids are copied
    into C{count} ack templates with eight strided slice assignments (byte
    I{j} of every id at once), all in C.
    """
    if minRun < 1:
        raise ValueError("minRun must be at least 1")
    size = len(data)
    if size < minRun * _SUBMIT_FRAME_MIN:
        return 0, 0, b""
    (length,) = _unpackLength(data, 0)
    if not _SUBMIT_FRAME_MIN <= length <= maxLength or data[HEADER_SIZE] != SUBMIT:
        return 0, 0, b""
    count = size // length
    if count < minRun or not _equalFrames(data, length, minRun):
        # Checked first on the first minRun frames alone: with frames of
        # varied sizes the run fails there, before the strided checks and
        # the bisection over the whole read.
        return 0, 0, b""
    if not _equalFrames(data, length, count):
        # Something else follows the run: find where, by bisection (the
        # first frame is known good), rather than give up on the run.
        good, bad = 1, count
        while bad - good > 1:
            middle = (good + bad) // 2
            if _equalFrames(data, length, middle):
                good = middle
            else:
                bad = middle
        count = good
        if count < minRun:
            return 0, 0, b""
    end = count * length
    acks = bytearray(_ACK_TEMPLATE * count)
    for j in range(_ID_START, _ID_START + ID_SIZE):
        acks[j::_ACK_SIZE] = data[j:end:length]
    return end, count, bytes(acks)


def pureScanSubmits(data: bytes, maxLength: int, ids: list[bytes], start: int = 0) -> int:
    """
    The fast path for Submits of varied sizes: from C{start} (not negative),
    append the id of every complete, well-formed Submit frame to C{ids}, one
    frame at a time as tight as Python allows; return where the first other
    frame (or incomplete frame) starts.

    Like L{pureSubmitRunAcks}, it makes the same decisions as
    C{FrameReceiver.dataReceived} followed by L{decode} -- the tests check
    that they agree on every input -- but stops rather than decide anything
    unusual, which the general path then does.
    """
    if start < 0:
        raise ValueError("start must not be negative")
    size = len(data)
    offset = start
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
        append(data[offset + _ID_START : offset + _SUBMIT_FRAME_MIN])
        offset = end
    return offset


def pureSubmitAcks(
    data: bytes, maxLength: int, start: int = 0, minRun: int = MIN_RUN
) -> tuple[int, int, bytes]:
    """
    Answer the complete, well-formed Submits at C{start} in C{data}, of any
    sizes: return C{(end, count, acks)} -- where the first other frame (or
    incomplete frame) starts, how many Submits there were, and their
    SubmitAcks back to back.

    A leading run of C{minRun} or more Submits of one size (what load
    generators send) is answered in bulk by L{pureSubmitRunAcks}, the rest
    one frame at a time by L{pureScanSubmits}; C{minRun} changes the speed,
    never the answer.
    """
    if minRun < 1:
        raise ValueError("minRun must be at least 1")
    if start:
        end, count, acks = start, 0, b""
    else:
        end, count, acks = pureSubmitRunAcks(data, maxLength, minRun)
    ids: list[bytes] = []
    end = pureScanSubmits(data, maxLength, ids, end)
    if ids:
        count += len(ids)
        acks = acks + pureAcks(ids) if acks else pureAcks(ids)
    return end, count, acks


def pypySubmitAcks(
    data: bytes, maxLength: int, start: int = 0, minRun: int = MIN_RUN
) -> tuple[int, int, bytes]:
    """
    L{pureSubmitAcks} as PyPy's JIT compiles it best, making the same
    decisions on every input (tests/test_scan.py checks it); what PyPy uses.

    The loop keeps each Submit's offset -- a list of machine integers on
    PyPy -- rather than an 8-byte id object, and the ids are copied into
    the acks byte by byte, which the JIT turns into plain loads and stores.
    A 64 KiB read of varied Submits then allocates about half as much
    (no id objects, no joins), so PyPy's nursery fills less often and each
    minor collection promotes less into the old generation that its major
    collections walk.  In C{python -m benchmarks.scanbench} on PyPy 3.9
    (V, 64 KiB reads, through the protocol): 0.044 µs per frame against
    0.055 for L{pureSubmitAcks}.  On CPython every byte copied is an
    interpreted step (0.86 against 0.39 µs), so there the C extension, or
    L{pureSubmitAcks}, serves.
    """
    if minRun < 1:
        raise ValueError("minRun must be at least 1")
    if start < 0:
        raise ValueError("start must not be negative")
    if start:
        offset, count, acks = start, 0, b""
    else:
        offset, count, acks = pureSubmitRunAcks(data, maxLength, minRun)
    size = len(data)
    offsets: list[int] = []
    append = offsets.append
    while size - offset >= _SUBMIT_FRAME_MIN:
        (length,) = _unpackLength(data, offset)
        end = offset + length
        if (
            not _SUBMIT_FRAME_MIN <= length <= maxLength
            or data[offset + HEADER_SIZE] != SUBMIT
            or end > size
        ):
            break
        append(offset + _ID_START)
        offset = end
    if not offsets:
        return offset, count, acks
    out = bytearray(_ACK_TEMPLATE * len(offsets))
    at = _ID_START
    for i in offsets:
        out[at] = data[i]
        out[at + 1] = data[i + 1]
        out[at + 2] = data[i + 2]
        out[at + 3] = data[i + 3]
        out[at + 4] = data[i + 4]
        out[at + 5] = data[i + 5]
        out[at + 6] = data[i + 6]
        out[at + 7] = data[i + 7]
        at += _ACK_SIZE
    more = bytes(out)
    return offset, count + len(offsets), acks + more if acks else more


def _disabled() -> bool:
    """
    Whether the compiled versions must not be used here.
    """
    return platform.python_implementation() != "CPython" or bool(os.environ.get("TCPDEMO_NO_ACCEL"))


class _Acks(Protocol):
    def __call__(self, ids: list[bytes], /) -> bytes: ...


class _SubmitAcks(Protocol):
    def __call__(
        self, data: bytes, maxLength: int, start: int = ..., minRun: int = ..., /
    ) -> tuple[int, int, bytes]: ...


class _ScanSubmits(Protocol):
    def __call__(
        self, data: bytes, maxLength: int, ids: list[bytes], start: int = ..., /
    ) -> int: ...


#: Whether this is PyPy, which answers through L{pypySubmitAcks}.
PYPY = platform.python_implementation() == "PyPy"

#: The versions in use (positional arguments only, as the compiled ones take).
acks: _Acks = pureAcks
submitAcks: _SubmitAcks = pypySubmitAcks if PYPY else pureSubmitAcks
#: For callers that need the ids themselves (the handler path, tcpdemo.pending).
scanSubmits: _ScanSubmits = pureScanSubmits
#: Whether they are the compiled versions.
ACCELERATED = False

if not _disabled():
    try:
        from tcpdemo import _scan
    except ImportError:  # not built: no compiler at install time
        pass
    else:
        acks = _scan.acks
        submitAcks = _scan.submitAcks
        scanSubmits = _scan.scanSubmits
        ACCELERATED = True
