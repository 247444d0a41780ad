"""
Issue 12's "done when" figures, measured by C{benchmarks/hostile.py}
against a real C{twistd -n tcpdemo} on its defaults (about a minute):

  - 1000 connections each holding a ~1 MiB partial frame and trickling a
    byte every 0.1 s: server RSS grows by at most 128 MiB, and a clean
    connection's batch of 1000 pipelined Submits round-trips in at most
    50 ms (the median of the batches sent while they trickle);
  - one connection flooding Conn frames: the clean batch round-trips in at
    most 20 ms (median);
  - the memory one attack leaves behind is reused by the next: two more
    rounds of the same attack on the same server keep no more (within
    4 MiB) and peak no higher.

The medians are asserted, not the maxima: the machine is shared, and one
descheduling of the server costs a batch tens of milliseconds whatever the
server does.  Every figure goes to the trial log and the reliability report.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.reliability import ServerTestCase, report
from tests.support import REPO_ROOT, subprocessEnv

MIB_LIMIT = 128
TRICKLE_MS = 50
FLOOD_MS = 20


class HostileFiguresTests(ServerTestCase):
    def test_doneWhenFigures(self) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.hostile",
                "--json",
                "--seconds",
                "8",
                "--rounds",
                "3",
            ],
            cwd=REPO_ROOT,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        figures = json.loads(result.stdout)
        report("hostile figures", **figures)
        partial = figures["partial"]
        self.assertLessEqual(partial["rss_peak_growth_mib"], MIB_LIMIT, partial)
        self.assertLessEqual(partial["clean_batch_while_trickling"]["p50_ms"], TRICKLE_MS, partial)
        # Memory comes back: 2-3.6 MiB kept 10 s after the attackers left,
        # measured on CPython; 16 allowed for allocator noise.  PyPy keeps
        # 24-33 MiB (measured): the connections' garbage, until its next
        # major collection, which an idle server does not allocate enough to
        # start, and the arenas and malloc blocks a collection frees, which
        # it keeps for reuse (a gc.collect() in the server then freed 15 MiB
        # of its heap and the RSS did not move).  48 MiB bounds that there;
        # what matters is below: it is reused, not added to.
        kept = 48 if sys.implementation.name == "pypy" else 16
        self.assertLessEqual(partial["rss_10s_after_leaving_growth_mib"], kept, partial)
        # Two more rounds of the same attack: they peak no higher than the
        # first, and the third keeps no more than the second (PyPy,
        # measured: peaks +94.8, +94.3, +94.8 MiB, kept 23.9, 30.4, 30.4 --
        # the second round settles what the first left; CPython: peaks
        # +67.9 three times, kept 3.4, 3.6, 3.6).  Memory that is not
        # reused would add up round after round.
        firstPeak = partial["rss_peak_growth_mib"]
        laterPeaks = partial["later_rounds_rss_peak_growth_mib"]
        keptEach = partial["later_rounds_rss_10s_after_leaving_growth_mib"]
        self.assertEqual(len(laterPeaks), 2, partial)
        self.assertLessEqual(max(laterPeaks), firstPeak + 4, partial)
        self.assertLessEqual(keptEach[1], keptEach[0] + 4, partial)
        self.assertLessEqual(max(keptEach), kept, partial)
        flood = figures["connflood"]
        self.assertLessEqual(flood["clean_batch_while_flooded"]["p50_ms"], FLOOD_MS, flood)
