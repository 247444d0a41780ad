"""
Start-up errors of the real C{twistd -n tcpdemo}: every bad endpoint, an
address in use, a missing TLS file and every bad option value end the
process with one line on standard error, no traceback, no usage text, and a
non-zero status (on every Twisted, including those whose twistd exits 0
after a usage error).  Plus the messages of the options themselves.
"""

from __future__ import annotations

import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo import tap

from .support import LOOPBACK, subprocessEnv, twistdCommand
from .test_security import makeCertificate


class StartupErrorTests(SynchronousTestCase):
    def workdir(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def runTwistd(
        self, args: list[str], logfile: bool = True, workdir: str | None = None
    ) -> tuple[int, list[str], str, str]:
        """
        Run C{twistd -n tcpdemo ARGS} (metrics off and loopback port 0
        unless ARGS say otherwise) to its end: its status, its standard
        error's lines, its standard output and its log.
        """
        if workdir is None:
            workdir = self.workdir()
        log = os.path.join(workdir, "twistd.log")
        defaults = ["--port", f"tcp:0:interface={LOOPBACK}", "--metrics", "none"]
        done = subprocess.run(
            twistdCommand()
            + ["-n", "--pidfile="]
            + (["--logfile", log] if logfile else [])
            + ["tcpdemo", *defaults, *args],
            cwd=workdir,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            # Generous: four at a time, on a shared 2-core machine.
            timeout=180,
        )
        text = ""
        if os.path.exists(log):
            with open(log, encoding="utf-8", errors="replace") as f:
                text = f.read()
        stderr = done.stderr.decode("utf-8", "replace")
        return done.returncode, stderr.splitlines(), done.stdout.decode(errors="replace"), text

    def checkOneLine(
        self,
        args: list[str],
        outcome: tuple[int, list[str], str, str],
        expected: tuple[str, ...],
        early: bool = True,
    ) -> str:
        """
        twistd with C{args} exited non-zero, having written one line to
        standard error that names the problem (each of C{expected}), and
        no traceback or usage text anywhere; if C{early}, before it
        listened on anything.
        """
        status, lines, stdout, log = outcome
        shown = f"{args}: status {status}, stderr {lines!r}, stdout {stdout[-500:]!r}"
        self.assertNotEqual(status, 0, shown)
        self.assertEqual(len(lines), 1, shown)
        line = lines[0]
        self.assertTrue(line.startswith("twistd tcpdemo: "), shown)
        for text in expected:
            self.assertIn(text, line, shown)
        for output in (line, stdout, log):
            self.assertNotIn("Traceback", output, shown)
            self.assertNotIn("Usage:", output, shown)
        if early:
            self.assertNotIn("listening on", log, shown)
        return line

    def assertOneLine(self, args: list[str], *expected: str, early: bool = True) -> str:
        return self.checkOneLine(args, self.runTwistd(args), expected, early)

    def assertEachOneLine(self, cases: list[tuple[list[str], tuple[str, ...]]]) -> None:
        """
        L{checkOneLine} (early) for each of C{cases}, (args, expected),
        four twistd processes at a time.
        """
        # Made here: trial's mktemp is not safe to call from several threads.
        workdirs = [self.workdir() for _ in cases]
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(
                pool.map(
                    lambda case, workdir: self.runTwistd(case[0], workdir=workdir),
                    cases,
                    workdirs,
                )
            )
        for (args, expected), outcome in zip(cases, outcomes):
            self.checkOneLine(args, outcome, expected)

    def test_badEndpoints(self) -> None:
        """
        Endpoints that do not parse, ports out of range, missing TLS files:
        refused while the options are parsed, before anything listens.
        """
        directory = self.workdir()
        key, certificate = makeCertificate(directory)
        missing = os.path.join(directory, "missing.pem")
        garbage = os.path.join(directory, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a key\n")
        tls = "ssl:0:interface=127.0.0.1"
        cases: list[tuple[list[str], tuple[str, ...]]] = []
        for option in ("--port", "--metrics"):
            cases += [
                ([option, "garbage"], (option, "'garbage'", "tcp:8888")),
                ([option, "tcp:99999"], (option, "99999", "65535")),
                ([option, "tcp:eighty"], (option, "not a valid endpoint")),
                ([option, "tcp:80:colour=blue"], (option, "colour")),
            ]
        cases += [
            (["--debug", "tcp:99999:interface=127.0.0.1"], ("--debug", "99999", "65535")),
            (["--debug", "garbage"], ("--debug", "garbage")),
            (
                ["--port", f"{tls}:privateKey={missing}:certKey={certificate}"],
                ("--port", "cannot read", missing, "No such file"),
            ),
            (
                ["--port", f"{tls}:privateKey={key}:certKey={missing}"],
                ("--port", "cannot read", missing),
            ),
            (
                ["--port", f"{tls}:privateKey={garbage}:certKey={certificate}"],
                ("--port", "private key"),
            ),
        ]
        self.assertEachOneLine(cases)

    def test_cannotListen(self) -> None:
        """
        An address in use (for each listener, and for the parent of
        workers), or one this host does not have: one line each, when the
        listeners start.
        """
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            port = taken.getsockname()[1]
            endpoint = f"tcp:{port}:interface={LOOPBACK}"
            for args in (
                ["--port", endpoint],
                ["--metrics", endpoint],
                ["--debug", endpoint],
                ["--workers", "2", "--port", endpoint],
                ["--workers", "2", "--metrics", endpoint],
            ):
                line = self.assertOneLine(
                    args,
                    args[-2],
                    f"127.0.0.1:{port}",
                    "address already in use",
                    "choose another port",
                    early=False,
                )
                self.assertNotIn("backlog", line)
        self.assertOneLine(
            ["--port", "tcp:0:interface=192.0.2.1"], "--port", "192.0.2.1", "no interface"
        )
        self.assertOneLine(
            ["--metrics", "unix:/nonexistent/tcpdemo/metrics.sock"],
            "--metrics",
            "directory",
            early=False,
        )

    def test_cannotListenLogged(self) -> None:
        """
        Without --logfile twistd logs to standard output: the error is still
        one line on standard error, and the log has it once too.
        """
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            port = taken.getsockname()[1]
            status, lines, stdout, _ = self.runTwistd(
                ["--port", f"tcp:{port}:interface={LOOPBACK}"], logfile=False
            )
        self.assertEqual(status, 1)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("address already in use", lines[0])
        self.assertEqual(stdout.count("address already in use"), 1, stdout)
        self.assertNotIn("Traceback", stdout)

    def test_badValues(self) -> None:
        """
        Every bad option value: the option, the value and what it must be.
        """
        cases: list[tuple[list[str], tuple[str, ...]]] = [
            (args, (args[0], args[1], expected))
            for args, expected in (
                (["--max-frame-length", "-5"], "from 5 to 2147483647"),
                (["--max-frame-length", "lots"], "from 5 to 2147483647"),
                (["--workers", "0"], "a positive integer or 'auto'"),
                (["--workers", "many"], "a positive integer or 'auto'"),
                (["--max-connections", "-1"], ">= 0"),
                (["--idle-timeout", "soon"], "a number >= 0"),
                (["--idle-timeout", "nan"], "a number >= 0"),
                (["--write-buffer-limit", "0"], "a positive integer"),
                (["--backlog", "x"], "a positive integer"),
                (["--grace-period", "-1"], ">= 0"),
                (["--worker-sockets", "both"], "reuseport, shared"),
            )
        ]
        cases += [
            (["--no-such-option"], ("--no-such-option", "--help")),
            (["--auth-token-file", "/nonexistent/token"], ("--auth-token-file", "/nonexistent")),
            (["--workers", "2", "--port", "unix:/tmp/tcpdemo.sock"], ("--workers", "tcp")),
        ]
        self.assertEachOneLine(cases)

    def test_helpStillPrintsUsage(self) -> None:
        status, lines, stdout, _ = self.runTwistd(["--help"])
        self.assertEqual(status, 0)
        self.assertIn("Usage: twistd [options] tcpdemo [options]", stdout)
        self.assertIn("--max-frame-length", stdout)
        self.assertEqual(lines, [])


class OptionMessageTests(SynchronousTestCase):
    """
    The library's options raise L{usage.UsageError}s that name the option.
    """

    def message(self, *args: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(list(args))
        return str(caught.exception)

    def test_coercedValuesNameTheOption(self) -> None:
        self.assertEqual(
            self.message("--workers", "0"),
            "--workers '0': must be a positive integer or 'auto', not '0'",
        )
        self.assertEqual(
            self.message("--max-frame-length", "-5"),
            "--max-frame-length '-5': must be an integer from 5 to 2147483647, not -5",
        )
        self.assertIn("--idle-timeout 'x'", self.message("--idle-timeout", "x"))
        self.assertIn("--metrics 'tcp:99999'", self.message("-m", "tcp:99999"))

    def test_endpointsParsedEarly(self) -> None:
        self.assertIn("out of range", self.message("--port", "tcp:65536"))
        self.assertIn("not a valid endpoint", self.message("--port", "tcp:"))
        for good in ("tcp:0", "tcp:65535", "unix:/tmp/x.sock", "tcp6:0:interface=\\:\\:1"):
            tap.Options().parseOptions(["--port", good])
