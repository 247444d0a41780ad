"""
Coercers for numeric command-line options, shared by the server's and the
client's C{usage.Options}: each turns a string into a number or raises
C{ValueError} with a message C{usage.Options} shows as it is.
"""

from __future__ import annotations

import math


def _int(value: str, wanted: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"must be {wanted}, not {value!r}") from None


def _float(value: str, wanted: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be {wanted}, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be {wanted}, not {value!r}")
    return number


def positiveInt(value: str) -> int:
    number = _int(value, "a positive integer")
    if number <= 0:
        raise ValueError(f"must be a positive integer, not {value}")
    return number


def nonNegativeInt(value: str) -> int:
    number = _int(value, "an integer >= 0")
    if number < 0:
        raise ValueError(f"must be >= 0, not {value}")
    return number


def positiveFloat(value: str) -> float:
    number = _float(value, "a number > 0")
    if not number > 0:
        raise ValueError(f"must be > 0, not {value}")
    return number


def nonNegativeFloat(value: str) -> float:
    number = _float(value, "a number >= 0")
    if number < 0:
        raise ValueError(f"must be >= 0, not {value}")
    return number
