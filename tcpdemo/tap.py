"""
C{twistd tcpdemo}: its command-line options and C{makeService}, which builds
the server (or, with C{--workers N}, the supervising parent) as a Twisted
service.  The plugin imports this module only when the server is run.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from tcpdemo.endpoints import (
    ListenerService,
    checkServerEndpoint,
    parseDescription,
    withBacklog,
)
from tcpdemo.exitwatch import armExitWatchdog
from tcpdemo.frame import DEFAULT_MAX_FRAME_LENGTH, MIN_FRAME_LENGTH
from tcpdemo.handlers import HandlerArgumentError, ISubmitHandler, findMaker
from tcpdemo.handlers.ack import AckHandler
from tcpdemo.limits import raiseFileLimit
from tcpdemo.metrics import ServerMetrics, metricsSite
from tcpdemo.optiontypes import nonNegativeFloat, nonNegativeInt, positiveInt
from tcpdemo.pending import (
    DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_TOTAL,
    HandlerRunner,
    HandlerServerFactory,
)
from tcpdemo.protocol import (
    DEFAULT_MAX_INCOMING_MEMORY,
    DEFAULT_WRITE_BUFFER_LIMIT,
    TcpDemoServerFactory,
)
from tcpdemo.startup import (
    StartupError,
    exitOnUsageError,
    reportStartupErrorsAsOneLine,
)
from tcpdemo.twistedinternals import clearExitSignal, optionDispatchers

DEFAULT_PORT = "tcp:8888"
DEFAULT_METRICS = "tcp:8889"
DEFAULT_BACKLOG = 4096
DEFAULT_GRACE_PERIOD = 10.0


def _frameLength(value: str) -> int:
    wanted = f"an integer from {MIN_FRAME_LENGTH} to {2**31 - 1}"
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be {wanted}, not {value!r}") from None
    if number < MIN_FRAME_LENGTH or number > 2**31 - 1:
        raise ValueError(f"must be {wanted}, not {value}")
    return number


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return positiveInt(value)
    except ValueError:
        raise ValueError(f"must be a positive integer or 'auto', not {value!r}") from None


#: --worker-sockets values.
WORKER_SOCKETS = ("reuseport", "shared")


def _workerSockets(value: str) -> str:
    if value not in WORKER_SOCKETS:
        raise ValueError(f"must be one of {', '.join(WORKER_SOCKETS)}, not {value}")
    return value


#: Endpoint types the parent can listen on for --workers N > 1.
WORKER_ENDPOINT_TYPES = ("tcp", "tcp6")


def _endpointOrNone(value: str) -> str | None:
    return None if value.lower() in ("", "none", "off") else value


class _NamedCoerce(usage.CoerceParameter):
    """
    Coerces an option's value, naming the option and the value in the
    error: C{--workers '0': must be a positive integer or 'auto', not '0'}.
    """

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName} needs a value")
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{parameterName} {value!r}: {e}") from None


class Options(usage.Options):
    """
    C{twistd tcpdemo} options.  Endpoints are Twisted endpoint strings, so
    C{ssl:} and C{unix:} listeners need no code of their own.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the tcpdemo Submit/SubmitAck protocol, with Prometheus metrics "
        "served from the same reactor."
    )

    optParameters: list[list[Any]] = [
        ["port", "p", DEFAULT_PORT, "Endpoint to serve the protocol on."],
        [
            "metrics",
            "m",
            DEFAULT_METRICS,
            "Endpoint to serve Prometheus /metrics on, or 'none' to disable.",
            _endpointOrNone,
        ],
        [
            "debug",
            None,
            None,
            "Endpoint for the profiling endpoints (/debug/profile, "
            "/debug/allocations), e.g. tcp:6060:interface=127.0.0.1. Off by "
            "default; an address other than loopback is refused.",
            _endpointOrNone,
        ],
        [
            "max-frame-length",
            None,
            DEFAULT_MAX_FRAME_LENGTH,
            "Largest total_length accepted (bytes, counting the 4-byte length "
            "field); a longer frame closes its connection before its body is read.",
            _frameLength,
        ],
        [
            "max-connections",
            None,
            0,
            "Refuse connections beyond this many open ones (0: no limit).",
            nonNegativeInt,
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Close a connection that sends nothing for this many seconds (0: off).",
            nonNegativeFloat,
        ],
        [
            "write-buffer-limit",
            None,
            DEFAULT_WRITE_BUFFER_LIMIT,
            "Stop reading from a connection while more than this many bytes of "
            "its acks are unsent.",
            positiveInt,
        ],
        [
            "max-incoming-memory",
            None,
            DEFAULT_MAX_INCOMING_MEMORY,
            "Bytes all connections' partial frames may hold together; past it, "
            "the connections with the largest ones are closed (memory_budget).",
            positiveInt,
        ],
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "Listen backlog added to tcp/ssl/unix endpoints that do not set one.",
            positiveInt,
        ],
        [
            "grace-period",
            None,
            DEFAULT_GRACE_PERIOD,
            "On stop, seconds to deliver owed acks and stop the handler before "
            "closing connections hard and exiting.",
            nonNegativeFloat,
        ],
        [
            "auth-token-file",
            None,
            None,
            "If set, a connection must first send a Conn carrying this file's "
            "contents (surrounding whitespace stripped) before any Submit.",
        ],
        [
            "workers",
            None,
            1,
            "Worker processes serving --port, or 'auto' for one per CPU. With more "
            "than 1, this process listens (tcp: and tcp6: endpoints only), runs the "
            "workers on its sockets, restarts any that dies, and serves their "
            "summed metrics; --max-connections then applies to each worker.",
            _workers,
        ],
        [
            "worker-sockets",
            None,
            "reuseport",
            "With --workers: 'reuseport' gives each worker its own SO_REUSEPORT "
            "socket, so that the kernel spreads connections evenly (Linux; elsewhere "
            "'shared' is used); 'shared' gives all workers one socket, where a burst "
            "of connects may go mostly to one worker.",
            _workerSockets,
        ],
        [
            "handler",
            None,
            "ack",
            "NAME[:ARG]: the handler that decides each Submit's result: 'ack' "
            "(acknowledge, store nothing), 'sqlite:PATH' (store durably, ack once "
            "committed), or a plugin's name (docs/handlers.md).",
        ],
        [
            "handler-timeout",
            None,
            DEFAULT_HANDLER_TIMEOUT,
            "Seconds a batch may take in the handler before its Submits get "
            "result 2 (0: no limit).",
            nonNegativeFloat,
        ],
        [
            "max-pending",
            None,
            DEFAULT_MAX_PENDING,
            "Stop reading a connection while this many of its Submits wait for "
            "the handler (not yet acked); read again below it.",
            positiveInt,
        ],
        [
            "max-pending-total",
            None,
            DEFAULT_MAX_PENDING_TOTAL,
            "Stop reading any connection while this many Submits of the whole "
            "process wait for the handler; read again below it.",
            positiveInt,
        ],
        [
            "max-pending-bytes",
            None,
            DEFAULT_MAX_PENDING_BYTES,
            "Stop reading any connection while the Submits of the whole process "
            "waiting for the handler hold this many bytes of frames; read again "
            "below it.",
            positiveInt,
        ],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        # Every coerced option's error names the option (usage.Options says
        # only "Parameter type enforcement failed").
        dispatchers = optionDispatchers(self)
        for name, dispatcher in list(dispatchers.items()):
            if type(dispatcher) is usage.CoerceParameter:
                dispatchers[name] = _NamedCoerce(self, dispatcher.coerce)

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse; under twistd (a parent command), report a usage error as one
        line and exit 2 rather than raise, and report a failure to listen
        as one line too (L{tcpdemo.startup}).
        """
        if getattr(self, "parent", None) is None:
            usage.Options.parseOptions(self, options)
            return
        reportStartupErrorsAsOneLine()
        exitOnUsageError(lambda: usage.Options.parseOptions(self, options))

    def postOptions(self) -> None:
        # Endpoints are parsed (and their TLS files read) now, so that a bad
        # one stops the start with one line before anything listens.
        for option in ("port", "metrics", "debug"):
            if self[option] is not None:
                checkServerEndpoint(f"--{option}", self[option])
        if self["debug"] is not None:
            from tcpdemo.debug import requireLoopback

            try:
                requireLoopback(self["debug"])
            except ValueError as e:
                raise usage.UsageError(f"--debug: {e}") from e
        path = self["auth-token-file"]
        self["auth-token"] = None
        if path is not None:
            try:
                with open(path, "rb") as f:
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"--auth-token-file: {e}") from e
            if not token:
                raise usage.UsageError(f"--auth-token-file: {path} is empty")
            self["auth-token"] = token
        try:
            maker, argument = findMaker(self["handler"])
        except HandlerArgumentError as e:
            raise usage.UsageError(f"--handler: {e}") from e
        self["handler-maker"] = maker
        self["handler-argument"] = argument
        if self["workers"] > 1 and getattr(maker, "singleProcess", False):
            raise usage.UsageError(
                f"--handler {maker.name} keeps one writer per store: use it with "
                f"--workers 1, not {self['workers']}"
            )
        if self["workers"] > 1:
            kind = parseDescription(self["port"]).kind.lower()
            if kind not in WORKER_ENDPOINT_TYPES:
                raise usage.UsageError(
                    f"--workers {self['workers']} needs a tcp: or tcp6: --port (the "
                    f"workers share one listening socket), not {self['port']!r}"
                )
            if self["debug"] is not None:
                raise usage.UsageError("--debug profiles one process: use it with --workers 1")


class TcpDemoService(MultiService):
    """
    The protocol listener and, optionally, the metrics listener.  Stopping
    it stops accepting, delivers the acks owed, then closes connections.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        factory: TcpDemoServerFactory,
        port: str | None,
        metrics: str | None,
        backlog: int = DEFAULT_BACKLOG,
        gracePeriod: float = DEFAULT_GRACE_PERIOD,
        debug: str | None = None,
        listener: ListenerService | None = None,
    ):
        MultiService.__init__(self)
        self.reactor = reactor
        self.factory = factory
        self.gracePeriod = gracePeriod
        #: After a stop: whether every owed ack was delivered in time.
        self.drainedCleanly: bool | None = None
        self._handlerStarted = False
        #: A handler start still to finish: nothing listens until it has.
        self._handlerStarting: defer.Deferred[Any] | None = None
        #: Whether the handler's start failed after the reactor ran.
        self.startFailed = False
        #: The reactor trigger that arms the exit watchdog at shutdown.
        self._exitWatch: Any = None
        if listener is None:
            if port is None:
                raise ValueError("a port or a listener is needed")
            listener = ListenerService(
                reactor, withBacklog(port, backlog), factory, "tcpdemo server"
            )
        self.server = listener
        self.server.setServiceParent(self)
        self.metricsListener: ListenerService | None = None
        if metrics is not None:
            self.metricsListener = ListenerService(
                reactor,
                withBacklog(metrics, backlog),
                metricsSite(factory.metrics.registry, beforeScrape=factory.tally.flush),
                "tcpdemo metrics (/metrics)",
                option="--metrics",
            )
            self.metricsListener.setServiceParent(self)
        self.debugListener: ListenerService | None = None
        if debug is not None:
            from tcpdemo.debug import debugSite

            self.debugListener = ListenerService(
                reactor, debug, debugSite(reactor), "tcpdemo debug (/debug/)", option="--debug"
            )
            self.debugListener.setServiceParent(self)

    @property
    def handlerRunner(self) -> HandlerRunner | None:
        """
        The runner of a handler other than the built-in C{ack}, if any.
        """
        factory = self.factory
        return factory.runner if isinstance(factory, HandlerServerFactory) else None

    def privilegedStartService(self) -> None:
        # The handler starts before anything listens.  If it fails at once,
        # start-up ends with one line (twistd prints a SystemExit's message
        # and exits 1); if it answers with a Deferred still to fire, the
        # listeners start when it does (see startService).
        self._startHandler()
        if self._handlerStarting is None:
            MultiService.privilegedStartService(self)

    def startService(self) -> None:
        if self._exitWatch is None:
            # Fires only when the reactor stops (twistd's SIGTERM, a
            # worker's stop): a service stopped in a running process (the
            # in-process tests) arms nothing.  Registered before twistd's
            # own stopService trigger, so it fires first.
            self._exitWatch = self.reactor.addSystemEventTrigger(
                "before", "shutdown", self._armExitWatchdog
            )
        self._startHandler()
        starting = self._handlerStarting
        if starting is None:
            MultiService.startService(self)
            return
        Service.startService(self)
        starting.addCallbacks(self._handlerStartedLater, self._handlerFailedLater)

    def _startHandler(self) -> None:
        runner = self.handlerRunner
        if runner is None or self._handlerStarted or self._handlerStarting is not None:
            return
        started = defer.maybeDeferred(runner.handler.startHandler)
        if not started.called:
            self._handlerStarting = started
            self.log.info("waiting for handler {name} to start", name=self._handlerName())
            return
        outcome: list[Any] = []
        started.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            raise SystemExit(self._startFailure(outcome[0]))
        self._handlerStarted = True
        self.log.info("handler {name} started", name=self._handlerName())

    def _handlerName(self) -> str:
        return str(getattr(self.factory, "handlerName", "handler"))

    def _startFailure(self, failure: Failure) -> str:
        return (
            f"tcpdemo: --handler {self._handlerName()} failed to start: "
            f"{failure.type.__name__ if failure.type else 'error'}: "
            f"{failure.getErrorMessage()}"
        )

    def _handlerStartedLater(self, _: object) -> None:
        self._handlerStarting = None
        self._handlerStarted = True
        self.log.info("handler {name} started", name=self._handlerName())
        if self.running:
            try:
                MultiService.startService(self)
            except StartupError as e:
                # Too late to end twistd's start: one line, and stop.
                self.log.error("cannot start: {error}", error=str(e))
                self.startFailed = True
                self.reactor.stop()

    def _handlerFailedLater(self, failure: Failure) -> None:
        # Too late for a SystemExit: say why in one line and stop.
        self._handlerStarting = None
        self.log.error("{message}", message=self._startFailure(failure))
        self.startFailed = True
        if self.running:
            self.reactor.stop()

    def _armExitWatchdog(self) -> None:
        self._exitWatch = None
        armExitWatchdog(self.gracePeriod)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # Stop accepting first, then answer what was received (the handler's
        # work included), then close, then stop the handler: all of it within
        # the grace period, whatever the handler does.
        deadline = self.reactor.seconds() + self.gracePeriod
        if self._exitWatch is not None:
            # Stopped while the reactor runs on (at a shutdown the trigger
            # has fired already and cleared this): no exit to watch.  Removed
            # first, so that a stop that fails half-way leaves no trigger to
            # arm a watchdog in a process that goes on (a test runner).
            self.reactor.removeSystemEventTrigger(self._exitWatch)
            self._exitWatch = None
        yield self.server.stopService()
        runner = self.handlerRunner
        drained = self.factory.drainAll()
        if runner is not None:
            # Batches of connections that closed meanwhile are waited for too.
            drained = defer.gatherResults([drained, runner.whenIdle()]).addCallback(lambda _: None)
        abandoned: list[str] = []
        ranOut: list[bool] = []

        def tooSlow() -> None:
            ranOut.append(True)
            if runner is not None:
                batches, submits = runner.giveUp()
                if batches:
                    abandoned.append(
                        f"{batches} batch(es) of {submits} Submit(s) at the handler "
                        "(acked with result 2)"
                    )
            connections = len(self.factory.connections)
            if connections:
                abandoned.append(f"{connections} connection(s) closed hard")
            self.factory.abortAll()

        timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), tooSlow)
        yield drained
        if timer.active():
            timer.cancel()
        self.drainedCleanly = not ranOut
        if runner is not None and self._handlerStarted:
            self._handlerStarted = False
            try:
                stopped = yield waitAtMost(
                    self.reactor,
                    max(0.0, deadline - self.reactor.seconds()),
                    defer.maybeDeferred(runner.handler.stopHandler),
                )
            except Exception:
                self.drainedCleanly = False
                self.log.failure("the handler's stopHandler failed")
            else:
                if not stopped:
                    self.drainedCleanly = False
                    abandoned.append(f"the stopHandler of --handler {self._handlerName()}")
        if runner is not None and runner.stop()[0]:
            # Batches still at the handler were answered with result 2: not
            # a clean stop (the runner logged them).
            self.drainedCleanly = False
        if abandoned or ranOut:
            self.log.warn(
                "stopped hard: the grace period of {seconds}s ran out; abandoned: {what}",
                seconds=self.gracePeriod,
                what="; ".join(abandoned) or "nothing outstanding",
            )
        if self.drainedCleanly:
            # twistd re-raises the stopping signal at exit, so a clean,
            # complete stop would report "killed by SIGTERM"; every owed ack
            # was delivered, so let it exit 0.  A forced stop keeps the
            # signal status, telling supervisors that acks may be lost.
            clearExitSignal(self.reactor)
        yield MultiService.stopService(self)


def waitAtMost(reactor: Any, seconds: float, work: defer.Deferred[Any]) -> defer.Deferred[bool]:
    """
    Fires C{True} once C{work} has, or C{False} after C{seconds} if it has
    not: a stop hook that hangs must not hang the stop.  C{work}'s failure
    in time is this Deferred's failure; whatever it does later is ignored.
    C{work} is not cancelled: a hook without a canceller would fail with
    CancelledError and then fire again when its own work ends.
    """
    outcome: defer.Deferred[bool] = defer.Deferred()

    def finished(result: object) -> None:
        if timer.active():
            timer.cancel()
        if not outcome.called:
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(True)
        # Returning None: a failure after the deadline is not "unhandled".

    timer = reactor.callLater(seconds, outcome.callback, False)
    work.addBoth(finished)
    return outcome


def makeHandler(options: Options, reactor: Any) -> ISubmitHandler:
    """
    The handler C{--handler} names, made by its plugin; a bad ARG ends
    start-up with one line.
    """
    maker = options["handler-maker"]
    try:
        handler: ISubmitHandler = maker.makeHandler(options["handler-argument"], reactor)
    except HandlerArgumentError as e:
        raise SystemExit(f"tcpdemo: --handler {options['handler']}: {e}") from None
    return handler


def buildFactory(
    options: Options,
    reactor: Any,
    registry: CollectorRegistry,
    worker: str | None = None,
    handler: ISubmitHandler | None = None,
) -> TcpDemoServerFactory:
    """
    The protocol factory and its metrics, from parsed options; C{worker} is
    the worker number in a C{--workers} worker process.  C{handler}, by
    default the one C{--handler} names, gets the Submits; the built-in
    C{ack} handler keeps the protocol's own fast path.
    """
    metrics = ServerMetrics.create(registry, worker=worker)
    maxConnections = options["max-connections"] or None
    Gauge(
        "tcpdemo_max_connections",
        "The --max-connections limit (0: none).",
        registry=registry,
        # Each worker applies the limit to its own connections: the parent
        # shows their sum, the instance's capacity, to compare with the
        # summed tcpdemo_client_connected.
        multiprocess_mode="livesum",
    ).set(maxConnections or 0)
    idle = options["idle-timeout"] or None
    settings: dict[str, Any] = dict(
        metrics=metrics,
        maxFrameLength=options["max-frame-length"],
        maxConnections=maxConnections,
        idleTimeout=idle,
        writeBufferLimit=options["write-buffer-limit"],
        maxIncomingMemory=options["max-incoming-memory"],
        authToken=options["auth-token"],
        reactor=reactor,
    )
    if handler is None:
        handler = makeHandler(options, reactor)
    if isinstance(handler, AckHandler):
        return TcpDemoServerFactory(**settings)
    return HandlerServerFactory(
        **settings,
        handler=handler,
        handlerName=options["handler"],
        handlerTimeout=options["handler-timeout"] or None,
        maxPending=options["max-pending"],
        maxPendingTotal=options["max-pending-total"],
        maxPendingBytes=options["max-pending-bytes"],
    )


def makeService(
    options: Options,
    reactor: Any = None,
    registry: CollectorRegistry | None = None,
    handler: ISubmitHandler | None = None,
) -> TcpDemoService | MultiService:
    """
    Build the server from parsed options.  The default registry is
    prometheus_client's global one, which carries the process collectors.

    With C{--workers N} (N > 1) this is the parent of N worker processes
    (L{tcpdemo.supervisor.WorkerSupervisor}); C{registry}, by default a new
    one, then gets the collectors of the workers' metrics.
    """
    if reactor is None:
        from twisted.internet import reactor
    raiseFileLimit()
    if options["workers"] > 1:
        from tcpdemo.supervisor import WorkerSupervisor

        return WorkerSupervisor(reactor, options, registry)
    if registry is None:
        registry = REGISTRY
    factory = buildFactory(options, reactor, registry, handler=handler)
    return TcpDemoService(
        reactor,
        factory,
        port=options["port"],
        metrics=options["metrics"],
        backlog=options["backlog"],
        gracePeriod=options["grace-period"],
        debug=options["debug"],
    )
