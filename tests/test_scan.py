"""
The compiled accelerator (tcpdemo/_scan.c) against its pure-Python
reference (tcpdemo/scan.py): the same decisions on every input, loaded on
every CPython the suite runs on, never on PyPy, and never required -- the
pure path serves when it is disabled or cannot be built.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpdemo import scan
from tcpdemo.frame import frame

from .support import REPO_ROOT, TwistdServer, ackFrame, recvExactly, submitFrame
from .test_fastpath import GeneralPath, anyFrame, streams

CPYTHON = platform.python_implementation() == "CPython"
#: Whether the accelerator must be in use here: on CPython, unless disabled.
EXPECTED = CPYTHON and not os.environ.get("TCPDEMO_NO_ACCEL")

#: Every edge of the length bound: around the smallest Submit frame (17),
#: the frame sizes the strategies make, int32's limits and beyond.
maxLengths = st.one_of(
    st.sampled_from(
        [-(2**63), -1, 0, 4, 5, 16, 17, 18, 20, 64, 2**20, 2**31 - 1, 2**31, 2**63, 2**70]
    ),
    st.integers(-5, 80),
)

if scan.ACCELERATED:
    from tcpdemo import _scan


def boundsAround(data: bytes) -> list[int]:
    """
    The length bounds that matter for C{data}: each frame's own length, one
    less and one more, for the frames a walk from its start finds.
    """
    bounds: list[int] = []
    offset = 0
    while offset + 4 <= len(data) and len(bounds) < 60:
        length = int.from_bytes(data[offset : offset + 4], "big", signed=True)
        bounds += [length - 1, length, length + 1]
        if length < 5:
            break
        offset += length
    return bounds


class LoadedTests(SynchronousTestCase):
    """
    CI must not pass on the fallback without saying so: on CPython (tox
    clears TCPDEMO_NO_ACCEL) the accelerator is built and in use.
    """

    def test_acceleratedWhereExpected(self) -> None:
        self.assertEqual(
            scan.ACCELERATED,
            EXPECTED,
            "tcpdemo._scan should be in use on CPython (build it: "
            "python setup.py build_ext --inplace) and never on PyPy",
        )
        if EXPECTED:
            self.assertIs(scan.submitAcks, _scan.submitAcks)
            self.assertIs(scan.acks, _scan.acks)
            self.assertIs(scan.scanSubmits, _scan.scanSubmits)
            self.assertEqual(_scan.MIN_RUN, scan.MIN_RUN)
        else:
            self.assertIs(
                scan.submitAcks, scan.pypySubmitAcks if scan.PYPY else scan.pureSubmitAcks
            )
            self.assertIs(scan.acks, scan.pureAcks)
            self.assertIs(scan.scanSubmits, scan.pureScanSubmits)

    def test_protocolUsesThem(self) -> None:
        """
        The server answers through the versions L{scan} chose.
        """
        from tcpdemo import protocol

        self.assertIs(protocol.submitAcks, scan.submitAcks)
        self.assertIs(getattr(protocol, "_acks"), scan.acks)  # noqa: B009

    def test_disabledByEnvironment(self) -> None:
        """
        With TCPDEMO_NO_ACCEL=1 at import, the pure versions are used, by
        the server too, on any interpreter (on PyPy, C{pypySubmitAcks}).
        """
        env = dict(os.environ, TCPDEMO_NO_ACCEL="1", PYTHONPATH=REPO_ROOT)
        check = (
            "from tcpdemo import protocol, scan\n"
            "assert not scan.ACCELERATED\n"
            "assert protocol.submitAcks is (\n"
            "    scan.pypySubmitAcks if scan.PYPY else scan.pureSubmitAcks\n"
            ")\n"
            "assert protocol._acks is scan.pureAcks\n"
            "print('pure')\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, timeout=60, check=False
        )
        self.assertEqual((out.returncode, out.stdout.strip()), (0, b"pure"), out.stderr)


def _implementations() -> list[tuple[str, scan._SubmitAcks, scan._Acks]]:
    """
    The pure versions (the reference first, then PyPy's, checked on every
    interpreter), and the compiled ones where they are loaded.
    """
    found: list[tuple[str, scan._SubmitAcks, scan._Acks]] = [
        ("pure", scan.pureSubmitAcks, scan.pureAcks),
        ("pypy", scan.pypySubmitAcks, scan.pureAcks),
    ]
    if scan.ACCELERATED:
        found.append(("compiled", _scan.submitAcks, _scan.acks))
    return found


def outcome(call: object, *args: object) -> object:
    """
    What C{call(*args)} returns, or the type of what it raises.
    """
    try:
        return call(*args)  # type: ignore[operator]
    except Exception as error:
        return type(error)


class EquivalenceTests(SynchronousTestCase):
    """
    The compiled functions and PyPy's C{pypySubmitAcks} make the decisions
    of the pure ones on every input (the compiled ones on CPython only;
    everywhere, all are checked against the general path too).
    """

    def setUp(self) -> None:
        if EXPECTED:
            self.assertTrue(scan.ACCELERATED)

    def assertSame(self, name: str, *args: object) -> None:
        """
        The pure and the compiled C{name} (C{acks} or C{submitAcks}) return
        or raise the same for C{args}.
        """
        index = {"submitAcks": 1, "acks": 2}[name]
        results = [outcome(found[index], *args) for found in _implementations()]
        self.assertEqual(results, [results[0]] * len(results), args)

    @given(
        streams,
        maxLengths,
        st.integers(0, 600),
        st.integers(1, 40),
    )
    def test_submitAcks(self, data: bytes, maxLength: int, start: int, minRun: int) -> None:
        """
        Same end, count and acks for any stream, bound, start and minRun.
        """
        pure = scan.pureSubmitAcks(data, maxLength, start, minRun)
        for _label, submitAcks, _ in _implementations():
            self.assertEqual(submitAcks(data, maxLength, start, minRun), pure)
            if not start:
                self.assertEqual(submitAcks(data, maxLength), pure)
            for bound in boundsAround(data):
                self.assertEqual(
                    submitAcks(data, bound, 0, minRun),
                    scan.pureSubmitAcks(data, bound, 0, minRun),
                    bound,
                )

    @given(streams, maxLengths)
    def test_agreesWithGeneralPath(self, data: bytes, maxLength: int) -> None:
        """
        Both answer what the frame layer and decode would, and stop where
        the first other frame starts.
        """
        general = GeneralPath(maxLength)
        general.dataReceived(data)
        expected = (
            general.consumed,
            len(general.ids),
            b"".join(ackFrame(i) for i in general.ids),
        )
        for _label, submitAcks, _ in _implementations():
            self.assertEqual(submitAcks(data, maxLength), expected)

    @given(
        st.lists(anyFrame, max_size=10).map(b"".join),
        st.lists(st.builds(submitFrame, st.binary(min_size=8, max_size=8), st.binary(max_size=30))),
        st.lists(anyFrame, max_size=5).map(b"".join),
    )
    def test_startOffsets(self, before: bytes, submits: list[bytes], after: bytes) -> None:
        """
        From a start offset, what lies before it is never looked at.
        """
        data = before + b"".join(submits) + after
        alone = scan.pureSubmitAcks(b"".join(submits) + after, 1 << 20)
        for _label, submitAcks, _ in _implementations():
            end, count, acks = submitAcks(data, 1 << 20, len(before))
            self.assertEqual((end - len(before), count, acks), alone)

    @given(st.integers(-(2**64), -1), st.integers(-(2**64), 0))
    def test_badArguments(self, start: int, minRun: int) -> None:
        """
        A negative start or a minRun below 1 is refused alike.
        """
        data = submitFrame(b"12345678", b"x") * 3
        for args in [(data, 99, start), (data, 99, 0, minRun)]:
            self.assertSame("submitAcks", *args)
            self.assertEqual(outcome(scan.pureSubmitAcks, *args), ValueError)

    def test_wrongTypes(self) -> None:
        """
        Refused with TypeError: bytes are required, and ints for the bounds.
        """
        data = submitFrame(b"12345678", b"x")
        for args in [
            (bytearray(data), 99),
            (memoryview(data), 99),
            (data, 99.0),
            (data, "99"),
            (data, 99, 0.0),
            (data,),
            (data, 99, 0, 16, 0),
        ]:
            for label, submitAcks, _ in _implementations():
                if label == "compiled":
                    self.assertEqual(outcome(submitAcks, *args), TypeError, args)
        for _label, _, acks in _implementations():
            self.assertEqual(outcome(acks, [b"12345678", "12345678"]), TypeError)
            self.assertEqual(outcome(acks, None), TypeError)

    @given(streams, maxLengths, st.integers(0, 600), st.lists(st.binary(max_size=8), max_size=3))
    def test_scanSubmits(
        self, data: bytes, maxLength: int, start: int, already: list[bytes]
    ) -> None:
        """
        The scanner of the handler path: the same end and the same ids
        appended after what the list held, for any stream, bound and start.
        """
        for bound, begin in [(maxLength, start)] + [(b, 0) for b in boundsAround(data)]:
            results = []
            for scanner in self.scanners():
                ids = list(already)
                results.append((outcome(scanner, data, bound, ids, begin), ids))
            self.assertEqual(results, [results[0]] * len(results), (bound, begin))

    def test_scanSubmitsArguments(self) -> None:
        """
        Refused alike: a negative start; and by the compiled one, anything
        but bytes, an int bound and a list.
        """
        data = submitFrame(b"12345678", b"x")
        for scanner in self.scanners():
            self.assertEqual(outcome(scanner, data, 99, [], -1), ValueError)
        for scanner in self.scanners()[1:]:
            for args in [
                (bytearray(data), 99, []),
                (data, 99.0, []),
                (data, 99, ()),
                (data, 99, [], 0.0),
                (data, 99),
            ]:
                self.assertEqual(outcome(scanner, *args), TypeError, args)

    def scanners(self) -> list[scan._ScanSubmits]:
        found: list[scan._ScanSubmits] = [scan.pureScanSubmits]
        if scan.ACCELERATED:
            found.append(_scan.scanSubmits)
        return found

    @given(st.lists(st.binary(max_size=20), max_size=40))
    def test_acks(self, ids: list[bytes]) -> None:
        """
        The same bytes for any ids, of any length, and none.
        """
        self.assertSame("acks", ids)
        self.assertSame("acks", tuple(ids))

    @given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=40))
    def test_acksAreSubmitAcks(self, ids: list[bytes]) -> None:
        for _label, _, acks in _implementations():
            self.assertEqual(acks(ids), b"".join(ackFrame(i) for i in ids))

    def test_largeRead(self) -> None:
        """
        A whole 64 KiB read of varied Submits, then a partial frame.
        """
        data = b"".join(submitFrame(b"%08d" % i, b"c" * (15 + i % 16)) for i in range(1800))
        partial = frame(b"\x02" + b"9" * 8 + b"tail")[:-2]
        expected = (len(data), 1800, b"".join(ackFrame(b"%08d" % i) for i in range(1800)))
        for _label, submitAcks, _ in _implementations():
            self.assertEqual(submitAcks(data + partial, 1 << 20), expected)


def _copyProject(into: str) -> str:
    """
    The files a build reads, copied to C{into}: builds write into the tree.
    """
    tree = os.path.join(into, "src")
    os.mkdir(tree)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), tree)
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "dropin.cache")
    for name in ("tcpdemo", "twisted"):
        shutil.copytree(os.path.join(REPO_ROOT, name), os.path.join(tree, name), ignore=ignore)
    return tree


class WheelTests(SynchronousTestCase):
    """
    The wheel builds offline (no build isolation: the env's setuptools),
    with the accelerator on CPython, and without a C compiler too.
    """

    def buildWheel(self, compiler: str | None) -> tuple[list[str], str]:
        work = tempfile.mkdtemp(prefix="tcpdemo-wheel-")
        self.addCleanup(shutil.rmtree, work, True)
        tree = _copyProject(work)
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        if compiler is not None:
            env["CC"] = compiler
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
            + ["--wheel-dir", os.path.join(work, "dist"), tree],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        output = (build.stdout + build.stderr).decode(errors="replace")
        self.assertEqual(build.returncode, 0, output[-3000:])
        (wheel,) = os.listdir(os.path.join(work, "dist"))
        with zipfile.ZipFile(os.path.join(work, "dist", wheel)) as archive:
            names = archive.namelist()
            archive.extractall(os.path.join(work, "installed"))
        self.installed = os.path.join(work, "installed")
        return names, output

    def importedFrom(self, where: str) -> bytes:
        """
        Import tcpdemo from C{where} alone and answer a varied read with it.
        """
        check = (
            "import tcpdemo.scan as s, sys\n"
            f"assert s.__file__.startswith({where!r}), s.__file__\n"
            "d = b''.join(b'\\x00\\x00\\x00' + bytes([13 + n]) + b'\\x02' + b'%08d' % n"
            " + b'x' * n for n in range(20))\n"
            "end, count, acks = s.submitAcks(d, 1 << 20)\n"
            "assert (end, count, len(acks)) == (len(d), 20, 280), (end, count)\n"
            "print('accelerated' if s.ACCELERATED else 'pure')\n"
        )
        env = dict(os.environ, PYTHONPATH=where)
        env.pop("TCPDEMO_NO_ACCEL", None)
        out = subprocess.run(
            [sys.executable, "-c", check],
            env=env,
            cwd=where,
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.strip()

    def test_withCompiler(self) -> None:
        names, output = self.buildWheel(None)
        extensions = [n for n in names if n.startswith("tcpdemo/_scan") and n.endswith(".so")]
        self.assertEqual(len(extensions), 1 if CPYTHON else 0, (names, output[-2000:]))
        self.assertEqual(self.importedFrom(self.installed), b"accelerated" if CPYTHON else b"pure")

    def test_withoutCompiler(self) -> None:
        """
        C{CC=/bin/false}: the build says so and goes on, pure Python.
        """
        names, output = self.buildWheel("/bin/false")
        self.assertEqual([n for n in names if n.endswith(".so")], [])
        self.assertIn("tcpdemo/scan.py", names)
        if CPYTHON:
            self.assertIn("pure-Python fallback is used", output)
        self.assertEqual(self.importedFrom(self.installed), b"pure")


class FallbackServerTests(TestCase):
    """
    A real C{twistd -n tcpdemo} with the accelerator disabled answers
    Submits of varied sizes, split anywhere, exactly as promised.
    """

    def test_pureServerAnswers(self) -> None:
        work = tempfile.mkdtemp(prefix="tcpdemo-pure-")
        self.addCleanup(shutil.rmtree, work, True)
        saved = os.environ.get("TCPDEMO_NO_ACCEL")
        os.environ["TCPDEMO_NO_ACCEL"] = "1"
        try:
            server = TwistdServer(work)
        finally:
            if saved is None:
                del os.environ["TCPDEMO_NO_ACCEL"]
            else:
                os.environ["TCPDEMO_NO_ACCEL"] = saved
        self.addCleanup(server.kill)
        data = b"".join(submitFrame(b"%08d" % i, b"v" * (15 + i % 16)) for i in range(3000))
        with server.connect() as sock:
            for cut in range(0, len(data), 7001):
                sock.sendall(data[cut : cut + 7001])
            got = recvExactly(sock, 14 * 3000)
            sock.shutdown(socket.SHUT_WR)
        self.assertEqual(got, b"".join(ackFrame(b"%08d" % i) for i in range(3000)))
