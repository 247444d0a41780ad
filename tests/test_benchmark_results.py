"""
What git keeps of the benchmark results (BENCHMARKS.md, "Where results go"):
the files the docs show, in benchmarks/results/, and nothing raw.  Every
benchmarks/results path that README.md, BENCHMARKS.md or docs/ name must be
in git, every link in the kept summaries must resolve, and the raw data of
runs (results.json, profiles, logs) must stay out: it goes to the ignored
run directory, benchmarks/runs/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"
#: What a doc shows: tables and pictures.
SHOWN_SUFFIXES = (".md", ".svg")
#: A path under benchmarks/results in prose or a command; "rev:path" (git
#: show) names a file in history and is checked there.
_REFERENCE = re.compile(r"(?:([0-9a-f]{7,40}):)?(benchmarks/results(?:/[\w.-]+)*/?)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: Paths of the machine a file was made on.
_ABSOLUTE = re.compile(r"(?<![\w.])/(?:home|work|tmp|root|usr/local)/")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
    )


class BenchmarkResultsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not (ROOT / "BENCHMARKS.md").exists() or not (ROOT / "benchmarks").is_dir():
            self.skipTest("no BENCHMARKS.md and benchmarks/ beside the tests (not a checkout)")
        if not (ROOT / ".git").exists():
            self.skipTest("not a git checkout: what git keeps cannot be read")
        listed = _git("ls-files", "-z", "--", RESULTS)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.tracked = {p for p in listed.stdout.split("\0") if p}

    def docs(self) -> list[Path]:
        return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]

    def test_referencedPathsAreKept(self) -> None:
        """
        Every benchmarks/results path in README.md, BENCHMARKS.md and docs/
        is a file git keeps, or a directory holding some; one named as
        C{REV:path} is in that commit.
        """
        checked = 0
        for doc in self.docs():
            for match in _REFERENCE.finditer(doc.read_text()):
                revision, path = match.group(1), match.group(2).rstrip(".")
                where = f"{doc.relative_to(ROOT)}: {match.group(0)}"
                checked += 1
                if revision is not None:
                    found = _git("cat-file", "-e", f"{revision}:{path}")
                    if _git("cat-file", "-e", f"{revision}^{{commit}}").returncode == 0:
                        self.assertEqual(found.returncode, 0, f"{where}: not in {revision}")
                    continue
                directory = path.rstrip("/") + "/"
                self.assertTrue(
                    path in self.tracked or any(p.startswith(directory) for p in self.tracked),
                    f"{where}: not kept in git",
                )
        self.assertGreater(checked, 5)

    def test_linksInSummariesResolve(self) -> None:
        """
        Every relative link or image in the kept Markdown files points at a
        file git keeps (the chart beside each summary, say).
        """
        links = 0
        for kept in sorted(self.tracked):
            if not kept.endswith(".md"):
                continue
            for target in _LINK.findall((ROOT / kept).read_text()):
                if "://" in target or target.startswith("#"):
                    continue
                resolved = (Path(kept).parent / target.split("#")[0]).as_posix()
                links += 1
                self.assertIn(resolved, self.tracked, f"{kept}: link to {target}")
        self.assertGreater(links, 0)

    def test_nothingRawIsKept(self) -> None:
        """
        Git keeps only tables and pictures under benchmarks/results, none of
        them naming this machine's paths.
        """
        self.assertIn(f"{RESULTS}/summary.md", self.tracked)
        self.assertIn(f"{RESULTS}/chart.svg", self.tracked)
        for kept in sorted(self.tracked):
            self.assertTrue(kept.endswith(SHOWN_SUFFIXES), f"{kept}: raw data kept in git")
            found = _ABSOLUTE.search((ROOT / kept).read_text())
            self.assertIsNone(found, f"{kept}: an absolute path: {found}")

    def test_runDirectoryIsIgnored(self) -> None:
        """
        What the harness writes by default for a run's raw data is ignored.
        """
        for path in ("benchmarks/runs/results.json", "benchmarks/runs/profiles/x.txt"):
            ignored = _git("check-ignore", "-q", "--no-index", path)
            self.assertEqual(ignored.returncode, 0, f"{path} is not ignored")
