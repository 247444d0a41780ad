"""
Coercers for numeric command-line options, shared by the server's and the
client's C{usage.Options}: each turns a string into a number or raises
C{ValueError} with a message C{usage.Options} shows as it is.
"""

from __future__ import annotations


def positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be a positive integer, not {value}")
    return number


def nonNegativeInt(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be >= 0, not {value}")
    return number


def positiveFloat(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be > 0, not {value}")
    return number


def nonNegativeFloat(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must be >= 0, not {value}")
    return number
