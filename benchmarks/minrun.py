"""
The micro-benchmark behind C{MIN_RUN} (tcpdemo/scan.py, the pure-Python versions): the cost of
answering one read of C{n} equal Submits through L{submitRunAcks} (the
strided path) and through L{scanSubmits}' per-frame loop, for several C{n}.

  python -m benchmarks.minrun        # under CPython, PyPy, ... alike

The best of 5 repeats per figure; the machine's noise shows as the two
columns crossing at different C{n} from one run to the next.
"""

from __future__ import annotations

import struct
import timeit

from tcpdemo.scan import pureAcks as _acks
from tcpdemo.scan import pureScanSubmits as scanSubmits
from tcpdemo.scan import pureSubmitRunAcks as submitRunAcks

COUNTS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 64, 128, 256, 1000)
MAX_LENGTH = 1 << 20


def submit(number: int, payload: bytes = b"p" * 20) -> bytes:
    body = b"\x02" + struct.pack(">Q", number) + payload
    return struct.pack(">i", len(body) + 4) + body


def measure(count: int, number: int = 20000) -> tuple[float, float]:
    """
    Microseconds per read of C{count} Submits: strided path, loop.
    """
    data = b"".join(submit(i) for i in range(count))

    def strided() -> object:
        end, _, acks = submitRunAcks(data, MAX_LENGTH, 2)
        rest: list[bytes] = []
        scanSubmits(data, MAX_LENGTH, rest, end)
        return acks, rest

    def loop() -> object:
        ids: list[bytes] = []
        scanSubmits(data, MAX_LENGTH, ids, 0)
        return _acks(ids)

    for _ in range(2):  # PyPy: let the JIT compile both first
        best = [
            min(timeit.repeat(f, number=number, repeat=5)) / number * 1e6 for f in (strided, loop)
        ]
    return best[0], best[1]


def main() -> None:
    print(f"{'n':>5}  {'strided µs':>10}  {'loop µs':>8}")
    for count in COUNTS:
        strided, loop = measure(count, number=max(200, 20000 // count))
        print(f"{count:5}  {strided:10.2f}  {loop:8.2f}")


if __name__ == "__main__":
    main()
