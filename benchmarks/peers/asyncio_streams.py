"""
Comparison peer, NOT THE PRODUCT: the tcpdemo protocol with asyncio streams,
the way most Python programmers would write it: C{readexactly} the length,
C{readexactly} the body, write the ack, C{await drain()}, once per frame.

Run: C{python -m benchmarks.peers.asyncio_streams --port 0}
"""

from __future__ import annotations

import asyncio

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


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(4))
            if length < 5 or length > MAX_FRAME_LENGTH:
                break
            payload = await reader.readexactly(length - 4)
            command = payload[0]
            if command == SUBMIT and len(payload) > ID_SIZE:
                writer.write(ACK_HEAD + payload[1 : 1 + ID_SIZE] + ACK_TAIL)
            elif command == CONN:
                writer.write(CONN_ACK)
            else:
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def main() -> None:
    options = parseArguments(__doc__ or "")

    def start(loop: asyncio.AbstractEventLoop) -> asyncio.Future[asyncio.AbstractServer]:
        return asyncio.ensure_future(
            asyncio.start_server(handle, options.host, options.port, backlog=options.backlog)
        )

    serve(start)


if __name__ == "__main__":
    main()
