"""
The server's Prometheus metrics, and the C{/metrics} resource that serves them
from the server's own reactor.

Collectors live in a registry that the caller chooses, so tests can build a
fresh one per test; the server uses prometheus_client's default registry,
which also carries the process and platform collectors.
"""

from __future__ import annotations

from typing import Optional

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.web.resource import Resource
from twisted.web.server import Site

#: Every reason label the server uses for protocol errors, pre-created so
#: that dashboards and alerts see a zero rather than no series at all.
PROTOCOL_ERROR_REASONS = (
    "bad_length",
    "frame_too_large",
    "unknown_command",
    "unexpected_command",
    "malformed_packet",
    "auth_failed",
)


@attrs.define
class ServerMetrics:
    """
    The collectors the server updates.  Counters are incremented once per
    read with the number of frames it carried, never once per frame.
    """

    registry: CollectorRegistry
    client_connected: Gauge
    connections: Counter
    connections_refused: Counter
    req_recv: Counter
    rsp_send: Counter
    protocol_errors: Counter
    bytes_received: Counter
    bytes_sent: Counter
    backpressure_pauses: Counter
    idle_timeouts: Counter

    @classmethod
    def create(cls, registry: Optional[CollectorRegistry] = None) -> ServerMetrics:
        """
        Create the collectors in C{registry}, by default a new, empty one.
        """
        if registry is None:
            registry = CollectorRegistry()
        r = registry
        protocol_errors = Counter(
            "tcpdemo_protocol_errors",
            "Connections closed for bad input, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in PROTOCOL_ERROR_REASONS:
            protocol_errors.labels(reason)
        return cls(
            registry=r,
            client_connected=Gauge(
                "tcpdemo_client_connected",
                "Client connections currently open.",
                registry=r,
                multiprocess_mode="livesum",
            ),
            connections=Counter(
                "tcpdemo_connections", "Client connections accepted.", registry=r
            ),
            connections_refused=Counter(
                "tcpdemo_connections_refused",
                "Client connections refused because --max-connections were open.",
                registry=r,
            ),
            req_recv=Counter(
                "tcpdemo_req_recv", "Submit packets decoded.", registry=r
            ),
            rsp_send=Counter(
                "tcpdemo_rsp_send", "SubmitAck packets sent.", registry=r
            ),
            protocol_errors=protocol_errors,
            bytes_received=Counter(
                "tcpdemo_bytes_received",
                "Bytes read from client connections.",
                registry=r,
            ),
            bytes_sent=Counter(
                "tcpdemo_bytes_sent",
                "Bytes written to client connections.",
                registry=r,
            ),
            backpressure_pauses=Counter(
                "tcpdemo_backpressure_pauses",
                "Times reading from a connection paused because its unsent acks "
                "exceeded the write-buffer limit.",
                registry=r,
            ),
            idle_timeouts=Counter(
                "tcpdemo_idle_timeouts",
                "Connections closed by the idle timeout.",
                registry=r,
            ),
        )


def metricsSite(registry: CollectorRegistry) -> Site:
    """
    A web site serving C{registry} at C{/metrics}, for the server's reactor.
    """
    # Imported here: prometheus_client.twisted imports the global reactor,
    # which must not happen before twistd has installed the chosen one.
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = Site(root)
    site.noisy = False
    # No access-log line per scrape: one every few seconds is noise.
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
