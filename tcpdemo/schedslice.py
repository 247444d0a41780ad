"""
Ask Linux for a short scheduler slice for the calling thread.

Since Linux 6.12 the fair scheduler (EEVDF) takes a per-thread slice from
C{sched_attr.sched_runtime} (clamped to 0.1-100 ms), and a thread with a
shorter slice than the running one preempts it when it wakes up: the
kernel's own means for "when this thread wakes, run it soon".  The
thread's weight (its nice value) is unchanged, so it gets no more CPU than
before, only sooner; no privilege is needed.

The sqlite store's writer thread asks for one: it sleeps in fsync, and when
the disk answers, the commit's Submits wait for it to be scheduled.  On a
CPU shared with a busy reactor thread (one pinned core, or more threads
than cores) that wait could last the reactor's whole slice, 1.4 ms by
default on the benchmark machine, longer than the fsync itself.

Python has no binding for C{sched_setattr(2)}, so this calls it through
ctypes.  Anywhere it cannot (another OS, a 32-bit process, an architecture
other than x86_64 and aarch64, an older kernel, a real-time or idle
policy, a scheduler other than the fair one) nothing changes and
L{requestSlice} says so.  Threads the thread starts later inherit its
slice.
"""

from __future__ import annotations

import platform
import struct
import sys
from typing import Any

#: (sched_setattr, sched_getattr) syscall numbers, by machine.
_SYSCALLS = {
    "x86_64": (314, 315),
    "aarch64": (274, 275),
}
#: struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice,
#: priority, runtime, deadline, period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
#: The policies whose slice is the fair scheduler's.
_FAIR_POLICIES = (0, 3)  # SCHED_OTHER, SCHED_BATCH
#: The one flag kept from what the thread has.
_SCHED_FLAG_RESET_ON_FORK = 0x01


def _syscalls() -> tuple[int, int] | None:
    """
    The syscall numbers, for a 64-bit process on Linux (platform.machine()
    names the kernel's architecture, not the process's ABI).
    """
    if not sys.platform.startswith("linux") or sys.maxsize <= 2**32:
        return None
    return _SYSCALLS.get(platform.machine())


def _fairThread() -> tuple[Any, Any, int, tuple[int, ...]] | None:
    """
    For a calling thread under the fair scheduler, on a kernel that
    reports its slice: ctypes, libc, the sched_setattr number and the
    thread's sched_attr.  Otherwise None.
    """
    numbers = _syscalls()
    if numbers is None:
        return None
    import ctypes

    libc = ctypes.CDLL(None)
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(numbers[1], 0, buffer, _ATTR.size, 0) != 0:
        return None
    attr = _ATTR.unpack(buffer.raw)
    if attr[1] not in _FAIR_POLICIES or not attr[5]:
        return None
    return ctypes, libc, numbers[0], attr


def currentSlice() -> float | None:
    """
    The calling thread's scheduler slice in seconds, or C{None} where the
    kernel does not report one (before 6.12, or not Linux).
    """
    try:
        thread = _fairThread()
    except Exception:
        return None
    return None if thread is None else float(thread[3][5]) / 1e9


def requestSlice(seconds: float) -> float | None:
    """
    Ask for a scheduler slice of C{seconds} for the calling thread, keeping
    its policy and nice value.  Returns the slice now in effect (the kernel
    clamps it), or C{None} if this kernel or thread has none to set.  It
    never raises: a slice is a hint, and its caller has work to do.
    """
    try:
        thread = _fairThread()
        if thread is None:
            return None
        ctypes, libc, setNumber, attr = thread
        policy, flags, nice = attr[1], attr[2] & _SCHED_FLAG_RESET_ON_FORK, attr[3]
        wanted = _ATTR.pack(_ATTR.size, policy, flags, nice, 0, int(seconds * 1e9), 0, 0, 0, 0)
        if libc.syscall(setNumber, 0, ctypes.create_string_buffer(wanted), 0) != 0:
            return None
        return currentSlice()
    except Exception:
        return None
