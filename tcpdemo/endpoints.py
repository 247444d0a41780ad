"""
Endpoint descriptions and listening on them: the backlog every listener
gets, and a service that listens while running and logs its real address.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpdemo.startup import cannotListen

#: Endpoint types whose listen() takes a backlog argument.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def withBacklog(description: str, backlog: int) -> str:
    """
    Add C{backlog=} to a tcp, ssl or unix endpoint description that lacks
    one: Twisted's default of 50 drops bursts of connects.
    """
    kind = description.split(":", 1)[0].lower()
    if kind not in _BACKLOG_TYPES or re.search(r"(^|:)backlog=", description):
        return description
    return f"{description}:backlog={backlog}"



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
        self.log.info(
            "{what} listening on {address}", what=self.what, address=self.address()
        )

    def address(self) -> str:
        assert self.port is not None
        host = self.port.getHost()
        if hasattr(host, "port"):
            return f"{host.type.lower()}:{host.host}:{host.port}"  # type: ignore[attr-defined]
        return f"unix:{getattr(host, 'name', host)}"

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
