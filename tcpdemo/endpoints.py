"""
Endpoint descriptions, in one place for the server, debug, the supervisor
and the client: parse, validate, describe, add a backlog, quote; the one
short form of a peer address for log lines; and a service that listens on
an endpoint while running and logs its real address.

Built on Twisted's public endpoint API (C{serverFromString},
C{clientFromString}, C{quoteStringArgument}); where Twisted has no public
way (splitting a description without building its endpoint, a type's
argument names) the private names are wrapped in
L{tcpdemo.twistedinternals}.  This module stays light -- no twisted.web,
no prometheus_client -- as the client imports it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from tcpdemo.startup import ENDPOINT_EXAMPLES, cannotListen
from tcpdemo.twistedinternals import (
    BINDABLE_SERVER_TYPES,
    bindServerArguments,
    splitDescription,
)

__all__ = [
    "AdoptedListenerService",
    "checkServerEndpoint",
    "Description",
    "ListenTCPReactor",
    "ListenerService",
    "describeListening",
    "describePeer",
    "parseDescription",
    "portArgument",
    "quoteArgument",
    "serverArguments",
    "withBacklog",
]

#: Endpoint types whose listen() takes a backlog argument.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")

#: Escape C{\\} and C{:} in one argument of an endpoint string (Twisted's).
quoteArgument = quoteStringArgument


@attrs.frozen
class Description:
    """
    An endpoint string, split: C{kind:arg:arg:key=value...}, unescaped.
    """

    kind: str
    args: tuple[str, ...]
    kwargs: dict[str, str]


def parseDescription(description: str) -> Description:
    """
    Split an endpoint string as C{serverFromString} and C{clientFromString}
    do: colons separate the fields, a backslash escapes the next character,
    and a field with an (unescaped) C{=} is a keyword argument.  The kind is
    kept as written.

    @raise ValueError: Twisted cannot split it (a trailing lone backslash).
    """
    try:
        args, kwargs = splitDescription(description)
    except Exception as e:
        # Twisted's tokenizer runs off the end of a trailing backslash.
        raise ValueError(f"{description!r} is not an endpoint description") from e
    kind = str(args[0]) if args else ""
    return Description(kind, tuple(str(a) for a in args[1:]), dict(kwargs))


def withBacklog(description: str, backlog: int) -> str:
    """
    Add C{backlog=} to a tcp, tcp6, ssl or unix endpoint description that
    lacks one: Twisted's default of 50 drops bursts of connects.
    """
    try:
        parsed = parseDescription(description)
    except Exception:
        # Not a description Twisted can split: serverFromString will say so.
        return description
    if parsed.kind.lower() not in _BACKLOG_TYPES or "backlog" in parsed.kwargs:
        return description
    return f"{description}:backlog={backlog}"


def portArgument(description: str) -> str | None:
    """
    The port argument of a tcp, tcp6 or ssl server description, as written
    (None for other types, or none given).
    """
    parsed = parseDescription(description)
    if parsed.kind.lower() not in BINDABLE_SERVER_TYPES:
        return None
    if "port" in parsed.kwargs:
        return parsed.kwargs["port"]
    return parsed.args[0] if parsed.args else None


def serverArguments(parsed: Description) -> dict[str, Any]:
    """
    The arguments of a tcp, tcp6 or ssl server description by name, each
    type's defaults filled in (so C{tcp:6060:127.0.0.1} has
    C{interface='127.0.0.1'}, and C{tcp6:6060} C{interface='::'}).

    @raise TypeError: the arguments do not fit the type.
    @raise ValueError: another type.
    """
    bound = bindServerArguments(parsed.kind.lower(), list(parsed.args), parsed.kwargs)
    return dict(bound.arguments)


class ListenTCPReactor:
    """
    Stands for the reactor in a tcp or tcp6 server endpoint built by
    C{serverFromString}: the endpoint's C{listen} hands the parsed port,
    backlog and interface to C{listenTCP} (with the signature of
    C{IReactorTCP.listenTCP}), so a caller can open its sockets its own way
    (the supervisor's C{SO_REUSEPORT} group) from any description Twisted
    accepts.
    """

    def __init__(self, listenTCP: Callable[..., Any]) -> None:
        self.listenTCP = listenTCP


class _NoReactor:
    """
    Stands for the reactor while an endpoint description is only parsed:
    the server endpoints keep it and use it only to listen.
    """


def checkServerEndpoint(option: str, description: str) -> None:
    """
    Raise L{usage.UsageError}, one line saying what is wrong and how to fix
    it, unless C{description} (the value of C{option}) is a server endpoint
    Twisted can parse, with a port from 0 to 65535, and any TLS key and
    certificate it names can be read.
    """
    shown = f"{option} {description!r}"
    try:
        serverFromString(_NoReactor(), description)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise usage.UsageError(
            f"{shown}: cannot read{where}: {e.strerror or e}; give readable PEM files, "
            f"e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem"
        ) from e
    except Exception as e:
        reason = str(e).strip() or type(e).__name__
        if "ssl" in description.split(":", 1)[0].lower():
            reason += " (is privateKey= a PEM private key, and certKey= its certificate?)"
        raise usage.UsageError(
            f"{shown} is not a valid endpoint: {reason}; give one like {ENDPOINT_EXAMPLES}"
        ) from e
    port = portArgument(description)
    if port is not None and not (port.isdigit() and int(port) <= 65535):
        raise usage.UsageError(
            f"{shown}: port {port} is out of range: give a port from 1 to 65535 (0: any free port)"
        )


def describePeer(address: IAddress | None) -> str:
    """
    A short human form of an address for log lines: C{host:port},
    C{[v6host]:port}, C{unix:PATH}, or C{unix socket} for an unnamed one.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{os.fsdecode(name)}"
    if type(address).__name__ == "UNIXAddress":
        return "unix socket"
    return repr(address)


def describeListening(address: IAddress) -> str:
    """
    A listening address as an endpoint-like string: C{tcp:HOST:PORT}
    (C{tcp6:...} for IPv6), or C{unix:PATH}.
    """
    if hasattr(address, "port"):
        return f"{address.type.lower()}:{address.host}:{address.port}"  # type: ignore[attr-defined]
    name = getattr(address, "name", None)
    return f"unix:{os.fsdecode(name)}" if name is not None else repr(address)


class ListenerService(Service):
    """
    Listen on an endpoint while running; log the real address once.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: Factory[Any],
        what: str,
        option: str = "--port",
    ):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.what = what
        #: The command-line option that gave the endpoint, for errors.
        self.option = option
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Listen before privileges are dropped, and fail loudly: twistd must
        # exit with an error if the address is taken, not run deaf.
        Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except Exception:
            raise cannotListen(self.option, self.description, Failure()) from None
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.description}: listen() did not complete at once")
        if isinstance(outcome[0], Failure):
            raise cannotListen(self.option, self.description, outcome[0])
        self.port = outcome[0]
        self.log.info("{what} listening on {address}", what=self.what, address=self.address())

    def address(self) -> str:
        assert self.port is not None
        return describeListening(self.port.getHost())

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class AdoptedListenerService(ListenerService):
    """
    Serve on a listening socket inherited as file descriptor C{fd} (a
    worker's, from the parent with C{--workers N}), with
    C{reactor.adoptStreamPort}.  The descriptor is closed once adopted (the
    port has its own duplicate).
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        family: socket.AddressFamily,
        factory: Factory[Any],
        what: str,
        backlog: int = 50,
    ):
        ListenerService.__init__(self, reactor, f"fd:{fd}", factory, what)
        self.fd = fd
        self.family = family
        self.backlog = backlog

    def _listen(self) -> None:
        # A replacement worker's socket comes bound but not listening, so
        # that no connection waits in it while this worker starts: listen
        # now (a socket that already listens just takes the backlog).
        with socket.socket(self.family, socket.SOCK_STREAM, fileno=os.dup(self.fd)) as s:
            s.setblocking(False)
            s.listen(self.backlog)
        self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        os.close(self.fd)
        self.log.info(
            "{what} accepting on {address} (the parent's socket, fd {fd})",
            what=self.what,
            address=self.address(),
            fd=self.fd,
        )
