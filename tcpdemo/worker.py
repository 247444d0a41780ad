"""
A worker process of C{twistd -n tcpdemo --workers N} (C{python -m
tcpdemo.worker}): a whole tcpdemo server but for its listener, which is
the parent's socket, inherited as a file descriptor and adopted with
C{reactor.adoptStreamPort}.  It stops, delivering its owed acks, on
SIGTERM, SIGINT, or when the parent goes away.  See L{tcpdemo.supervisor}.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import IO, Any, Callable, NoReturn

from prometheus_client import CollectorRegistry
from twisted.internet import fdesc
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo.endpoints import AdoptedListenerService
from tcpdemo.supervisor import WORKER_FD
from tcpdemo.tap import Options, TcpDemoService, buildFactory

#: The families a worker's inherited socket may have.
_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6}


@implementer(IReadDescriptor)
class ParentWatch:
    """
    Calls C{lost} when the parent goes away: the worker's standard input
    is a pipe from the parent, which only the parent's exit closes.
    """

    def __init__(self, fd: int, lost: Callable[[], None]) -> None:
        self.fd = fd
        self.lost = lost
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self.fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        self.lost()

    def logPrefix(self) -> str:
        return "parent"


class WorkerOptions(Options):
    """
    A worker's command line: the server options, plus where its listening
    socket is and which worker it is.
    """

    optParameters = Options.optParameters + [
        ["fd", None, WORKER_FD, "The inherited listening socket's descriptor.", int],
        ["family", None, "INET", "Its address family: INET or INET6."],
        ["worker-id", None, "1", "This worker's number, for metrics and logs."],
    ]

    def postOptions(self) -> None:
        Options.postOptions(self)
        if self["family"] not in _FAMILIES:
            raise usage.UsageError(f"--family must be INET or INET6, not {self['family']}")


def startLogging(out: IO[str]) -> None:
    """
    Log events as JSON lines on C{out}, for the parent to re-emit.
    """
    observer = FilteringLogObserver(
        jsonFileLogObserver(out, recordSeparator=""),
        [LogLevelFilterPredicate(LogLevel.info)],
    )
    globalLogBeginner.beginLoggingTo([observer])


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    A worker: serve on the inherited socket until SIGTERM, SIGINT or the
    parent's exit, then deliver the owed acks and exit 0 (1 if the grace
    period ran out).
    """
    options = WorkerOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"tcpdemo.worker: {e}\n")
        sys.exit(2)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        sys.stderr.write(
            "tcpdemo.worker: warning: PROMETHEUS_MULTIPROC_DIR is not set; this "
            "worker's metrics will not reach the parent\n"
        )
    startLogging(sys.stdout)
    log = Logger(namespace="tcpdemo.worker")

    from twisted.internet import reactor

    worker = options["worker-id"]
    factory = buildFactory(options, reactor, CollectorRegistry(), worker=worker)
    listener = AdoptedListenerService(
        reactor,
        options["fd"],
        _FAMILIES[options["family"]],
        factory,
        "tcpdemo worker",
        backlog=options["backlog"],
    )
    service = TcpDemoService(
        reactor,
        factory,
        port=None,
        metrics=None,
        gracePeriod=options["grace-period"],
        listener=listener,
    )
    stopping: list[str] = []

    def stop(why: str) -> None:
        if stopping:
            return
        stopping.append(why)
        log.info("stopping ({why}): delivering owed acks", why=why)
        reactor.stop()

    def onSignal(number: int, frame: Any) -> None:
        reactor.callFromThread(stop, signal.Signals(number).name)  # type: ignore[attr-defined]

    def installSignals() -> None:
        # Replaces the reactor's handlers: a second signal (SIGINT from a
        # terminal, then SIGTERM from the parent) must not stop it twice.
        signal.signal(signal.SIGTERM, onSignal)
        signal.signal(signal.SIGINT, onSignal)

    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(installSignals)
    reactor.addReader(ParentWatch(0, lambda: stop("the parent went away")))
    reactor.run()
    # The reactor put the default handlers back as it stopped: a SIGTERM
    # now (the parent's, after one sent to the whole process group) would
    # kill a worker that has already delivered everything it owed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(0 if service.drainedCleanly is not False else 1)


if __name__ == "__main__":
    main()
