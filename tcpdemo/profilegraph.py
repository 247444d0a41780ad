"""
A CPU profile as a picture: the call graph that Go's C{go tool pprof -web}
draws, made from a cProfile with gprof2dot and laid out by Graphviz's
C{dot}.  Used by C{/debug/profile?format=svg} (and C{format=dot}, the
graph's source, for those without Graphviz where the server runs).

gprof2dot is an optional dependency (the C{profile} extra:
C{pip install tcpdemo[profile]}); C{dot} is Graphviz's program (Debian:
C{apt-get install graphviz}).  L{missing} says which of them a format
lacks, so that the endpoint can refuse at once rather than after the
window.
"""

from __future__ import annotations

import importlib
import io
import shutil
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: Nodes and edges below these shares of the total time are left out, as
#: pprof leaves out its small nodes (gprof2dot's defaults: 0.5 % and 0.1 %).
NODE_THRESHOLD = 0.005
EDGE_THRESHOLD = 0.001
#: How long C{dot} may take to lay out a graph, in seconds.
DOT_TIMEOUT = 60.0
DOT = "dot"
#: The formats drawn by this module.
GRAPH_FORMATS = ("svg", "dot")


def _gprof2dot() -> Any:
    """
    The gprof2dot module (untyped), or None if it is not installed.
    """
    try:
        return importlib.import_module("gprof2dot")
    except ImportError:
        return None


def missing(form: str, dot: str = DOT) -> str | None:
    """
    None if C{form} can be made here; else a one-line reason saying what to
    install.
    """
    if form not in GRAPH_FORMATS:
        return None
    if _gprof2dot() is None:
        return (
            f"format={form} needs gprof2dot, which is not installed: "
            "pip install 'tcpdemo[profile]' (or pip install gprof2dot), then restart the server"
        )
    if form == "svg" and shutil.which(dot) is None:
        return (
            f"format=svg needs Graphviz's {dot!r} program, not found on the server's PATH: "
            "apt-get install graphviz (or use format=dot and run dot -Tsvg elsewhere)"
        )
    return None


def _label(text: str) -> str:
    """
    C{text} as a Graphviz label: quoted, each line left-justified.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(line + "\\l" for line in escaped.split("\n"))


def callGraphDot(stats: Any, title: str) -> str:
    """
    The call graph of C{stats} (a L{cProfile.Profile} or L{pstats.Stats})
    in Graphviz's language: a box per function with its total and own
    share of the time and its call count, an arrow per caller-callee pair
    with the share of time spent through it; colour and width by total
    time, from blue (little) to red (most).  C{title} labels the graph.
    """
    gprof2dot = _gprof2dot()
    if gprof2dot is None:
        raise RuntimeError(missing("dot") or "gprof2dot is missing")
    profile = gprof2dot.PstatsParser(stats).parse()
    profile.prune(NODE_THRESHOLD, EDGE_THRESHOLD, None, False)
    out = io.StringIO()
    writer = gprof2dot.DotWriter(out)
    writer.strip = False
    writer.wrap = True
    writer.graph(profile, gprof2dot.TEMPERATURE_COLORMAP)
    source = out.getvalue()
    head, brace, rest = source.partition("{")
    label = f'\n\tlabel="{_label(title)}"; labelloc=t; labeljust=l; fontname=Arial; fontsize=12;'
    return head + brace + label + rest


class _Dot(ProcessProtocol):
    """
    C{dot -Tsvg}: the graph goes in on stdin, the picture comes out.
    """

    def __init__(self, source: bytes) -> None:
        self.source = source
        self.out = io.BytesIO()
        self.err = io.BytesIO()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.source)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.write(data)

    def errReceived(self, data: bytes) -> None:
        if self.err.tell() < 4096:
            self.err.write(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(error.ProcessDone):
            self.done.callback(self.out.getvalue())
            return
        detail = self.err.getvalue().decode("utf-8", "replace").strip().splitlines()
        self.done.errback(
            RuntimeError(
                f"dot failed ({reason.getErrorMessage()})" + (f": {detail[-1]}" if detail else "")
            )
        )


def renderSvg(reactor: Any, source: str, dot: str = DOT) -> defer.Deferred[bytes]:
    """
    Lay out C{source} with C{dot -Tsvg} in a child process (the reactor goes
    on serving meanwhile); fires with the SVG, or fails with
    L{RuntimeError} if C{dot} fails or takes over L{DOT_TIMEOUT} seconds.
    """
    path = shutil.which(dot)
    if path is None:
        return defer.fail(RuntimeError(f"{dot!r} not found on PATH"))
    protocol = _Dot(source.encode("utf-8"))
    process = reactor.spawnProcess(protocol, path, [dot, "-Tsvg"], env=None)

    def tooLong() -> None:
        try:
            process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    timer = reactor.callLater(DOT_TIMEOUT, tooLong)

    def stopTimer(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return protocol.done.addBoth(stopTimer)
