"""
Start-up errors as one line each: what is wrong and how to fix it, with no
traceback and no usage text, and a non-zero exit status.

Two kinds of error stop the server before it serves:

  - a bad option value or endpoint description, found while the options
    are parsed (L{tcpdemo.endpoints.checkServerEndpoint} parses each endpoint and reads its
    TLS files then, before anything listens);
  - an endpoint that cannot listen (address in use, no such interface, a
    port below 1024 without privileges), found when the listeners start:
    L{cannotListen} makes a L{StartupError} of it.

L{exitOnUsageError} and L{reportStartupErrorsAsOneLine} turn both into one
line on standard error when C{twistd tcpdemo} parses the options; the
library code keeps raising exceptions, which the tests check.
"""

from __future__ import annotations

import errno
import sys
from types import TracebackType
from typing import Any, Callable, NoReturn

from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

#: What a bad endpoint is told to look like.
ENDPOINT_EXAMPLES = (
    "tcp:8888, tcp:8888:interface=127.0.0.1, "
    "ssl:8443:privateKey=key.pem:certKey=cert.pem or unix:/run/tcpdemo.sock"
)

#: The command named at the start of every start-up error line.
COMMAND = "twistd tcpdemo"


class StartupError(Exception):
    """
    The server cannot start; the message is one line that says why and
    what to do about it.
    """


def _hint(error: BaseException | None) -> str:
    """
    How to fix a failure to listen, by its errno.
    """
    socketError = getattr(error, "socketError", error)
    number = getattr(socketError, "errno", None)
    if number == errno.EADDRINUSE:
        return "another process is listening there: stop it, or choose another port"
    if number == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address: give one it has, e.g. 127.0.0.1"
    if number == errno.EACCES:
        return "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port of 1024 or more"
    if number == errno.ENOENT:
        return "the socket's directory must exist"
    if isinstance(number, int) and number < 0:
        return "the interface is not an address or a name this host resolves"
    return f"check the endpoint; valid ones look like {ENDPOINT_EXAMPLES}"


def cannotListen(option: str, description: str, failure: Failure) -> StartupError:
    """
    The L{StartupError} for C{option}'s endpoint C{description}, which
    failed to listen with C{failure}.
    """
    error = failure.value
    socketError = getattr(error, "socketError", None)
    if isinstance(socketError, OSError) and socketError.strerror:
        reason = socketError.strerror.lower()
    else:
        reason = str(error).strip().rstrip(".") or type(error).__name__
    if isinstance(error, CannotListenError):
        # The address that failed, not the description with the backlog
        # this server adds to it.
        where = f"{error.interface or '*'}:{error.port}"
    else:
        where = repr(description)
    return StartupError(f"{option}: cannot listen on {where}: {reason}; {_hint(error)}")


def _writeError(message: str) -> None:
    # The process's own standard error: twistd sends sys.stderr to its log.
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"{COMMAND}: {message}\n")
    stream.flush()


def _fail(message: str) -> NoReturn:
    _writeError(message)
    raise SystemExit(2)


def exitOnUsageError(parse: Callable[[], None]) -> None:
    """
    Run C{parse}; if it raises L{usage.UsageError}, write its message as one
    line on standard error and exit with status 2.

    twistd itself would print the whole usage text first, and twistd before
    Twisted 26.10 would then exit 0; C{--help} still prints the usage text
    (it exits on its own, with status 0).
    """
    try:
        parse()
    except usage.UsageError as e:
        message = str(e).strip() or "bad options"
        _fail(f"{message} (see {COMMAND} --help)")


_installed: list[bool] = []


def reportStartupErrorsAsOneLine() -> None:
    """
    From now on, a L{StartupError} that ends the process (raised from
    twistd's start of the services, and out of twistd) is logged once and
    written as one line on standard error, rather than as a traceback.

    The error is left to propagate, rather than turned into C{SystemExit}
    where it is raised, so that twistd removes its pid file and, when it
    daemonizes, tells the waiting parent process, which exits 1; the
    interpreter then reports it through C{sys.excepthook}, set here, and
    exits 1.
    """
    if _installed:
        return
    _installed.append(True)
    previous = sys.excepthook
    log = Logger(namespace="tcpdemo.startup")

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> Any:
        if isinstance(value, StartupError):
            log.critical("cannot start: {error}", error=str(value))
            _writeError(str(value))
            return None
        return previous(kind, value, traceback)

    sys.excepthook = hook
