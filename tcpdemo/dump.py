"""
C{tcpdemo-dump SPEC}: print what a store holds, one JSON object per stored
Submit, oldest first -- C{{"id": "<hex>", "payload": "<hex>", ...}} plus the
store's own fields (for C{sqlite:PATH}: C{received}, C{peer}, C{conn},
C{seq}).

SPEC is what C{twistd tcpdemo --handler} takes (C{NAME[:ARG]}); the handler's
plugin must also provide L{IStoreReader}.  A bad SPEC ends with one line on
standard error and exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO, NoReturn

from tcpdemo.handlers import HandlerArgumentError, IStoreReader, findMaker

USAGE = "usage: tcpdemo-dump SPEC   (e.g. tcpdemo-dump sqlite:/var/lib/tcpdemo/submits.db)"


def dump(spec: str, out: IO[str]) -> int:
    """
    Write every Submit stored by C{spec} to C{out}; return how many.
    """
    maker, argument = findMaker(spec)
    if not IStoreReader.providedBy(maker):
        raise HandlerArgumentError(f"the {maker.name} handler stores nothing to dump")
    count = 0
    write = out.write
    for stored in IStoreReader(maker).readStored(argument):
        write(json.dumps(stored, separators=(", ", ": ")) + "\n")
        count += 1
    out.flush()
    return count


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The C{tcpdemo-dump} console script.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        sys.exit(0)
    if len(args) != 1:
        sys.stderr.write(USAGE + "\n")
        sys.exit(2)
    try:
        dump(args[0], sys.stdout)
    except HandlerArgumentError as e:
        sys.stderr.write(f"tcpdemo-dump: {e}\n")
        sys.exit(2)
    except BrokenPipeError:
        # A reader such as `head` went away: not an error of ours.
        sys.stderr.close()
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
