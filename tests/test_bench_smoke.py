"""
The CI-sized run of the benchmark harness (benchmarks/, BENCHMARKS.md), so
that it never rots: every server the benchmark runs (the historical steps,
the product, the two asyncio peers, the product with C{--workers 1} and
C{--workers 2}) answers the docs/protocol.md test vectors as a real process,
and every scenario (P, R, O, C, V) runs at tiny scale against the real
C{twistd -n tcpdemo} with C{tcpdemo-client}.  It asserts
correctness (zero client errors, clean exits), never speed; and that the
run's raw data and what the docs show go where BENCHMARKS.md says, and
that C{benchmarks.report} makes the latter again from the former.
"""

from __future__ import annotations

import json
import os
import shutil
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
        runDir = Path(self.mktemp()).resolve()
        out = Path(self.mktemp()).resolve()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench",
                "--smoke",
                "--log-dir",
                logs,
                "--run-dir",
                str(runDir),
                "--out",
                str(out),
            ],
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn(" 0 failed", result.stdout, output)
        # The raw data in the run directory, what the docs show in --out.
        raw = json.loads((runDir / "results.json").read_text())
        self.assertEqual(
            {r["scenario"] for r in raw["runs"]}, {"P", "R", "O", "C", "V", "OV", "OV20"}
        )
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["chart.svg", "summary.md"])
        summary = (out / "summary.md").read_text()
        self.assertIn("](chart.svg)", summary)
        self.assertTrue((out / "chart.svg").read_text().startswith("<svg"))
        self.assertEqual(raw["failures"], [])
        self.assertIn(f"at commit {raw['meta']['commit']}", summary)
        self.assertReportRegenerates(runDir, out, summary)

    def assertReportRegenerates(self, runDir: Path, out: Path, summary: str) -> None:
        """
        C{python -m benchmarks.report} writes the same summary and chart
        again from the run directory alone, and puts the summary in a
        document's generated section, the chart linked relative to it.
        """
        again = Path(self.mktemp()).resolve()
        doc = again / "docs" / "BENCHMARKS.md"
        doc.parent.mkdir(parents=True)
        shutil.copy(ROOT / "BENCHMARKS.md", doc)
        before = doc.read_text()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.report",
                "--run-dir",
                str(runDir),
                "--out",
                str(again / "results"),
                "--doc",
                str(doc),
                "--update-doc",
            ],
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual((again / "results" / "summary.md").read_text(), summary)
        self.assertEqual(
            (again / "results" / "chart.svg").read_text(), (out / "chart.svg").read_text()
        )
        text = doc.read_text()
        generated = summary.replace("](chart.svg)", "](../results/chart.svg)")
        self.assertIn(f"-->\n{generated}\n<!-- END GENERATED -->", text)
        # Outside the generated section, nothing changed.
        end = "<!-- END GENERATED -->"
        self.assertEqual(text.split("<!-- BEGIN")[0], before.split("<!-- BEGIN")[0])
        self.assertEqual(text.split(end)[1], before.split(end)[1])


class HarnessReportTests(SynchronousTestCase):
    """
    C{--pypy-gc-nursery}: every PyPy server alike gets C{PYPY_GC_NURSERY},
    no CPython server does, and the summary says it was set; and the
    summary's issue-15 verdicts.
    """

    def setUp(self) -> None:
        if not (ROOT / "benchmarks" / "bench.py").exists():
            self.skipTest("no benchmarks/ beside the tests (not a checkout)")
        sys.path.insert(0, str(ROOT))
        self.addCleanup(sys.path.remove, str(ROOT))

    def test_onlyPypyServers(self) -> None:
        from benchmarks import bench
        from benchmarks.servers import Server

        run = bench.Bench(
            bench.parseArguments(["--pypy-gc-nursery", "16MB", "--run-dir", self.mktemp()])
        )
        self.assertEqual(run.serverEnv("pypy"), {"PYPY_GC_NURSERY": "16MB"})
        self.assertEqual(run.serverEnv("cpython"), {})
        for kind in ("final", "sqlite"):
            server = Server(kind, sys.executable, extraEnv=run.serverEnv("pypy"))
            self.assertEqual(server.environment()["PYPY_GC_NURSERY"], "16MB")
        plain = bench.Bench(bench.parseArguments(["--run-dir", self.mktemp()]))
        self.assertEqual(plain.serverEnv("pypy"), {})

    def test_summarySaysSo(self) -> None:
        from benchmarks import report

        withNursery = report.summary({"meta": {"pypy_gc_nursery": "16MB"}, "runs": []})
        self.assertIn("PYPY_GC_NURSERY=16MB", withNursery)
        self.assertNotIn("PYPY_GC_NURSERY", report.summary({"meta": {}, "runs": []}))

    def test_issue15VerdictFromROnly(self) -> None:
        """
        A run of R alone (no P with sqlite) still gets issue 15's R line.
        """
        from benchmarks import report

        runs = [
            {"runtime": "cpython", "server": "final", "scenario": "R", "p99_ms": 3.0},
            {"runtime": "cpython", "server": "sqlite", "scenario": "R", "p99_ms": 5.0},
        ]
        text = report.summary({"meta": {}, "runs": runs})
        self.assertIn("R, CPython: p99 with sqlite ≤ 2× the ack handler's (issue 15)", text)
        self.assertIn("1.67× (5 against 3 ms)", text)
