"""
C{/metrics} at a bounded cost to the reactor, whatever the scrape rate.

A scrape used to render the whole registry, in a thread that shares the
interpreter lock with the reactor: 50 scrapers in a loop rendered 420 times
a second and cut the Submits served by 93%.  L{ScrapeResource} instead:

  - renders at most once per L{SCRAPE_INTERVAL} (and, if a rendering is
    slow, keeps the renderer busy at most 1/L{RENDER_DUTY} of the time),
    and answers every scrape waiting for it with the same bytes (gzipped
    once, if any of them asked for gzip);
  - never answers with figures older than the scrape: each scrape gets the
    first rendering that starts after it arrived (so a scrape waits at most
    about one interval, and sees everything the server did before it);
  - lets at most L{MAX_WAITING} scrapes wait at once; more get C{503} with
    C{Retry-After} at once.

So a scraper in a loop gets at most one answer per interval, and the
reactor's cost is bounded by (one rendering + L{MAX_WAITING} small writes)
per interval.  Each exposition format the scrapers ask for (Prometheus
text, OpenMetrics) is rendered separately; C{name[]} filters are ignored.
"""

from __future__ import annotations

import gzip
from typing import Any, Callable

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tcpdemo.twistedinternals import requestDisconnected

#: Shortest time between the starts of two renderings of one format.
SCRAPE_INTERVAL = 0.1
#: A rendering that took t seconds is followed by at least RENDER_DUTY * t
#: seconds without one.
RENDER_DUTY = 5.0
#: Scrapes that may wait for a rendering at once; more are answered 503.
MAX_WAITING = 64

log = Logger(namespace="tcpdemo.scrape")


@attrs.define(eq=False)
class _Format:
    """
    One exposition format: the scrapes waiting for it, and its renderings.
    """

    contentType: str
    encoder: Callable[[CollectorRegistry], bytes]
    waiting: list[Request] = attrs.Factory(list)
    rendering: bool = False
    due: IDelayedCall | None = None
    #: When the last rendering started and how long it took.
    started: float = -1e9
    took: float = 0.0


class ScrapeResource(Resource):
    """
    C{/metrics} for C{registry}, rendered in a thread of the reactor's pool
    as the policy above allows; C{before} is called in the reactor thread
    before each rendering (the server moves its tallied counts then).
    """

    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        registry: CollectorRegistry,
        before: Callable[[], None] | None = None,
        interval: float = SCRAPE_INTERVAL,
        maxWaiting: int = MAX_WAITING,
    ) -> None:
        Resource.__init__(self)
        self.reactor = reactor
        self.registry = registry
        self.before = before
        self.interval = interval
        self.maxWaiting = maxWaiting
        self.formats: dict[str, _Format] = {}
        #: Renderings done and scrapes answered (with 200 or 503): for tests
        #: and the benchmark.
        self.renderings = 0
        self.answered = 0
        self.refused = 0

    def waiting(self) -> int:
        return sum(len(f.waiting) for f in self.formats.values())

    def render_GET(self, request: Request) -> Any:
        if self.waiting() >= self.maxWaiting:
            self.refused += 1
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"1")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"too many scrapes at once: try again in a second\n"
        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        form = self.formats.get(contentType)
        if form is None:
            form = self.formats[contentType] = _Format(contentType, encoder)
        form.waiting.append(request)

        def gone(reason: Failure) -> None:
            if request in form.waiting:
                form.waiting.remove(request)

        request.notifyFinish().addErrback(gone)
        self._schedule(form)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def _schedule(self, form: _Format) -> None:
        if form.rendering or form.due is not None or not form.waiting:
            return
        earliest = max(form.started + self.interval, form.started + form.took * (1 + RENDER_DUTY))
        delay = max(0.0, earliest - self.reactor.seconds())
        form.due = self.reactor.callLater(delay, self._render, form)

    def _render(self, form: _Format) -> None:
        form.due = None
        batch, form.waiting = form.waiting, []
        if not batch:
            return
        form.rendering = True
        form.started = self.reactor.seconds()
        if self.before is not None:
            self.before()
        rendered = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), form.encoder, self.registry
        )

        def done(body: bytes) -> None:
            self.renderings += 1
            zipped: list[bytes] = []
            for request in batch:
                self._answer(request, form.contentType, body, zipped)

        def failed(reason: Failure) -> None:
            log.failure("rendering /metrics failed", reason)
            for request in batch:
                self._fail(request)

        def finished(result: object) -> None:
            form.rendering = False
            form.took = max(0.0, self.reactor.seconds() - form.started)
            self._schedule(form)

        rendered.addCallbacks(done, failed).addBoth(finished)

    def _answer(self, request: Request, contentType: str, body: bytes, zipped: list[bytes]) -> None:
        if request.finished or requestDisconnected(request):
            return
        self.answered += 1
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        encoding = request.getHeader(b"accept-encoding")
        if encoding is not None and gzip_accepted(encoding.decode("latin-1")):
            if not zipped:
                zipped.append(gzip.compress(body))
            body = zipped[0]
            request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    def _fail(self, request: Request) -> None:
        if request.finished or requestDisconnected(request):
            return
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(b"rendering the metrics failed: see the server log\n")
        request.finish()
