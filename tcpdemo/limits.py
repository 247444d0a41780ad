"""
Process limits shared by the server and the client.

A module of its own so that the client (C{tcpdemo.client}) can raise its
open-file limit without importing the server (L{tcpdemo.service}), which
loads prometheus_client and twisted.web.
"""

from __future__ import annotations

import resource


def raiseFileLimit() -> int:
    """
    Raise the soft open-file limit to the hard one, as Go does, so that the
    connection count is bounded by --max-connections (or the client's
    --connections) and not by a default of 1024.  Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft
