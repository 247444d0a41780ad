"""
tcpdemo.schedslice: a short scheduler slice for one thread, through the
real sched_setattr(2) of the kernel the tests run on.

Each test changes only a thread of its own, never the test runner's.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import threading
from typing import Any, Callable, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.schedslice import currentSlice, requestSlice

T = TypeVar("T")

#: The kernel's bounds for a fair thread's slice (seconds).
SHORTEST = 0.0001
LONGEST = 0.1
#: SCHED_IDLE and SCHED_BATCH, which PyPy's os module does not name.
SCHED_IDLE = getattr(os, "SCHED_IDLE", 5)
SCHED_BATCH = getattr(os, "SCHED_BATCH", 3)


def inThread(function: Callable[[], T]) -> T:
    """
    Call C{function} in a new thread and return what it returned.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result


def kernelHasSlices() -> bool:
    """
    Whether this kernel must honour a fair thread's slice: Linux 6.12 or
    later on a machine whose syscall numbers the module knows.  Checked
    from the version, not from the module, so that a module that stopped
    working fails here instead of passing as "unsupported".
    """
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return False
    if sys.maxsize <= 2**32:
        return False
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    assert version is not None, platform.release()
    return (int(version.group(1)), int(version.group(2))) >= (6, 12)


class RequestSliceTests(SynchronousTestCase):
    def test_callingThreadOnly(self) -> None:
        """
        The calling thread gets the slice asked for; the others keep the
        kernel's default.
        """
        before, granted, after = inThread(
            lambda: (currentSlice(), requestSlice(0.0002), currentSlice())
        )
        if not kernelHasSlices():
            self.assertIsNone(granted)
            return
        assert before is not None
        self.assertAlmostEqual(granted, 0.0002)
        self.assertAlmostEqual(after, 0.0002)
        self.assertNotAlmostEqual(before, 0.0002)
        self.assertAlmostEqual(currentSlice(), before)
        self.assertAlmostEqual(inThread(currentSlice), before)

    def test_clampedByTheKernel(self) -> None:
        """
        What the kernel grants is returned, not what was asked.
        """
        tiny = inThread(lambda: requestSlice(1e-6))
        huge = inThread(lambda: requestSlice(10.0))
        if not kernelHasSlices():
            self.assertEqual((tiny, huge), (None, None))
            return
        self.assertAlmostEqual(tiny, SHORTEST)
        self.assertAlmostEqual(huge, LONGEST)

    def test_keepsTheNiceValue(self) -> None:
        """
        A thread run at a lower priority (a higher nice value) keeps it:
        the slice changes when the thread runs, not how much.
        """

        def niceThenSlice() -> tuple[int, float | None, int]:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, 7)
            granted = requestSlice(SHORTEST)
            return 7, granted, os.getpriority(os.PRIO_PROCESS, tid)

        niced, granted, nice = inThread(niceThenSlice)
        self.assertEqual(nice, niced)
        if kernelHasSlices():
            self.assertAlmostEqual(granted, SHORTEST)

    def underPolicy(self, policy: int) -> tuple[float | None, int]:
        """
        In a new thread switched to C{policy}: what L{requestSlice} granted,
        and the thread's policy after it.
        """

        def policyThenSlice() -> tuple[float | None, int]:
            os.sched_setscheduler(0, policy, os.sched_param(0))
            return requestSlice(SHORTEST), os.sched_getscheduler(0)

        return inThread(policyThenSlice)

    def test_idleThreadUnchanged(self) -> None:
        """
        A thread under SCHED_IDLE has no fair slice to shorten: nothing is
        changed and None says so.
        """
        if not sys.platform.startswith("linux"):
            self.assertIsNone(inThread(lambda: requestSlice(SHORTEST)))
            return
        self.assertEqual(self.underPolicy(SCHED_IDLE), (None, SCHED_IDLE))

    def test_batchThreadKeepsItsPolicy(self) -> None:
        """
        A SCHED_BATCH thread gets the slice and stays SCHED_BATCH.
        """
        if not sys.platform.startswith("linux"):
            return  # no SCHED_BATCH: test_idleThreadUnchanged covers the rest
        granted, policy = self.underPolicy(SCHED_BATCH)
        self.assertEqual(policy, SCHED_BATCH)
        if kernelHasSlices():
            self.assertAlmostEqual(granted, SHORTEST)
        else:
            self.assertIsNone(granted)

    def test_neverRaises(self) -> None:
        """
        A slice is a hint: values the kernel's struct cannot hold give None,
        not an exception in the thread that asked.
        """
        for seconds in (-1.0, float("nan"), float("inf"), 2.0**64):
            self.assertIsNone(inThread(lambda: requestSlice(seconds)), seconds)  # noqa: B023
