"""
Comparison peers: two small asyncio servers for the tcpdemo protocol.

NOT THE PRODUCT.  They exist only so that the benchmark can put tcpdemo's
figures next to what a Python programmer would write with asyncio, measured
side by side on the same machine in the same run.  They answer well-formed
Submits (and Conn) and close the connection on anything else; they have no
metrics, limits, timeouts or drain on shutdown.

Each prints one line, C{listening on HOST:PORT}, once it accepts connections,
and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
from collections.abc import Awaitable
from typing import Any, Callable

#: The frame header: big-endian signed int32 that counts itself.
LENGTH = struct.Struct("!i")
MAX_FRAME_LENGTH = 1024 * 1024
SUBMIT = 0x02
CONN = 0x01
ID_SIZE = 8
#: A SubmitAck is 14 bytes: length 14, 0x81, the 8-byte id, result 0.
ACK_HEAD = LENGTH.pack(14) + b"\x81"
ACK_TAIL = b"\x00"
CONN_ACK = LENGTH.pack(6) + b"\x80\x00"


def parseArguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--backlog", type=int, default=4096)
    return parser.parse_args()


def serve(
    start: Callable[[asyncio.AbstractEventLoop], Awaitable[asyncio.AbstractServer]],
) -> None:
    """
    Start a server with C{start}, announce its address, run until signalled.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(start(loop))
    host, port = server.sockets[0].getsockname()[:2]
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
    stop = loop.create_future()

    def stopping(*args: Any) -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
