"""
An example tcpdemo handler: payloads longer than a limit get result 3
(L{RESULT_TOO_LARGE}), the others result 0, and both are counted in
L{RESULTS}, a Prometheus counter in the default registry, so that they show
on the server's C{/metrics}.

Built by the plugin in C{twisted/plugins/tcpdemo_sizelimit_plugin.py} for
C{twistd tcpdemo --handler sizelimit:BYTES}; docs/handlers.md walks through
both files.
"""

from __future__ import annotations

from prometheus_client import Counter
from zope.interface import implementer

from tcpdemo.handlers import (
    FIRST_APPLICATION_RESULT,
    RESULT_OK,
    HandlerArgumentError,
    ISubmitHandler,
    SubmitBatch,
)

#: This handler's own result code: the payload is longer than the limit.
#: Codes 1 and 2 are the server's (handler error, timeout), so an
#: application's first own code is 3.
RESULT_TOO_LARGE = FIRST_APPLICATION_RESULT

#: Submits answered, by result.  Created when this module is first imported
#: (only once C{--handler sizelimit} is used: the plugin imports it lazily),
#: in prometheus_client's default registry, which the server serves.  Both
#: labels are created up front so that a dashboard sees zeros, not nothing.
RESULTS = Counter(
    "sizelimit_results",
    "Submits answered by the sizelimit handler, by result byte.",
    ["result"],
)
for _result in (RESULT_OK, RESULT_TOO_LARGE):
    RESULTS.labels(result=str(_result))


def parseLimit(argument: str | None) -> int:
    """
    The ARG of C{--handler sizelimit:ARG}: the largest payload, in bytes,
    that still gets result 0.
    """
    if argument is None:
        raise HandlerArgumentError("sizelimit needs a size: --handler sizelimit:BYTES")
    try:
        limit = int(argument)
    except ValueError:
        limit = -1
    if limit < 0:
        raise HandlerArgumentError(
            f"sizelimit: the size must be a whole number of bytes >= 0, not {argument!r}"
        )
    return limit


@implementer(ISubmitHandler)
class SizeLimitHandler:
    """
    Result L{RESULT_TOO_LARGE} for payloads longer than C{limit} bytes,
    L{RESULT_OK} for the rest.  It answers at once, in the reactor thread:
    the work is a length check, far cheaper than a thread hop.
    """

    def __init__(self, limit: int, results: Counter = RESULTS) -> None:
        self.limit = limit
        # The two children, looked up once rather than per batch.
        self._ok = results.labels(result=str(RESULT_OK))
        self._tooLarge = results.labels(result=str(RESULT_TOO_LARGE))

    def startHandler(self) -> None:
        """
        Nothing to open.
        """

    def handle(self, batch: SubmitBatch) -> bytes:
        limit = self.limit
        results = bytes(
            [RESULT_TOO_LARGE if len(payload) > limit else RESULT_OK for payload in batch.payloads]
        )
        # One inc per label per batch, not per Submit: a batch is a whole read.
        tooLarge = results.count(RESULT_TOO_LARGE)
        if tooLarge:
            self._tooLarge.inc(tooLarge)
        if tooLarge < len(results):
            self._ok.inc(len(results) - tooLarge)
        return results

    def stopHandler(self) -> None:
        """
        Nothing to close.
        """
