"""
The Go load generator (benchmarks/loadgen, C{bench --client go}): built once
with the Debian C{golang-go} toolchain into a gitignored cache directory, and
rebuilt when its sources or the toolchain change.

Why a second client: the PyPy C{tcpdemo-client}'s own pauses (GC, JIT; up
to tens of milliseconds even after a warm-up) showed up as the server's
latency in the open-loop scenarios.  The Go generator speaks the same
options and prints the same JSON keys, and its open-loop sender sleeps with
nanosleep(2) on a thread of its own, so its figures are the server's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "loadgen"
#: Under benchmarks/.cache (gitignored), beside the Go peers.
CACHE = SOURCE.parent / ".cache" / "loadgen"
BINARY_NAME = "tcpdemo-loadgen"


class GoMissing(Exception):
    """
    There is no C{go} to build the generator with.
    """


def isLoadgen(client: str) -> bool:
    """
    Whether C{client} (the harness's client executable) is the Go generator.
    """
    return Path(client).name == BINARY_NAME


def build(go: str | None = None) -> str:
    """
    The path of the built generator, building it first if needed.
    """
    go = go or shutil.which("go")
    if go is None:
        raise GoMissing("go not found: install it (Debian: apt-get install golang-go)")
    version = subprocess.run([go, "version"], check=True, capture_output=True, text=True).stdout
    digest = hashlib.sha256(version.encode())
    for path in sorted(SOURCE.iterdir()):
        if path.suffix in (".go", ".mod"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = digest.hexdigest()
    binary = CACHE / BINARY_NAME
    marker = CACHE / "stamp"
    if binary.exists() and marker.exists() and marker.read_text() == stamp:
        return str(binary)
    CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Standard library only: never the network; a build cache of our own
    # when the environment has no home for Go's.
    env.update({"GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"})
    env.setdefault("GOCACHE", str(CACHE / "gocache"))
    partial = CACHE / f"{BINARY_NAME}.{os.getpid()}"
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial), "."],
        cwd=SOURCE,
        env=env,
        check=True,
    )
    os.replace(partial, binary)  # atomic: a concurrent build loses nothing
    marker.write_text(stamp)
    return str(binary)


def version(binary: str) -> str:
    """
    What the generator says it is, for the results' meta.
    """
    return subprocess.run(
        [binary, "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()
