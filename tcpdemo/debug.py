"""
Profiling endpoints for a running server: the Python analogue of Go's
C{net/http/pprof}, served from the server's own reactor by C{--debug}.

  - C{/debug/profile?seconds=N}: a CPU profile (cProfile) of the reactor
    thread over the next N seconds, as a pstats file, or with
    C{&format=text} as a table of the functions with the most own time,
    with C{&format=svg} as a call graph picture like pprof's (gprof2dot and
    Graphviz, see L{tcpdemo.profilegraph}), with C{&format=dot} as that
    graph's Graphviz source;
  - C{/debug/allocations?seconds=N}: the lines whose allocations grew most
    over the next N seconds (tracemalloc; CPython only);
  - C{/debug/}: a plain-text index of the above.

N defaults to 30 and may be any number with 0 < N <= 300.  Measurements
run while the reactor goes on serving: the response is sent when the window
ends.  One measurement runs at a time, profile and allocations alike (each
would distort the other); a request made meanwhile gets 409.

Anyone who can reach these endpoints can slow the server down, so
L{requireLoopback} refuses any listener that is not loopback-only.
"""

from __future__ import annotations

import cProfile
import io
import ipaddress
import linecache
import marshal
import math
import os
import platform
import pstats
import sys
import time
from typing import Any, Callable, Protocol, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tcpdemo import profilegraph
from tcpdemo.endpoints import describePeer, parseDescription, serverArguments
from tcpdemo.websites import quietSite

try:
    import tracemalloc

    HAVE_TRACEMALLOC = True
except ImportError:  # PyPy has no _tracemalloc.
    HAVE_TRACEMALLOC = False

DEFAULT_SECONDS = 30.0
MAX_SECONDS = 300.0
#: Rows of the C{format=text} profile table.
PROFILE_ROWS = 40
#: Rows of the allocations table.
ALLOCATION_ROWS = 30
#: Frames tracemalloc keeps per allocation when this module starts it.
TRACEMALLOC_FRAMES = 1
PROFILE_FILENAME = "tcpdemo.prof"
#: The formats of /debug/profile.
PROFILE_FORMATS = ("pstats", "text", "svg", "dot")

log = Logger(namespace="tcpdemo.debug")

_HOW_TO_FIX = (
    "bind it to loopback only, e.g. tcp:6060:interface=127.0.0.1, "
    r"tcp6:6060:interface=\:\:1 or unix:/run/tcpdemo/debug.sock:mode=600, "
    "and reach it from elsewhere through ssh -L 6060:127.0.0.1:6060"
)


# Refusing listeners that other hosts can reach


def _isLoopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped is not None and bool(mapped.is_loopback)


def requireLoopback(description: str) -> None:
    """
    Raise L{ValueError}, saying how to fix it, unless the server endpoint
    C{description} can only be reached from this host: a tcp, tcp6 or ssl
    endpoint with a loopback C{interface} (127.0.0.0/8 or ::1), or a unix
    socket.  Escaped colons (C{\\:}) are understood as Twisted does.
    """
    try:
        parsed = parseDescription(description)
    except Exception as e:
        raise ValueError(f"'{description}' is not an endpoint description ({e})") from e
    kind = parsed.kind.lower()
    if kind == "unix":
        return
    if kind not in ("tcp", "tcp6", "ssl"):
        raise ValueError(
            f"'{description}': cannot tell whether a {kind or 'typeless'!r} endpoint "
            f"is reachable from other hosts, so it is refused; {_HOW_TO_FIX}"
        )
    try:
        arguments = serverArguments(parsed)
    except TypeError as e:
        raise ValueError(f"'{description}' is not a valid {kind} endpoint: {e}") from e
    interface = str(arguments.get("interface") or "")
    if not interface or interface in ("0.0.0.0", "::"):
        where = f"interface={interface}" if interface else "no interface"
        raise ValueError(
            f"'{description}' listens on all interfaces ({where}), so other hosts "
            f"could profile and slow down the server; {_HOW_TO_FIX}"
        )
    if not _isLoopback(interface):
        raise ValueError(
            f"'{description}': interface {interface} is not a loopback address "
            f"(127.0.0.0/8 or ::1, given literally), so other hosts could reach the "
            f"debug endpoints; {_HOW_TO_FIX}"
        )


# The web resources


class _DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _Clock(Protocol):
    """
    What this module needs of the reactor: L{IReactorTime}.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> _DelayedCall: ...


class _BadRequest(Exception):
    """
    A request argument is invalid: answer 400 with this one-line reason.
    """


def _argument(request: Request, name: str) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace").strip()


def _seconds(request: Request) -> float:
    """
    The C{seconds} argument: a number with 0 < seconds <= L{MAX_SECONDS}.
    """
    text = _argument(request, "seconds")
    if text is None:
        return DEFAULT_SECONDS
    shown = text[:40]
    try:
        seconds = float(text)
    except ValueError:
        raise _BadRequest(f"seconds={shown!r} is not a number") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_SECONDS:
        raise _BadRequest(f"seconds={shown} is out of range: give 0 < seconds <= {MAX_SECONDS:g}")
    return seconds


def _plain(request: Request, code: int, text: str) -> bytes:
    """
    Set up a plain-text response and return its body.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    if not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8")


def _client(request: Request) -> str:
    return describePeer(request.getClientAddress())


#: What a measurement answers: (code, headers, body).
_Answer = tuple[int, dict[bytes, bytes], bytes]


class _Window:
    """
    The one measurement allowed at a time: what it is and when it ends.
    There is one per process (L{_WINDOW}), as cProfile's hook and
    tracemalloc are process-wide state, however many sites serve them.
    """

    def __init__(self) -> None:
        self.reactor: _Clock | None = None
        self.what: str | None = None
        self.ends = 0.0

    def busyReason(self) -> str | None:
        """
        None if free, else a one-line reason to give with a 409.
        """
        if self.what is None or self.reactor is None:
            return None
        left = max(0.0, self.ends - self.reactor.seconds())
        return f"busy: {self.what} is running ({left:.1f}s left); one measurement at a time"

    def run(
        self,
        reactor: _Clock,
        request: Request,
        what: str,
        seconds: float,
        complete: Callable[[], _Answer | defer.Deferred[_Answer]],
        abandon: Callable[[], None],
    ) -> None:
        """
        Hold the slot for C{seconds}; then release it, and answer C{request}
        with what C{complete} returns: (code, headers, body), or a Deferred
        of it (drawing a picture takes a child process).  If the client
        goes away first, call C{abandon} instead, and release the slot.
        """
        self.reactor = reactor
        self.what = what
        self.ends = reactor.seconds() + seconds
        gone = False

        def failed(reason: Failure) -> _Answer:
            log.failure("{what} failed", reason, what=what)
            detail = reason.getErrorMessage().splitlines()
            message = f"{what} failed: {detail[0] if detail else 'see the server log'}"
            return 500, {b"content-type": b"text/plain; charset=utf-8"}, (message + "\n").encode()

        def answer(result: _Answer) -> None:
            if gone:
                return
            code, headers, body = result
            request.setResponseCode(code)
            request.setHeader(b"cache-control", b"no-store")
            for name, value in headers.items():
                request.setHeader(name, value)
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            request.write(body)
            request.finish()

        def finish() -> None:
            self.what = None
            # maybeDeferred unwraps a Deferred result: this fires with an answer.
            d = cast("defer.Deferred[_Answer]", defer.maybeDeferred(complete))
            d.addErrback(failed)
            d.addCallback(answer)

        call = reactor.callLater(seconds, finish)

        def clientGone(reason: Failure) -> None:
            nonlocal gone
            gone = True
            if call.active():
                call.cancel()
                self.what = None
                abandon()
                log.info(
                    "{what} for {client} abandoned: the client went away",
                    what=what,
                    client=_client(request),
                )

        request.notifyFinish().addErrback(clientGone)


_WINDOW = _Window()


class _DebugResource(Resource):
    """
    A leaf that measures on GET, and answers 400 for a L{_BadRequest}.
    """

    isLeaf = True

    def __init__(self, reactor: _Clock, window: _Window) -> None:
        Resource.__init__(self)
        self.reactor = reactor
        self.window = window

    def render_GET(self, request: Request) -> Any:
        try:
            return self.measure(request)
        except _BadRequest as e:
            return _plain(request, 400, str(e))

    def render_HEAD(self, request: Request) -> bytes:
        # Not the GET fallback Resource would use: that would start a measurement.
        _plain(request, 405, "")
        request.setHeader(b"allow", b"GET")
        return b""

    def measure(self, request: Request) -> Any:
        raise NotImplementedError()


class ProfileResource(_DebugResource):
    """
    C{/debug/profile?seconds=N[&format=pstats|text|svg|dot]}: cProfile the
    reactor thread for N seconds.
    """

    def __init__(self, reactor: _Clock, window: _Window, dot: str = profilegraph.DOT) -> None:
        _DebugResource.__init__(self, reactor, window)
        #: Graphviz's dot, by name or path: what format=svg runs.
        self.dot = dot

    def measure(self, request: Request) -> Any:
        seconds = _seconds(request)
        form = _argument(request, "format") or "pstats"
        if form not in PROFILE_FORMATS:
            raise _BadRequest(f"format={form[:40]!r} is unknown: give {', '.join(PROFILE_FORMATS)}")
        # Refused before the window rather than after it: 501, say what to install.
        lacking = profilegraph.missing(form, self.dot)
        if lacking is not None:
            return _plain(request, 501, lacking)
        busy = self.window.busyReason()
        if busy is not None:
            return _plain(request, 409, busy)
        if sys.getprofile() is not None:
            return _plain(request, 409, "busy: another profiler is active in the reactor thread")
        profiler = cProfile.Profile()
        try:
            profiler.enable()
        except ValueError as e:
            # Python 3.12+: another tool holds the profiler monitoring slot.
            return _plain(request, 409, f"busy: cannot start cProfile: {e}")
        what = f"a {seconds:g}s CPU profile"
        client = _client(request)
        started = time.time()

        def taken() -> None:
            log.info("took {what} ({form}) for {client}", what=what, form=form, client=client)

        def complete() -> _Answer | defer.Deferred[_Answer]:
            profiler.disable()
            if form in profilegraph.GRAPH_FORMATS:
                source = profilegraph.callGraphDot(profiler, graphTitle(seconds, started))
                taken()
                if form == "dot":
                    return (
                        200,
                        {b"content-type": b"text/vnd.graphviz; charset=utf-8"},
                        (source.encode("utf-8")),
                    )
                d = profilegraph.renderSvg(self.reactor, source, self.dot)
                return d.addCallback(lambda svg: (200, {b"content-type": b"image/svg+xml"}, svg))
            if form == "text":
                body = profileTable(profiler, seconds).encode("utf-8")
                headers = {b"content-type": b"text/plain; charset=utf-8"}
            else:
                profiler.create_stats()
                body = marshal.dumps(profiler.stats)
                headers = {
                    b"content-type": b"application/octet-stream",
                    b"content-disposition": (
                        f"attachment; filename={PROFILE_FILENAME}".encode("ascii")
                    ),
                }
            taken()
            return 200, headers, body

        self.window.run(self.reactor, request, what, seconds, complete, profiler.disable)
        return NOT_DONE_YET


def graphTitle(seconds: float, started: float) -> str:
    """
    The label of a call graph: what was measured, where and when, and how
    to read the boxes.
    """
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return (
        f"tcpdemo CPU profile: {seconds:g}s of the reactor thread from {when}, "
        f"{platform.node()} pid {os.getpid()}, {platform.python_implementation()} "
        f"{platform.python_version()} (cProfile, wall-clock time)\n"
        "each box: module:line:function, total % (own %), calls; "
        "arrows: % of the time spent through that call, calls; "
        "red = most total time. select.epoll poll is the reactor waiting: idle time"
    )


def profileTable(profiler: cProfile.Profile, seconds: float) -> str:
    """
    The L{PROFILE_ROWS} functions of C{profiler} with the most own time.
    """
    out = io.StringIO()
    out.write(
        f"tcpdemo CPU profile: {seconds:g}s of the reactor thread, sorted by own time "
        f"(tottime), top {PROFILE_ROWS}\n"
    )
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(PROFILE_ROWS)
    return out.getvalue()


class AllocationsResource(_DebugResource):
    """
    C{/debug/allocations?seconds=N}: which lines' allocations grew over the
    next N seconds, according to tracemalloc.
    """

    def measure(self, request: Request) -> Any:
        seconds = _seconds(request)
        if not HAVE_TRACEMALLOC:
            return _plain(
                request,
                501,
                f"allocation tracing needs tracemalloc, which "
                f"{platform.python_implementation()} {platform.python_version()} lacks; "
                f"use /debug/profile, or run the server on CPython",
            )
        busy = self.window.busyReason()
        if busy is not None:
            return _plain(request, 409, busy)
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start(TRACEMALLOC_FRAMES)
        start = tracemalloc.take_snapshot()
        what = f"a {seconds:g}s allocation trace"
        client = _client(request)

        def stop() -> None:
            if started:
                tracemalloc.stop()

        def complete() -> tuple[int, dict[bytes, bytes], bytes]:
            try:
                end = tracemalloc.take_snapshot()
                current, peak = tracemalloc.get_traced_memory()
            finally:
                stop()
            text = allocationTable(start, end, seconds, current, peak, started)
            log.info("took {what} for {client}", what=what, client=client)
            return 200, {b"content-type": b"text/plain; charset=utf-8"}, text.encode("utf-8")

        self.window.run(self.reactor, request, what, seconds, complete, stop)
        return NOT_DONE_YET


def _size(size: int) -> str:
    if size < 2**10:
        return f"{size} B"
    if size < 2**20:
        return f"{size / 2**10:.1f} KiB"
    return f"{size / 2**20:.1f} MiB"


def allocationTable(
    start: Any, end: Any, seconds: float, current: int, peak: int, started: bool
) -> str:
    """
    The L{ALLOCATION_ROWS} lines whose traced memory changed most between
    the tracemalloc snapshots C{start} and C{end}.
    """
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, __file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    diff = end.filter_traces(ignore).compare_to(start.filter_traces(ignore), "lineno")
    changed = [stat for stat in diff if stat.size_diff or stat.count_diff]
    since = "started for this request" if started else "already on before this request"
    lines = [
        f"tcpdemo allocations: growth over {seconds:g}s by line (tracemalloc): "
        f"{len(changed)} lines changed, the {min(len(changed), ALLOCATION_ROWS)} "
        "biggest changes first",
        f"traced memory now {_size(current)}, peak {_size(peak)} (tracing {since})",
        "",
        f"{'size diff':>14} {'count diff':>11} {'size now':>13}  line",
    ]
    for stat in changed[:ALLOCATION_ROWS]:
        frame = stat.traceback[0]
        source = linecache.getline(frame.filename, frame.lineno).strip()
        lines.append(
            f"{stat.size_diff:>+13,}B {stat.count_diff:>+11,} {stat.size:>12,}B  "
            f"{frame.filename}:{frame.lineno}" + (f": {source}" if source else "")
        )
    if not changed:
        lines.append("(no change)")
    return "\n".join(lines) + "\n"


def _curl(request: Request) -> tuple[str, str]:
    """
    The curl options and base URL that reach this site, as the request came.
    """
    host = request.getHost()
    name = getattr(host, "name", None)
    if not hasattr(host, "port") and name is not None:
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return f"--unix-socket {path} ", "http://localhost"
    address = str(getattr(host, "host", "127.0.0.1"))
    port = getattr(host, "port", 6060)
    return "", f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def index(curl: str = "", base: str = "http://127.0.0.1:6060") -> str:
    """
    The text of C{/debug/}, its examples using C{curl} options and C{base}.
    """
    return f"""\
tcpdemo debug endpoints (the Python analogue of Go's net/http/pprof)

/debug/profile?seconds=N
    CPU profile (cProfile) of the reactor thread over the next N seconds, as a
    pstats file.  N: 0 < N <= {MAX_SECONDS:g}, default {DEFAULT_SECONDS:g}.
        curl {curl}-o cpu.prof '{base}/debug/profile?seconds=30'
        python -m pstats cpu.prof     (then: sort tottime, stats 20)
        snakeviz cpu.prof             (pip install snakeviz)
/debug/profile?seconds=N&format=text
    The same, as a table of the {PROFILE_ROWS} functions with the most own time.
        curl {curl}'{base}/debug/profile?seconds=10&format=text'
/debug/profile?seconds=N&format=svg
    The same, as a call graph picture like pprof's: a box per function with its
    total and own share of the time, arrows for the calls (gprof2dot and
    Graphviz's dot: pip install 'tcpdemo[profile]', apt-get install graphviz).
        curl {curl}-o cpu.svg '{base}/debug/profile?seconds=30&format=svg'
/debug/profile?seconds=N&format=dot
    That graph's Graphviz source, to draw elsewhere: dot -Tsvg cpu.dot > cpu.svg
/debug/allocations?seconds=N
    The {ALLOCATION_ROWS} lines whose allocated memory grew most over the next N
    seconds (tracemalloc; not available on PyPy).
        curl {curl}'{base}/debug/allocations?seconds=30'

One measurement runs at a time (profile and allocations share the slot);
another request meanwhile gets 409.  The server keeps serving while measured.
To sample a process without these endpoints: py-spy top --pid PID
"""


class IndexResource(Resource):
    """
    C{/debug/}: how to use the endpoints, and what is running now.
    """

    isLeaf = True

    def __init__(self, window: _Window) -> None:
        Resource.__init__(self)
        self.window = window

    def render_GET(self, request: Request) -> bytes:
        status = self.window.busyReason() or "idle: no measurement is running"
        curl, base = _curl(request)
        return _plain(request, 200, f"{index(curl, base)}\nnow {status}\n")


class _DebugDirectory(Resource):
    """
    C{/debug}: redirects to C{/debug/}.
    """

    def render_GET(self, request: Request) -> bytes:
        request.redirect(b"/debug/")
        return b""


def debugSite(reactor: _Clock, dot: str = profilegraph.DOT) -> Site:
    """
    The site for C{--debug}: the endpoints under C{/debug/}, measuring the
    process that runs C{reactor}.  It writes no access log; each measurement
    taken logs one line.  C{dot} is Graphviz's program, which draws the
    C{format=svg} profiles.
    """
    window = _WINDOW
    home = IndexResource(window)
    debug = _DebugDirectory()
    debug.putChild(b"", cast(IResource, home))
    debug.putChild(b"profile", cast(IResource, ProfileResource(reactor, window, dot)))
    debug.putChild(b"allocations", cast(IResource, AllocationsResource(reactor, window)))
    root = Resource()
    root.putChild(b"", cast(IResource, home))
    root.putChild(b"debug", cast(IResource, debug))
    # Request bodies are refused unread (tcpdemo.websites).
    return quietSite(cast(IResource, root))
