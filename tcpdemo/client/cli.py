"""
The C{tcpdemo-client} command line: options, live progress, the summary.

This is the only module of the client that writes to stdout or stderr.
Exit status: 0 for a complete run without errors, 1 if any ack was wrong or
missing or a connection closed early (or, with --fail-on-result, carried a
non-zero result), 2 for a usage error or when it could not connect, 130
for a run without errors stopped early by SIGINT (Ctrl-C) or SIGTERM.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from time import perf_counter
from typing import IO, Any, NoReturn

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from tcpdemo.client.endpoint import EndpointError, clientEndpoint, isTLS
from tcpdemo.client.load import DEFAULT_WINDOW, LoadConfig, LoadRun, SetupError
from tcpdemo.client.stats import PERCENTILES, Report
from tcpdemo.endpoints import quoteArgument
from tcpdemo.limits import raiseFileLimit
from tcpdemo.optiontypes import nonNegativeFloat, nonNegativeInt, positiveFloat, positiveInt

PROG = "tcpdemo-client"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "8888"
DEFAULT_DURATION = 10.0

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
#: A run cut short by a signal: 128 + SIGINT, as a shell reports Ctrl-C.
EXIT_INTERRUPTED = 130


def endpointFor(port: str, host: str | None) -> str:
    """
    A client endpoint string from C{--port} (a number or an endpoint string)
    and C{--host}.
    """
    if port.isdigit():
        return f"tcp:host={quoteArgument(host or DEFAULT_HOST)}:port={port}"
    if host is not None:
        raise usage.UsageError("--host goes with a port number, not with an endpoint string")
    if ":" not in port:
        raise usage.UsageError(f"--port must be a number or an endpoint string, not {port!r}")
    return port


class Options(usage.Options):
    """
    C{tcpdemo-client} options.
    """

    synopsis = f"Usage: {PROG} [options]"
    longdesc = (
        "Load a tcpdemo server with Submits and check every SubmitAck: length, "
        "command, and that its id is the next one owed on its connection; results "
        "are counted (--fail-on-result makes a non-zero one an error). "
        "Prints a summary (throughput, latency percentiles, acks by result, errors, "
        "client CPU); exits 1 if anything was wrong, 2 if it could not connect, "
        "130 if interrupted. Without "
        f"--duration or --count it runs for {DEFAULT_DURATION:g} seconds."
    )

    optFlags = [
        ["conn", None, "Send a Conn first on each connection and expect ConnAck result 0."],
        [
            "fail-on-result",
            None,
            "Count an ack with a non-zero result as an error (bad_result, exit 1); "
            "by default results are counted, not errors.",
        ],
        ["json", "j", "Print the result as one JSON object instead of a table."],
        [
            "no-verify",
            None,
            "With ssl: or tls: endpoints, do not verify the server's certificate "
            "(encrypted but not authenticated).",
        ],
        ["quiet", "q", "No progress display."],
    ]
    optParameters: list[list[Any]] = [
        ["connections", "c", 100, "Connections to open.", positiveInt],
        ["host", None, None, f"Server host, with a numeric --port [default: {DEFAULT_HOST}]."],
        [
            "port",
            "p",
            DEFAULT_PORT,
            "Server port, or a client endpoint string such as tcp:127.0.0.1:8888, "
            "unix:/path/to/socket or ssl:host:port.",
        ],
        [
            "window",
            "w",
            None,
            "Submits awaiting an ack per connection: 1 is request/response, 0 is "
            "unbounded (as fast as the connection takes them, like the reference "
            f"client) [default: {DEFAULT_WINDOW}].",
            nonNegativeInt,
        ],
        [
            "rate",
            "r",
            None,
            "Open loop: send this many Submits per second in all, on schedule, "
            "whether or not acks came back. Excludes --window.",
            positiveFloat,
        ],
        ["duration", "d", None, "Seconds to send for.", positiveFloat],
        [
            "warmup",
            None,
            0.0,
            "Seconds of the same load to send first, left out of the figures "
            "(throughput, latency, CPU, sender pauses) though every ack is still "
            "checked: a JIT (PyPy) compiles the client's loops then, not while it "
            "measures. --duration counts after it; not with --count.",
            nonNegativeFloat,
        ],
        ["count", "n", None, "Submits to send in all, shared among the connections.", positiveInt],
        [
            "payload-size",
            "s",
            None,
            "Payload bytes per Submit [default: random codenames of 15-30 bytes, "
            "as the reference client].",
            nonNegativeInt,
        ],
        [
            "token-file",
            None,
            None,
            "Send this file's contents (stripped) in the Conn; implies --conn.",
        ],
        [
            "ca-file",
            None,
            None,
            "With ssl: or tls: endpoints, verify the server's certificate against "
            "these CAs (a PEM file, or a directory of *.pem) [default: the "
            "platform's trust roots, or the endpoint's caCertsDir=/trustRoots=].",
        ],
        [
            "drain-timeout",
            None,
            5.0,
            "After sending stops, wait for the acks still owed until none has "
            "arrived for this many seconds; those still missing then are errors.",
            positiveFloat,
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Seconds allowed for connecting and the Conn handshake.",
            positiveFloat,
        ],
        [
            "progress-interval",
            None,
            None,
            "Seconds between progress updates on stderr [default: 1 on a terminal, else 5].",
            positiveFloat,
        ],
    ]

    def opt_version(self) -> NoReturn:
        """
        Print the versions of tcpdemo and Twisted, and exit.
        """
        import tcpdemo
        import twisted

        sys.stdout.write(f"{PROG} (tcpdemo) {tcpdemo.__version__}, Twisted {twisted.__version__}\n")
        raise SystemExit(EXIT_OK)

    def postOptions(self) -> None:
        self["endpoint"] = endpointFor(self["port"], self["host"])
        if self["rate"] is not None and self["window"] is not None:
            raise usage.UsageError("--rate is open loop: it cannot be combined with --window")
        if self["warmup"] and self["count"] is not None:
            raise usage.UsageError(
                "--warmup goes with --duration, not --count: a count could be "
                "reached inside the warm-up, leaving nothing measured"
            )
        if self["duration"] is None and self["count"] is None:
            self["duration"] = DEFAULT_DURATION
        self["token"] = b""
        path = self["token-file"]
        if path is not None:
            try:
                with open(path, "rb") as f:
                    self["token"] = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"--token-file: {e}") from e
            self["conn"] = True
        self.checkEndpoint()

    def checkEndpoint(self) -> None:
        """
        Build the endpoint once, so that a bad description, an unreadable
        CA file or an unknown endpoint type is a usage error, not a traceback.
        """
        from twisted.internet import reactor

        tls = isTLS(self["endpoint"])
        if not tls and (self["no-verify"] or self["ca-file"] is not None):
            raise usage.UsageError("--no-verify and --ca-file go with ssl: or tls: endpoints")
        if self["no-verify"] and self["ca-file"] is not None:
            raise usage.UsageError("--no-verify and --ca-file exclude each other")
        try:
            clientEndpoint(
                reactor,
                self["endpoint"],
                tlsVerify=not self["no-verify"],
                trustRoot=self["ca-file"],
            )
        except EndpointError as e:
            raise usage.UsageError(f"--port {self['endpoint']}: {e}") from e

    def config(self) -> LoadConfig:
        """
        The run these options describe.
        """
        return LoadConfig(
            endpoint=self["endpoint"],
            connections=self["connections"],
            window=DEFAULT_WINDOW if self["window"] is None else self["window"],
            rate=self["rate"],
            duration=self["duration"],
            warmup=self["warmup"],
            count=self["count"],
            payloadSize=self["payload-size"],
            conn=bool(self["conn"]),
            token=self["token"],
            drainTimeout=self["drain-timeout"],
            connectTimeout=self["connect-timeout"],
            failOnResult=bool(self["fail-on-result"]),
            tlsVerify=not self["no-verify"],
            trustRoot=self["ca-file"],
        )


# Output


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _ms(micros: float) -> str:
    return f"{micros / 1000:.3f}"


def formatSummary(report: Report) -> str:
    """
    The human summary table.
    """
    c = report.config
    stop = []
    if c["duration_s"] is not None:
        stop.append(f"{c['duration_s']:g} s")
    if c["count"] is not None:
        stop.append(f"{c['count']:,} submits")
    shape = (
        f"open loop at {c['rate']:g} submits/s"
        if c["rate"] is not None
        else {0: "pipelined, unbounded window", 1: "request/response (window 1)"}.get(
            c["window"], f"pipelined, window {c['window']}"
        )
    )
    payload = (
        "random 15-30 byte codenames"
        if c["payload_size"] is None
        else f"{c['payload_size']} byte payloads"
    )
    verify = c.get("tls_verify")
    tls = ""
    if verify is not None:
        tls = ", TLS verified" if verify else ", TLS NOT VERIFIED (--no-verify)"
    lines = [
        f"{PROG}: {report.connections} connections to {c['endpoint']}"
        + (", Conn handshake" if c["conn"] else "")
        + tls,
        f"load: {shape}; {payload}; stop after {' or '.join(stop)}"
        + (f" after a {report.warmup:g} s warm-up (not measured)" if report.warmup else "")
        + (" (interrupted)" if report.interrupted else ""),
        "",
        f"  {'sent':<12}{_n(report.sent):>15} submits",
        f"  {'acked':<12}{_n(report.acked):>15}",
        f"  {'unanswered':<12}{_n(report.unanswered):>15}",
        f"  {'errors':<12}{_n(report.errors):>15}",
        f"  {'results':<12}{formatResults(report.results):>15}",
        f"  {'duration':<12}{report.duration:>15.3f} s   (sending {report.sendDuration:.3f} s)",
        f"  {'throughput':<12}{_n(report.throughput):>15} acks/s",
    ]
    if c["rate"] is not None:
        gap = (
            ""
            if report.maxTickGap is None
            else (f"; longest sender pause {report.maxTickGap * 1000:.1f} ms")
        )
        lines.append(
            f"  {'send rate':<12}{_n(report.sendRate):>15} submits/s (asked {c['rate']:g}/s{gap})"
        )
    # A share of a run too short to measure would only be noise.
    share = (
        f"; {100 * report.cpu / report.duration:.0f}% of one core" if report.duration >= 0.1 else ""
    )
    lines += [
        f"  {'client cpu':<12}{report.cpu:>15.3f} s   (user {report.cpuUser:.3f}, "
        f"system {report.cpuSystem:.3f}{share})",
        "",
        f"  latency, {'scheduled send' if c['rate'] is not None else 'write'} of a Submit "
        f"to read of its ack, in ms ({_n(report.latencyUs['count'])} acks):",
    ]
    keys = [f"p{p:g}" for p in PERCENTILES] + ["max"]
    lines.append("  " + "".join(f"{k:>10}" for k in keys))
    lines.append("  " + "".join(f"{_ms(report.latencyUs[k]):>10}" for k in keys))
    lines.append("")
    if report.errors:
        kinds = ", ".join(f"{k} {v:,}" for k, v in report.errorsByKind.items() if v)
        lines.append(f"  errors by kind: {kinds}")
        lines += [f"  {m}" for m in report.messages]
        omitted = report.errors - len(report.messages)
        if omitted > 0:
            lines.append(f"  ... and {omitted:,} more")
        lines.append(f"FAILED: {report.errors:,} error(s)")
    elif report.interrupted:
        lines.append(
            f"INTERRUPTED: stopped early by a signal, no error until then (exit {EXIT_INTERRUPTED})"
        )
    elif report.nonZeroResults:
        lines.append(
            f"OK: every Submit got its ack, in order; {report.nonZeroResults:,} with a "
            "non-zero result (the server's answer, not an error; see --fail-on-result)"
        )
    else:
        lines.append("OK: every Submit got its ack, in order, with result 0")
    return "\n".join(lines) + "\n"


def formatResults(results: dict[str, int]) -> str:
    """
    Acks by result, C{"0: 19, 3: 1"}, or C{"-"} when there were none.
    """
    return ", ".join(f"{r}: {n:,}" for r, n in results.items()) or "-"


def exitStatus(report: Report) -> int:
    """
    1 for errors, else 130 for a run cut short by a signal, else 0.
    """
    if report.errors:
        return EXIT_ERRORS
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK


def formatJSON(report: Report) -> str:
    return json.dumps(report.asJSON(), indent=2) + "\n"


class Progress:
    """
    The live progress display on stderr: one line rewritten in place on a
    terminal, plain periodic lines otherwise.
    """

    def __init__(self, run: LoadRun, stream: IO[str], interval: float, tty: bool) -> None:
        self.run = run
        self.stream = stream
        self.interval = interval
        self.tty = tty
        self._last: tuple[float, int] | None = None
        self._width = 0
        self._call: task.LoopingCall | None = None

    def start(self, reactor: Any) -> None:
        self._call = task.LoopingCall(self.update)
        self._call.clock = reactor
        self._call.start(self.interval, now=False)

    def line(self, now: float) -> str:
        stats = self.run.stats
        if stats.startTime is None:
            return f"connecting {len(self.run.protocols)}..."
        acked = stats.acked
        last = self._last or (stats.startTime, 0)
        elapsed = now - last[0]
        rate = (acked - last[1]) / elapsed if elapsed > 0 else 0.0
        self._last = (now, acked)
        return (
            f"{now - stats.startTime:7.1f}s  {_n(rate)} acks/s  in flight "
            f"{_n(self.run.inFlight())}  sent {_n(stats.sent)}  acked {_n(acked)}  "
            f"errors {_n(stats.errors)}"
        )

    def update(self) -> None:
        text = self.line(perf_counter())
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(f"{PROG}: {text}\n")
        self.stream.flush()

    def stop(self) -> None:
        if self._call is not None and self._call.running:
            self._call.stop()
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _startLogging(stream: IO[str]) -> None:
    """
    Show only errors from the library (such as an unhandled failure), on stderr.
    """
    observer = FilteringLogObserver(
        textFileLogObserver(stream),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


@defer.inlineCallbacks
def run(reactor: Any, options: Options, stdout: IO[str], stderr: IO[str]) -> Any:
    """
    Run the load; write the summary; fail with C{SystemExit} carrying the
    exit status.  Ctrl-C stops sending early and still drains and reports.
    """
    config = options.config()
    if isTLS(config.endpoint) and not config.tlsVerify:
        stderr.write(
            f"{PROG}: WARNING: TLS certificate verification is OFF (--no-verify): "
            "the server is not authenticated\n"
        )
    load = LoadRun(reactor, config)
    progress: Progress | None = None
    if not options["quiet"]:
        tty = stderr.isatty()
        interval = options["progress-interval"] or (1.0 if tty else 5.0)
        progress = Progress(load, stderr, interval, tty)
        progress.start(reactor)
    finished: defer.Deferred[None] = defer.Deferred()

    def interrupted() -> defer.Deferred[None]:
        load.interrupt()
        return finished

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        report = yield load.run()
    except SetupError as e:
        stderr.write(f"{PROG}: {e}\n")
        raise SystemExit(EXIT_USAGE) from None
    finally:
        if progress is not None:
            progress.stop()
        reactor.removeSystemEventTrigger(trigger)
        reactor.callLater(0, finished.callback, None)
    stdout.write(formatJSON(report) if options["json"] else formatSummary(report))
    stdout.flush()
    raise SystemExit(exitStatus(report))


def parseArguments(argv: Sequence[str], stderr: IO[str]) -> Options:
    """
    Parse the command line, or exit with status 2 and a message.
    """
    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        stderr.write(f"{PROG}: {e} (try {PROG} --help)\n")
        raise SystemExit(EXIT_USAGE) from None
    return options


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The C{tcpdemo-client} console script.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv, sys.stderr)
    # Thousands of connections need more than the usual 1024 descriptors.
    raiseFileLimit()
    _startLogging(sys.stderr)
    task.react(run, (options, sys.stdout, sys.stderr))
