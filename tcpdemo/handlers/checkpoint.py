"""
WAL checkpoints in a thread of their own, off the sqlite store's commits.

SQLite checkpoints a WAL database inside the commit that takes the WAL past
C{wal_autocheckpoint} pages (1000 by default): that commit copies the WAL
into the database file and fsyncs it, several milliseconds on which every
Submit of the commit, and every Submit queued behind it, waits: 3-7 ms
instead of ~0.4, once every ~220 commits of 100 rows.  Here a thread
checkpoints shortly after commits, in PASSIVE mode (it neither waits for
the writer nor makes it wait).  SQLite starts the WAL over only when a
writer begins a transaction after a checkpoint has copied all of it, so
when commits follow each other within a millisecond or two the WAL still
grows, to L{WRITER_AUTOCHECKPOINT} pages, where the writer's own automatic
checkpoint copies what is left and the WAL starts over.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from twisted.logger import Logger

#: Seconds from a commit to the checkpoint after it: the checkpoint covers
#: every commit made meanwhile.
CHECKPOINT_DELAY = 0.05
#: The writer connection's C{wal_autocheckpoint}, in pages (~16 MB of WAL
#: with 4 KiB pages): reached when commits come too close together for a
#: background checkpoint to finish between two of them.
WRITER_AUTOCHECKPOINT = 4_000
#: Seconds the connection waits for a lock (opening it); PASSIVE
#: checkpoints themselves never wait.
BUSY_TIMEOUT = 1.0

log = Logger()


class Checkpointer:
    """
    Checkpoints the WAL of the database at C{path} after commits
    (L{committed}), from a thread of its own with a connection of its own.
    """

    def __init__(self, path: str, reactor: Any, delay: float = CHECKPOINT_DELAY) -> None:
        self.path = path
        self.reactor = reactor
        self.delay = delay
        self._committed = threading.Event()
        self._stopping = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        #: Checkpoints run, and those that failed (for tests and the close line).
        self.checkpoints = 0
        self.failures = 0

    def start(self) -> None:
        """
        Open a connection (the database is already in WAL mode) and start
        the thread.
        """
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        thread = threading.Thread(target=self._run, name="tcpdemo-sqlite-checkpointer", daemon=True)
        try:
            # The database file is fsynced before the WAL may start over,
            # whatever this SQLite's default.
            self._db.execute("PRAGMA synchronous=FULL")
            thread.start()
        except BaseException:
            self._db.close()
            raise
        self._thread = thread

    def committed(self) -> None:
        """
        From the writer thread: a commit has returned.
        """
        self._committed.set()

    def stop(self) -> None:
        """
        Stop the thread (without a last checkpoint: closing the writer's
        connection, the last one, checkpoints everything) and close.
        """
        self._stopping.set()
        self._committed.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        db = self._db
        assert db is not None
        committed = self._committed
        stopping = self._stopping
        try:
            while True:
                committed.wait()
                if stopping.wait(self.delay):
                    return
                # Cleared first: a commit during the checkpoint asks for another.
                committed.clear()
                try:
                    self.checkpoint(db)
                    self.checkpoints += 1
                except sqlite3.Error as e:
                    self.failures += 1
                    if self.failures == 1:
                        # One line; the writer's backstop still bounds the WAL.
                        self.reactor.callFromThread(
                            log.warn,
                            "sqlite store {path}: background checkpoint failed ({error}); "
                            "commits will checkpoint past {pages} WAL pages",
                            path=self.path,
                            error=str(e),
                            pages=WRITER_AUTOCHECKPOINT,
                        )
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """
        One checkpoint, in the thread.
        """
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
