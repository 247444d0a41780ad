"""
Comparison peer, NOT THE PRODUCT: the tcpdemo protocol as an
C{asyncio.Protocol}: C{data_received} parses every complete frame of the
buffer, collects the acks, and writes them in one C{transport.write}.  It
stops reading while the transport's write buffer is above its high-water
mark, as the product does.

Run: C{python -m benchmarks.peers.asyncio_protocol --port 0}
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.peers import (
    ACK_HEAD,
    ACK_TAIL,
    CONN,
    CONN_ACK,
    ID_SIZE,
    LENGTH,
    MAX_FRAME_LENGTH,
    SUBMIT,
    parseArguments,
    serve,
)

_SEPARATOR = ACK_TAIL + ACK_HEAD


class TcpDemoProtocol(asyncio.Protocol):
    transport: asyncio.Transport | None = None

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        buffer = self.buffer + data if self.buffer else data
        offset = 0
        size = len(buffer)
        ids: list[bytes] = []
        out: list[bytes] = []
        unpack_from = LENGTH.unpack_from
        bad = False
        while size - offset >= 4:
            (length,) = unpack_from(buffer, offset)
            if length < 5 or length > MAX_FRAME_LENGTH:
                bad = True
                break
            end = offset + length
            if end > size:
                break
            command = buffer[offset + 4]
            if command == SUBMIT and length > 5 + ID_SIZE - 1:
                ids.append(buffer[offset + 5 : offset + 5 + ID_SIZE])
            elif command == CONN:
                if ids:
                    out.append(ACK_HEAD + _SEPARATOR.join(ids) + ACK_TAIL)
                    ids = []
                out.append(CONN_ACK)
            else:
                bad = True
                break
            offset = end
        if ids:
            out.append(ACK_HEAD + _SEPARATOR.join(ids) + ACK_TAIL)
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if bad:
            self.buffer = b""
            transport.close()
        else:
            self.buffer = buffer[offset:] if offset else buffer

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def main() -> None:
    options = parseArguments(__doc__ or "")

    def start(loop: asyncio.AbstractEventLoop) -> asyncio.Future[asyncio.AbstractServer]:
        return asyncio.ensure_future(
            loop.create_server(TcpDemoProtocol, options.host, options.port, backlog=options.backlog)
        )

    serve(start)


if __name__ == "__main__":
    main()
