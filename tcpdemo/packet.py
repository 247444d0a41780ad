"""
The packet layer: what a frame payload means.

A payload is a one-byte command id followed by that command's body.  The
classes below model the four commands; L{COMMANDS} is the single table from
command id to class that both L{decode} and L{encode} use.
"""

from __future__ import annotations

from typing import ClassVar, Union

import attrs

ID_SIZE = 8

RESULT_OK = 0
RESULT_ERROR = 1


def abbreviate(data: bytes, limit: int = 16) -> str:
    """
    Show at most C{limit} bytes of C{data} as hex, for error messages and logs.
    """
    shown = data[:limit].hex()
    if len(data) > limit:
        return f"{shown}... ({len(data)} bytes)"
    return f"{shown} ({len(data)} bytes)" if data else "(empty)"


class ProtocolError(Exception):
    """
    The peer sent something this protocol does not allow.

    @cvar reason: a short, stable label for metrics.
    """

    reason: ClassVar[str] = "protocol_error"


class BadLength(ProtocolError):
    """
    A frame's C{total_length} is negative or too small to hold a command.
    """

    reason = "bad_length"


class FrameTooLarge(BadLength):
    """
    A frame's C{total_length} is above the configured maximum.
    """

    reason = "frame_too_large"


class UnknownCommand(ProtocolError):
    """
    The command id is not one this protocol defines.
    """

    reason = "unknown_command"


class UnexpectedCommand(ProtocolError):
    """
    A well-formed command arrived in the wrong direction or state, such as an
    ack sent to the server.
    """

    reason = "unexpected_command"


class MalformedPacket(ProtocolError):
    """
    The command id is known but its body has the wrong shape.
    """

    reason = "malformed_packet"


def _check_id(instance: object, attribute: attrs.Attribute, value: bytes) -> None:  # type: ignore[type-arg]
    if not isinstance(value, bytes) or len(value) != ID_SIZE:
        raise ValueError(f"{attribute.name} must be {ID_SIZE} bytes, not {value!r}")


def _check_result(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if not 0 <= value <= 255:
        raise ValueError(f"{attribute.name} must fit in one byte, not {value!r}")


@attrs.frozen
class Conn:
    """
    Optional handshake from the client.  The reference leaves the body empty;
    this project lets it carry an authentication token.
    """

    token: bytes = b""

    def encode_body(self) -> bytes:
        return self.token

    @classmethod
    def decode_body(cls, body: bytes) -> Conn:
        return cls(body)


@attrs.frozen
class ConnAck:
    """
    The server's answer to L{Conn}.
    """

    result: int = attrs.field(default=RESULT_OK, validator=_check_result)

    def encode_body(self) -> bytes:
        return bytes((self.result,))

    @classmethod
    def decode_body(cls, body: bytes) -> ConnAck:
        if len(body) != 1:
            raise MalformedPacket(f"ConnAck body must be 1 byte, got {abbreviate(body)}")
        return cls(body[0])


@attrs.frozen
class Submit:
    """
    A request: an opaque 8-byte id and any payload.
    """

    id: bytes = attrs.field(validator=_check_id)
    payload: bytes = b""

    def encode_body(self) -> bytes:
        return self.id + self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> Submit:
        if len(body) < ID_SIZE:
            raise MalformedPacket(
                f"Submit body must hold an {ID_SIZE}-byte id, got {abbreviate(body)}"
            )
        return cls(body[:ID_SIZE], body[ID_SIZE:])


@attrs.frozen
class SubmitAck:
    """
    The answer to one L{Submit}: the same id and a result byte.
    """

    id: bytes = attrs.field(validator=_check_id)
    result: int = attrs.field(default=RESULT_OK, validator=_check_result)

    def encode_body(self) -> bytes:
        return self.id + bytes((self.result,))

    @classmethod
    def decode_body(cls, body: bytes) -> SubmitAck:
        if len(body) != ID_SIZE + 1:
            raise MalformedPacket(
                f"SubmitAck body must be {ID_SIZE + 1} bytes, got {abbreviate(body)}"
            )
        return cls(body[:ID_SIZE], body[ID_SIZE])


Packet = Union[Conn, ConnAck, Submit, SubmitAck]

CONN = 0x01
SUBMIT = 0x02
CONN_ACK = 0x80
SUBMIT_ACK = 0x81

#: The one table of command ids, used by both directions of the codec.
COMMANDS: dict[int, type[Packet]] = {
    CONN: Conn,
    SUBMIT: Submit,
    CONN_ACK: ConnAck,
    SUBMIT_ACK: SubmitAck,
}
COMMAND_IDS: dict[type[Packet], int] = {cls: cid for cid, cls in COMMANDS.items()}


def decode(payload: bytes) -> Packet:
    """
    Decode one frame payload into its packet.

    @raise ProtocolError: the payload is not a packet of this protocol.
    """
    if not payload:
        raise MalformedPacket("empty packet: no command id")
    cls = COMMANDS.get(payload[0])
    if cls is None:
        raise UnknownCommand(f"unknown command id 0x{payload[0]:02x} in {abbreviate(payload)}")
    return cls.decode_body(payload[1:])


def encode(packet: Packet) -> bytes:
    """
    Encode C{packet} as a frame payload (without the length prefix).
    """
    return bytes((COMMAND_IDS[type(packet)],)) + packet.encode_body()
