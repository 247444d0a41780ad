"""
The client's side of the wire format, shared by the library
(L{tcpdemo.client.connection}) and the load client (L{tcpdemo.client.load}):
Submit frames built without per-Submit objects, and the ConnAck handshake.
"""

from __future__ import annotations

from tcpdemo.frame import HEADER_SIZE, LENGTH, frame
from tcpdemo.packet import CONN_ACK, ID_SIZE, SUBMIT, Conn, ConnAck, SubmitAck, encode

#: Every SubmitAck frame is this long: length field, command, id, result.
ACK_SIZE = len(frame(encode(SubmitAck(b"0" * ID_SIZE))))
#: A ConnAck frame: length field, command, result.
CONN_ACK_SIZE = len(frame(encode(ConnAck())))
_CONN_ACK_HEAD = frame(encode(ConnAck()))[:-1]
_SUBMIT = bytes((SUBMIT,))


def submitHeader(payloadSize: int) -> bytes:
    """
    The length field and command byte of a Submit with this payload size;
    the 8-byte id and the payload follow.
    """
    return LENGTH.pack(HEADER_SIZE + 1 + ID_SIZE + payloadSize) + _SUBMIT


def submitFrame(id: bytes, payload: bytes) -> bytes:
    """
    One framed Submit, byte for byte C{frame(encode(Submit(id, payload)))}
    without building a packet object (C{id} must be 8 bytes).
    """
    return LENGTH.pack(HEADER_SIZE + 1 + ID_SIZE + len(payload)) + _SUBMIT + id + payload


def connFrame(token: bytes) -> bytes:
    """
    A framed Conn carrying C{token} (empty, as the reference, when none).
    """
    return frame(encode(Conn(token)))


class NotAConnAck(Exception):
    """
    The first frame after a Conn was not a ConnAck.
    """


def readConnAck(buffer: bytes) -> tuple[int | None, bytes]:
    """
    Read the ConnAck that answers a Conn from the start of C{buffer}.

    @return: C{(result, rest)} once the whole ConnAck is there, C{(None,
        buffer)} while more bytes are needed.
    @raise NotAConnAck: the bytes are something else (described in hex).
    """
    head = buffer[: len(_CONN_ACK_HEAD)]
    if not _CONN_ACK_HEAD.startswith(head):
        raise NotAConnAck(
            f"expected a ConnAck (0x{CONN_ACK:02x}) {_CONN_ACK_HEAD.hex()}xx, "
            f"got {buffer[:32].hex()}"
        )
    if len(buffer) < CONN_ACK_SIZE:
        return None, buffer
    return buffer[CONN_ACK_SIZE - 1], buffer[CONN_ACK_SIZE:]
