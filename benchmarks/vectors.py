"""
A quick correctness check of every server the benchmark runs (the steps,
the product, the peers): the test vectors of docs/protocol.md over a real socket,
a frame split byte by byte, a Conn, and an unknown command that must close
the connection after the acks owed (the Go peers close it on the Conn, as the
reference servers do).  Used by C{--smoke}, so that the steps
and the peers cannot rot unnoticed.
"""

from __future__ import annotations

import socket
import time

from benchmarks.servers import GO_PEERS, LOOPBACK, BenchError, Server


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


#: What the client writes, one element per write.
WRITES: list[bytes] = (
    [
        # docs/protocol.md: Submit id "00000001", payload "hello".
        _h("00000012 02 3030303030303031 68656c6c6f"),
        # Empty payload, id "00000002".
        _h("0000000d 02 3030303030303032"),
        # Two Submits in one write, ids 3 and 4.
        _h("0000000e 02 3030303030303033 61  0000000f 02 3030303030303034 6262"),
    ]
    + [
        # id 5, one byte per write.
        bytes((b,))
        for b in _h("00000011 02 3030303030303035 7a7a7a7a")
    ]
    + [
        # Conn (empty body), then id 6 and an unknown command 0x07 in one write.
        _h("00000005 01") + _h("0000000d 02 3030303030303036") + _h("00000006 07 00"),
    ]
)

#: What the server must answer, then close.
EXPECTED: bytes = (
    b"".join(_h("0000000e 81") + f"{n:08d}".encode() + b"\x00" for n in range(1, 6))
    + _h("00000006 80 00")
    + _h("0000000e 81 3030303030303036 00")
)


#: The reference servers (the Go peers) close the connection on a Conn
#: (PROTOCOL.md, "Bad input"): the same writes, the last one without it.
REFERENCE_WRITES: list[bytes] = WRITES[:-1] + [
    _h("0000000d 02 3030303030303036") + _h("00000006 07 00"),
]
REFERENCE_EXPECTED: bytes = b"".join(
    _h("0000000e 81") + f"{n:08d}".encode() + b"\x00" for n in range(1, 7)
)
#: And on a second connection: a Submit, then a Conn, which closes it.
REFERENCE_CONN_WRITES: list[bytes] = [
    _h("00000012 02 3030303030303031 68656c6c6f") + _h("00000005 01"),
]
REFERENCE_CONN_EXPECTED: bytes = _h("0000000e 81 3030303030303031 00")


def check(server: Server, timeout: float = 10.0) -> None:
    """
    Raise L{BenchError} unless C{server} answers L{WRITES} with
    L{EXPECTED} and then closes the connection; for the Go peers, which
    behave as the reference does, L{checkReference}.
    """
    if server.kind in GO_PEERS:
        checkReference(server, timeout)
        return
    exchange(server, WRITES, EXPECTED, timeout)


def checkReference(server: Server, timeout: float = 10.0) -> None:
    """
    Raise L{BenchError} unless C{server} answers as the reference servers do:
    L{REFERENCE_WRITES} with L{REFERENCE_EXPECTED} then a close, and a Conn
    with a close after the acks owed.
    """
    exchange(server, REFERENCE_WRITES, REFERENCE_EXPECTED, timeout)
    exchange(server, REFERENCE_CONN_WRITES, REFERENCE_CONN_EXPECTED, timeout)


def exchange(server: Server, writes: list[bytes], expected: bytes, timeout: float = 10.0) -> None:
    """
    Write C{writes} on a new connection to C{server}; raise L{BenchError}
    unless it answers C{expected} and then closes the connection.
    """
    assert server.port is not None
    with socket.create_connection((LOOPBACK, server.port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in writes:
            sock.sendall(data)
            # Let single bytes arrive as separate reads.
            if len(data) == 1:
                time.sleep(0.002)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise BenchError(
                    f"{server.kind}: connection not closed at the end; received {received.hex()}"
                ) from None
            if not chunk:
                break
            received += chunk
        else:
            raise BenchError(f"{server.kind}: connection not closed at the end")
    if received != expected:
        raise BenchError(f"{server.kind}: answered {received.hex()} instead of {expected.hex()}")
