"""
Tests for tcpdemo, run with C{python -m twisted.trial tests} (or C{tox}).

Hypothesis settings profiles, chosen by the environment variable
C{HYPOTHESIS_PROFILE} (default C{ci}):

  - C{ci}: C{max_examples=500}, C{deadline=None}, C{derandomize=False},
    C{print_blob=True}.  Every run draws new examples; a failure prints the
    C{@reproduce_failure} blob, so that a failure seen once on CI can be
    replayed anywhere.  No deadline: CI machines are shared and PyPy's JIT
    warms up slowly, and a flaky timing failure is no finding.
  - C{dev}: C{max_examples=50}, C{deadline=None}, C{derandomize=False},
    C{print_blob=True}: the same checks, about ten times faster, for the
    edit-test loop.

Both keep Hypothesis' example database in C{.hypothesis/} at the top of the
work tree (trial runs the tests inside a temporary directory that it wipes on
every run, so the default relative location would forget every failure).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

_database = DirectoryBasedExampleDatabase(
    str(Path(__file__).resolve().parent.parent / ".hypothesis" / "examples")
)

settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=False,
    print_blob=True,
    database=_database,
)
settings.register_profile(
    "dev",
    max_examples=50,
    deadline=None,
    derandomize=False,
    print_blob=True,
    database=_database,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
