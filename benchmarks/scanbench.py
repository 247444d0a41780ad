"""
The server's read path on frames of varied size (issue 17's V), per frame:
CPU microseconds to answer a stream of Submits cut into reads, through the
real protocol (C{TcpDemoServerProtocol.dataReceived}, C{takeSubmits}, the
frame layer, C{endOfRead}) with a transport that drops what it is given,
and through each scanner variant alone.

  python -m benchmarks.scanbench                    # CPython, PyPy alike
  python -m benchmarks.scanbench --reads 65536,4096 --variants pure,c

Every variant is measured in the same process, interleaved, best of
C{--repeat}; the figure is CPU time (C{time.process_time}), so other load on
the machine shows less than in wall time.  Variants: C{pure} (the
reference, tcpdemo.scan's C{pure*}), C{pypy} (C{pypySubmitAcks}, written
for PyPy's JIT), C{c} (the compiled extension, CPython only), C{default}
(what C{tcpdemo.scan.submitAcks} is here); C{P} rows are the same with
equal-size frames, for comparison.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import struct
import sys
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tcpdemo import protocol, scan
from tcpdemo.client.load import codenames
from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory

MAX_LENGTH = 1 << 20
#: The bytes of one SubmitAck.
ACK_SIZE = 14
SubmitAcks = Callable[..., "tuple[int, int, bytes]"]


def submits(count: int, varied: bool, seed: int = 17) -> bytes:
    """
    C{count} Submit frames with consecutive ids: payloads of 15-30 bytes
    (the reference client's codenames) if C{varied}, else all of 20.
    """
    rng = random.Random(seed)
    payloads = codenames(1000, rng) if varied else [b"p" * 20]
    out = []
    for n in range(count):
        body = b"\x02" + struct.pack(">Q", n) + payloads[n % len(payloads)]
        out.append(struct.pack(">i", len(body) + 4) + body)
    return b"".join(out)


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class _DroppingTransport(StringTransport):
    """
    Takes every write and keeps only its length.
    """

    bufferSize = 65536
    written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)


def variants() -> dict[str, tuple[SubmitAcks, Callable[[list[bytes]], bytes]]]:
    found: dict[str, tuple[SubmitAcks, Callable[[list[bytes]], bytes]]] = {
        "pure": (scan.pureSubmitAcks, scan.pureAcks),
        "default": (scan.submitAcks, scan.acks),
        "pypy": (scan.pypySubmitAcks, scan.pureAcks),
    }
    try:
        from tcpdemo import _scan
    except ImportError:
        pass
    else:
        found["c"] = (_scan.submitAcks, _scan.acks)
    return found


def protocolPass(chunks: list[bytes], submitAcks: SubmitAcks, acks: Any) -> Callable[[], int]:
    """
    One pass: a fresh connection fed every chunk, as a transport would.
    """
    factory = TcpDemoServerFactory(
        metrics=ServerMetrics.create(CollectorRegistry()),
        reactor=Clock(),
        maxFrameLength=MAX_LENGTH,
    )

    def run() -> int:
        saved = protocol.submitAcks, protocol._acks
        protocol.submitAcks, protocol._acks = submitAcks, acks
        try:
            proto = factory.buildProtocol(None)
            assert proto is not None
            transport = _DroppingTransport()
            proto.makeConnection(transport)
            for chunk in chunks:
                # (Not copied out of a read buffer first, as tcpdemo.readinto
                # does: on PyPy that copy is ~0.002 µs per frame, but filling
                # a bytearray from bytes here would cost ten times that.)
                proto.dataReceived(chunk)
            proto.connectionLost()
            return transport.written // ACK_SIZE
        finally:
            protocol.submitAcks, protocol._acks = saved

    return run


def scanPass(chunks: list[bytes], submitAcks: SubmitAcks, acks: Any) -> Callable[[], int]:
    """
    One pass of the scanner alone over each chunk (the partial frame at the
    end of a chunk is carried over, as the frame layer would).
    """

    def run() -> int:
        total = 0
        rest = b""
        for chunk in chunks:
            data = rest + chunk if rest else chunk
            end, count, _ = submitAcks(data, MAX_LENGTH, 0, protocol.MIN_RUN)
            total += count
            rest = data[end:]
        return total

    return run


def measure(passes: dict[str, Callable[[], int]], frames: int, repeat: int) -> dict[str, float]:
    """
    CPU µs per frame of each pass, best of C{repeat}, interleaved.
    """
    best = {name: float("inf") for name in passes}
    for name, run in passes.items():  # warm-up: PyPy's JIT
        for _ in range(5):
            if run() != frames:
                raise AssertionError(f"{name} did not answer all {frames} frames")
    for _ in range(repeat):
        for name, run in passes.items():
            gc.collect()
            start = time.process_time()
            run()
            spent = time.process_time() - start
            best[name] = min(best[name], spent / frames * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--reads", default="65536,8192", help="read sizes, comma-separated")
    parser.add_argument("--variants", default=None, help="comma-separated (default: all)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--scenarios", default="V,P")
    args = parser.parse_args(argv)
    available = variants()
    chosen = args.variants.split(",") if args.variants else list(available)
    print(
        f"{platform.python_implementation()} {sys.version.split()[0]}, "
        f"{args.frames} frames, CPU µs per frame (best of {args.repeat})"
    )
    print(f"{'scenario':8} {'read':>6} {'path':8} " + " ".join(f"{v:>12}" for v in chosen))
    for scenario in args.scenarios.split(","):
        data = submits(args.frames, varied=scenario == "V")
        for size in (int(s) for s in args.reads.split(",")):
            chunks = reads(data, size)
            for path, make in (("protocol", protocolPass), ("scan", scanPass)):
                passes = {v: make(chunks, *available[v]) for v in chosen}
                best = measure(passes, args.frames, args.repeat)
                print(
                    f"{scenario:8} {size:6} {path:8} "
                    + " ".join(f"{best[v]:12.4f}" for v in chosen),
                    flush=True,
                )


if __name__ == "__main__":
    main()
