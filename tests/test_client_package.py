"""
Tests for the L{tcpdemo.client} package as a whole: it stands on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tcpdemo.metrics import ServerMetrics
from tcpdemo.protocol import TcpDemoServerFactory
from tests.clientsupport import LOCALHOST, reactor
from tests.support import REPO_ROOT, subprocessEnv

#: Modules the client must not load: the server's, and the heavy libraries
#: only the server needs.  (tcpdemo.endpoints is not one: issue 13 means it
#: to be shared by the server and the client.)
SERVER_MODULES = (
    "prometheus_client",
    "twisted.web",
    "tcpdemo.protocol",
    "tcpdemo.tap",
    "tcpdemo.service",
    "tcpdemo.metrics",
    "tcpdemo.aggregation",
    "tcpdemo.supervisor",
    "tcpdemo.worker",
    "tcpdemo.workers",
    "tcpdemo.debug",
    "tcpdemo.handlers",
)


def loadedBy(statement: str) -> list[str]:
    """
    The modules a fresh interpreter has loaded after running C{statement}.
    """
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=subprocessEnv(),
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    modules: list[str] = json.loads(out)
    return modules


def serverModules(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES)]


class ImportIsolationTests(unittest.TestCase):
    def test_library(self) -> None:
        """
        C{import tcpdemo.client} loads none of the server's modules, nor
        prometheus_client or twisted.web.
        """
        modules = loadedBy("import tcpdemo.client")
        self.assertIn("tcpdemo.client.connection", modules)
        self.assertEqual(serverModules(modules), [])

    def test_loadClient(self) -> None:
        """
        Nor does the load client, command line included.
        """
        modules = loadedBy("import tcpdemo.client.cli, tcpdemo.client.__main__")
        self.assertIn("tcpdemo.client.load", modules)
        self.assertIn("tcpdemo.limits", modules)
        self.assertEqual(serverModules(modules), [])

    def test_probeSeesServerModules(self) -> None:
        """
        The probe would see them: importing the server loads them.
        """
        modules = loadedBy("import tcpdemo.tap")
        self.assertIn("prometheus_client", serverModules(modules))
        self.assertIn("tcpdemo.protocol", serverModules(modules))


class DocsExampleTests(unittest.TestCase):
    """
    The library example of docs/client.md runs as printed.
    """

    timeout = 60

    def test_example(self) -> Any:
        with open(os.path.join(REPO_ROOT, "docs", "client.md"), encoding="utf-8") as f:
            text = f.read()
        start = text.index("```python\n") + len("```python\n")
        example = text[start : text.index("```", start)]
        self.assertIn("from tcpdemo.client import", example)
        factory = TcpDemoServerFactory(metrics=ServerMetrics.create())
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        d = getProcessOutputAndValue(
            sys.executable,
            ["-c", example, f"tcp:{LOCALHOST}:{port.getHost().port}"],
            env=subprocessEnv(),
            path=REPO_ROOT,
            reactor=reactor,
        )

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual(code, 0, err)
            self.assertEqual(
                out.decode().splitlines(), ["hello -> 0", "1000 more, results: [0]"], err
            )

        return d.addCallback(check)
