"""
The shape of tcpdemo's imports: no module is part of an import cycle, and
listing twistd plugins loads none of the server.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO_ROOT, subprocessEnv

PACKAGE = "tcpdemo"

#: What listing plugins must not import: the server and its heavy libraries.
SERVER_MODULES = (
    "prometheus_client",
    "twisted.web",
    "tcpdemo.protocol",
    "tcpdemo.tap",
    "tcpdemo.metrics",
    "tcpdemo.supervisor",
    "tcpdemo.worker",
    "tcpdemo.debug",
)


def moduleFiles() -> dict[str, str]:
    """
    Every module of the package, by dotted name, with its file.
    """
    modules = {}
    top = os.path.join(REPO_ROOT, PACKAGE)
    for directory, _, files in os.walk(top):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, REPO_ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _isTypeChecking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, module: str, isPackage: bool) -> Iterator[str]:
    """
    The modules that C{node}'s run-time imports name: at any depth (a lazy
    import inside a function hides a cycle, it does not remove it), but not
    under C{if TYPE_CHECKING:}, which never runs.
    """
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _isTypeChecking(child):
            yield from (i for n in child.orelse for i in _imports(n, module, isPackage))
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                parts = module.split(".")
                keep = len(parts) - child.level + (1 if isPackage else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in child.names)
        yield from _imports(child, module, isPackage)


def importGraph() -> dict[str, set[str]]:
    """
    Module -> the package's modules it imports.
    """
    modules = moduleFiles()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        isPackage = path.endswith("__init__.py")
        graph[module] = {
            name for name in _imports(tree, module, isPackage) if name in modules and name != module
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected components of more than one module (Tarjan).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in onStack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportCycleTests(SynchronousTestCase):
    def test_noCycles(self) -> None:
        """
        No module of tcpdemo imports, directly or through others, a module
        that imports it, lazy imports included.
        """
        graph = importGraph()
        self.assertIn("tcpdemo.tap", graph)
        self.assertEqual(cycles(graph), [])

    def test_cyclesAreFound(self) -> None:
        """
        The check finds a cycle hidden behind a lazy import.
        """
        self.assertEqual(
            cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]]
        )
        tree = ast.parse("def f():\n    from tcpdemo import tap\n")
        self.assertIn("tcpdemo.tap", set(_imports(tree, "tcpdemo.x", False)))
        hidden = ast.parse("if TYPE_CHECKING:\n    from tcpdemo.tap import Options\n")
        self.assertEqual(set(_imports(hidden, "tcpdemo.x", False)), set())


class PluginWeightTests(SynchronousTestCase):
    def test_listingPluginsLoadsNoServer(self) -> None:
        """
        Listing twistd's plugins (as C{twistd --help} does) finds tcpdemo
        and imports none of the server modules or their libraries.
        """
        script = (
            "import sys\n"
            "from twisted.plugin import IPlugin, getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [m.tapname for m in getPlugins(IServiceMaker)]\n"
            "list(getPlugins(IPlugin))\n"
            "print('tcpdemo' in names)\n"
            f"heavy = {SERVER_MODULES!r}\n"
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", script],
            env=subprocessEnv(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        self.assertEqual(output, ["True", "[]"])
