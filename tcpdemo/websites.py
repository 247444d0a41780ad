"""
The web sites of the metrics and debug listeners, which take no request
bodies: a request that announces one (a C{Content-Length} above 0, or a
C{Transfer-Encoding}) is answered C{413} and its connection closed as soon
as its headers have arrived, before a byte of the body is read.

twisted.web's L{Request} would otherwise keep the whole body before the
resource sees the request (in memory up to 100 kB, then in a temporary
file): a C{POST /metrics} with a 200 MiB body cost 200 MiB of disk and the
reactor's time to read it, only to be answered 405.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

log = Logger(namespace="tcpdemo.websites")

#: The whole answer to a request with a body: it closes the connection.
REFUSAL = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 48\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"request bodies are not accepted on this listener\n"
)


class NoBodyRequest(Request):
    """
    A request that refuses a body when its headers are complete: L{REFUSAL},
    then the connection is closed, and whatever part of the body arrived
    with the headers is dropped unread.
    """

    refused = False

    def gotLength(self, length: int | None) -> None:
        headers = self.requestHeaders
        if (length is None or length <= 0) and not headers.hasHeader(b"transfer-encoding"):
            Request.gotLength(self, length)
            return
        self.refused = True
        # Else twisted.web answers "100 Continue" right after this refusal.
        headers.removeHeader(b"expect")
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(REFUSAL)
        # Stops reading at once; the close follows the refusal.
        transport.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        if not self.refused:
            Request.handleContentChunk(self, data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            Request.requestReceived(self, command, path, version)


def quietSite(root: IResource) -> Site:
    """
    A site for C{root} that refuses request bodies (L{NoBodyRequest}), shows
    no tracebacks and writes no access log (a scrape every few seconds is
    noise).
    """
    site = Site(root, requestFactory=NoBodyRequest)
    site.noisy = False
    site.displayTracebacks = False

    def noAccessLog(request: Any) -> None:
        return None

    site.log = noAccessLog  # type: ignore[method-assign]
    return site
