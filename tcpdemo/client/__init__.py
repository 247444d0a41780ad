"""
C{tcpdemo-client}: a load generator and checker for tcpdemo servers.

It drives a server with Submits over many connections (pipelined with a
window, request/response, or open loop at a fixed rate), checks that every
SubmitAck is the right one, and reports throughput, latency percentiles,
errors and its own CPU time.  See C{docs/client.md}.
"""

from tcpdemo.client.cli import main

__all__ = ["main"]
