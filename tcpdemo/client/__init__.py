"""
tcpdemo's client side: a library and a load generator.

The library, in the manner of treq (see L{tcpdemo.client.connection})::

    from tcpdemo.client import connect
    client = await connect(reactor, "tcp:127.0.0.1:8888")
    result = await client.submit(b"payload")
    await client.close()

C{tcpdemo-client} (L{main}) drives a server with Submits over many
connections (pipelined with a window, request/response, or open loop at a
fixed rate), checks that every SubmitAck is the right one, and reports
throughput, latency percentiles, results, errors and its own CPU time.
See C{docs/client.md}.

Nothing here imports the server (L{tcpdemo.protocol}, L{tcpdemo.tap},
L{tcpdemo.metrics}, prometheus_client, twisted.web).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from tcpdemo.client.connection import DEFAULT_MAX_QUEUED, DEFAULT_WINDOW, Client, connect
from tcpdemo.client.endpoint import EndpointError
from tcpdemo.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnRefused,
    QueueFull,
    ServerProtocolError,
)

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_WINDOW",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnRefused",
    "ConnectFailed",
    "EndpointError",
    "QueueFull",
    "ServerProtocolError",
    "connect",
    "main",
]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The C{tcpdemo-client} console script (imported when run, so that the
    library does not load the load generator's dependencies).
    """
    from tcpdemo.client.cli import main as cliMain

    cliMain(argv)
