"""
The CI-sized run of the benchmark harness (benchmarks/, BENCHMARKS.md), so
that it never rots: every server the benchmark runs (the historical steps,
the product, the two asyncio peers, the product with C{--workers 1} and
C{--workers 2}) answers the docs/protocol.md test vectors as a real process,
and every scenario (P, R, O, C, V) runs at tiny scale against the real
C{twistd -n tcpdemo} with C{tcpdemo-client}.  It asserts
correctness (zero client errors, clean exits), never speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class BenchSmokeTests(SynchronousTestCase):
    def test_smoke(self) -> None:
        """
        C{python -m benchmarks.bench --smoke} exits 0 and reports no failure.
        """
        if not (ROOT / "benchmarks" / "bench.py").exists():
            self.skipTest("no benchmarks/ beside the tests (not a checkout)")
        logs = os.path.abspath(self.mktemp())
        os.makedirs(logs)
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench", "--smoke", "--log-dir", logs],
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn(" 0 failed", result.stdout, output)
