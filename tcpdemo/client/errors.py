"""
What can go wrong for a client of the library (L{tcpdemo.client.connect}).

A lost connection is Twisted's own L{twisted.internet.error.ConnectionLost},
and a Submit's timeout Twisted's L{twisted.internet.defer.TimeoutError}; the
rest are here.
"""

from __future__ import annotations


class ClientError(Exception):
    """
    The base of this library's own errors.
    """


class ConnectFailed(ClientError):
    """
    The connection could not be made or secured: refused, timed out, or the
    TLS handshake failed (for instance an untrusted server certificate).
    """


class ConnRefused(ClientError):
    """
    The server answered the authenticating Conn with a non-zero ConnAck
    result (1: the token was not accepted).

    @ivar result: the ConnAck's result byte.
    """

    def __init__(self, result: int) -> None:
        super().__init__(
            f"the server refused the Conn: ConnAck result {result} (is the token right?)"
        )
        self.result = result


class ServerProtocolError(ClientError):
    """
    The server sent something that is not the ack owed next: a wrong id,
    command byte or length, or an ack nothing was waiting for.  Every
    outstanding Submit fails with this and the connection is closed, as
    nothing later on it can be trusted.

    @ivar kind: a stable label, one of C{tcpdemo.client.checker}'s kinds
        (C{wrong_id}, C{wrong_command}, C{bad_length}, C{unexpected_ack}).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class QueueFull(ClientError):
    """
    C{submit} was called with C{window} Submits on the wire and C{maxQueued}
    more waiting: it fails at once rather than queue without bound.
    """


class ClientClosed(ClientError):
    """
    C{submit} was called after C{close}, or after the connection was lost.
    """
