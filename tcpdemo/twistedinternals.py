"""
Every private Twisted name tcpdemo relies on, each wrapped here once, with
the reason no public API does the job.

A Twisted release may rename any of them without notice.
tests/test_twistedinternals.py checks each against the installed Twisted
and fails by name if one is gone, so an upgrade breaks that test first,
not a server in production.  Nothing else in tcpdemo names them.

This module is light (no twisted.web, no prometheus_client): the client
reaches it through L{tcpdemo.endpoints}.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from twisted.internet import endpoints

# -------------------------------------------------------- endpoint strings

#: The server endpoint types whose arguments L{bindServerArguments} knows.
BINDABLE_SERVER_TYPES = ("tcp", "tcp6", "ssl")


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    An endpoint string split into positional and keyword arguments, the type
    first, as C{serverFromString} and C{clientFromString} split it.

    Why private: Twisted's public functions parse and build an endpoint in
    one step (and a server endpoint needs a reactor and reads TLS files);
    reading a description -- its port, interface, type or backlog -- without
    building anything needs the parser alone, C{endpoints._parse}.
    """
    return endpoints._parse(description)  # type: ignore[no-any-return]


def bindServerArguments(kind: str, args: list[str], kw: dict[str, str]) -> inspect.BoundArguments:
    """
    Bind a C{tcp}, C{tcp6} or C{ssl} server endpoint's arguments (after the
    type) as Twisted's own parser for C{kind} does, defaults applied, so a
    positional interface (C{tcp:6060:127.0.0.1}) counts like a keyword one.

    Why private: the parsers (C{_parseTCP}, C{_parseSSL}, and the C{tcp6}
    plugin's C{_TCP6ServerParser._parseServer}) are the only statement of
    each type's argument names, order and defaults.

    @raise TypeError: the arguments do not fit the type.
    @raise ValueError: C{kind} is not one of L{BINDABLE_SERVER_TYPES}.
    """
    parser: Callable[..., Any]
    leading: tuple[None, ...]
    if kind == "tcp":
        parser, leading = endpoints._parseTCP, (None,)
    elif kind == "ssl":
        parser, leading = endpoints._parseSSL, (None,)
    elif kind == "tcp6":
        # tcp6 is a plugin; its parser is a method taking (self, reactor, ...).
        parser, leading = endpoints._TCP6ServerParser._parseServer, (None, None)
    else:
        raise ValueError(f"no known argument list for {kind!r} server endpoints")
    bound = inspect.signature(parser).bind(*leading, *args, **kw)
    bound.apply_defaults()
    return bound


# ----------------------------------------------------------------- reactor


def clearExitSignal(reactor: Any) -> bool:
    """
    Forget the signal that stopped C{reactor}, so twistd exits 0 rather than
    re-raising it; whether there was one.

    Why private: twistd reads C{reactor._exitSignal} after the reactor stops
    and kills itself with that signal (twisted.application.app); there is
    no public way to say a signalled stop completed cleanly.  A reactor
    without the attribute (a test's, say) has nothing to clear.
    """
    if getattr(reactor, "_exitSignal", None) is None:
        return False
    reactor._exitSignal = None
    return True


# ---------------------------------------------- tcp.Connection send buffer

#: What L{sendBufferEmpty} reads of a C{twisted.internet.tcp.Connection}
#: (the buffer state of C{abstract.FileDescriptor}).
CONNECTION_BUFFER_ATTRIBUTES = ("_tempDataLen", "dataBuffer", "offset")


def sendBufferEmpty(transport: Any) -> bool:
    """
    Whether a C{tcp.Connection} holds no unsent bytes, so bytes sent now
    with its C{writeSomeData} cannot overtake earlier ones.

    Why private: Twisted keeps the send buffer in C{dataBuffer} (sent up to
    C{offset}) plus C{_tempDataLen} bytes not yet joined into it, and offers
    no public "is the buffer empty".  The direct send of
    L{tcpdemo.protocol.TcpDemoServerProtocol._write} needs it to keep acks
    in order; L{tcpdemo.protocol.directSendMissing} checks the names once
    per connection and falls back to C{write} without them.
    """
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


def bufferedBytes(transport: Any) -> int:
    """
    How many bytes a C{tcp.Connection}'s send buffer holds, counted as
    Twisted counts them when it decides to pause its producer
    (C{FileDescriptor._isSendBufferFull}: already-sent bytes before
    C{offset} included), for tests that watch a buffer fill.  Same private
    state as L{sendBufferEmpty}.
    """
    return len(transport.dataBuffer) + transport._tempDataLen  # type: ignore[no-any-return]


def readDelivery(transport: Any) -> Callable[[bytes], Any] | None:
    """
    The method a C{tcp.Connection}'s C{doRead} hands received bytes to, or
    None on a transport without it.

    Why private: L{tcpdemo.readinto} replaces C{doRead} to read into one
    shared buffer and must then deliver the bytes exactly as Twisted's own
    C{doRead} does -- C{_dataReceived} passes them to the protocol and
    turns its return value into a lost connection if need be; there is no
    public way to do that.
    """
    return getattr(transport, "_dataReceived", None)


# ------------------------------------------------------------- usage.Options


def optionDispatchers(options: Any) -> dict[str, Any]:
    """
    An C{usage.Options}' table from option name to the handler of its
    value, which can be changed in place.

    Why private: C{usage.Options} keeps it in C{_dispatch} and has no
    public hook to name the option in a coercion error (its own message is
    only "Parameter type enforcement failed").
    """
    return options._dispatch  # type: ignore[no-any-return]


# ------------------------------------------------------------- twisted.web


def requestDisconnected(request: Any) -> bool:
    """
    Whether the client of a C{twisted.web} request has gone (so writing an
    answer would only raise).

    Why private: C{Request} records it in C{_disconnected}; the public
    C{notifyFinish} tells the same only by a Deferred, which a renderer
    already holding the request cannot ask synchronously.
    """
    return bool(request._disconnected)
