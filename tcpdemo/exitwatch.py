"""
The last resort of a stop: a process whose reactor began to shut down and
that has not exited C{EXIT_MARGIN} seconds after its grace period kills
itself, saying so in one line.

The graceful stop (L{tcpdemo.tap.TcpDemoService.stopService}) bounds what
runs in the reactor -- batches at the handler, a C{stopHandler} Deferred --
by C{--grace-period}.  What it cannot bound runs outside it: a
C{stopHandler} that blocks the reactor thread, or a handler's work stuck in
a thread that the exit joins (Twisted's C{deferToThread} pool is joined as
the reactor shuts down; Python joins every non-daemon thread at exit).  A
hung backend must not keep a stopped server alive, so a daemon thread
watches the clock and ends the process with SIGKILL, as a supervisor would.
"""

from __future__ import annotations

import os
import signal
import threading

from twisted.logger import Logger

#: Seconds past --grace-period that twistd's own shutdown may take before
#: the process kills itself.  Less than the --workers parent's margin
#: (L{tcpdemo.supervisor.KILL_MARGIN}), so a stuck worker says why itself.
EXIT_MARGIN = 3.0

log = Logger()


def _stuck(seconds: float) -> None:
    log.critical(
        "still running {seconds}s after the stop began (--grace-period plus "
        "{margin}s): a handler's thread or stop hook blocks the exit; killing "
        "the process (SIGKILL)",
        seconds=seconds,
        margin=EXIT_MARGIN,
    )
    os.kill(os.getpid(), signal.SIGKILL)


def armExitWatchdog(gracePeriod: float) -> threading.Timer:
    """
    Kill this process C{gracePeriod} + L{EXIT_MARGIN} seconds from now,
    unless it has exited by then (the timer's thread is a daemon: it does
    not keep the process alive).
    """
    seconds = gracePeriod + EXIT_MARGIN
    timer = threading.Timer(seconds, _stuck, (seconds,))
    timer.daemon = True
    timer.name = "tcpdemo-exit-watchdog"
    timer.start()
    return timer
