"""
Submit ids: C{"%08d"} of a per-connection counter starting at 1, as in the
reference client.

Formatting every id costs more than everything else the client does per
Submit, so runs of consecutive ids are built from pieces instead: an id is
a 5-digit prefix, which changes once per 1000 ids, and a 3-digit suffix
from a table.  A run of ids is then a few joins of precomputed bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

from tcpdemo.packet import ID_SIZE

#: Past 99999999 ids wrap to 00000000, so that they stay 8 bytes.
ID_MODULUS = 10**ID_SIZE

SUFFIX_DIGITS = 3
#: Ids per prefix: the suffix table's size.
BLOCK = 10**SUFFIX_DIGITS
_PREFIXES = ID_MODULUS // BLOCK

#: The suffix of every id in a block, by position.
SUFFIXES = [b"%03d" % k for k in range(BLOCK)]


def idBytes(n: int) -> bytes:
    """
    The id of Submit number C{n} of a connection.
    """
    return b"%08d" % (n % ID_MODULUS)


def idBlocks(first: int, count: int) -> Iterator[tuple[bytes, int, int]]:
    """
    Split the ids C{first} to C{first + count - 1} by prefix: yield each
    prefix with the range C{lo:hi} of suffix positions that follow it.
    """
    n = first
    end = first + count
    while n < end:
        block, lo = divmod(n, BLOCK)
        hi = min(BLOCK, lo + end - n)
        yield b"%05d" % (block % _PREFIXES), lo, hi
        n += hi - lo
