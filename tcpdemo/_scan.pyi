# The optional compiled versions of tcpdemo/scan.py's functions (_scan.c).

MIN_RUN: int

def acks(ids: list[bytes], /) -> bytes: ...
def submitAcks(
    data: bytes, maxLength: int, start: int = ..., minRun: int = ..., /
) -> tuple[int, int, bytes]: ...
