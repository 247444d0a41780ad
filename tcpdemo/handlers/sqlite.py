"""
C{--handler sqlite:PATH}: the embedded durable store.

Every Submit is inserted into the table C{submits} of the SQLite file PATH
(journal_mode=WAL, synchronous=FULL: a commit has reached the disk when it
returns), and acked with result 0 only once its commit has returned.

Commits run in one writer thread, never in the reactor: the batches of one
reactor turn -- from every connection -- and those handed over while a
commit runs wait in one queue and go into the next transaction together
(group commit), so one fsync serves as many Submits as arrived meanwhile.
Results come back through a L{ReadyQueue}: at the end of the server's next
read, or the reactor's next turn, whichever is first.  WAL checkpoints run
in a thread of their own (L{tcpdemo.handlers.checkpoint}), not inside a
commit, whose Submits would wait for them.  A commit that fails
(disk full, I/O error, a locked or corrupt file) gives its batches result
1; the server keeps serving.

Schema (docs/handlers.md, "The sqlite store")::

    CREATE TABLE submits (
        seq      INTEGER PRIMARY KEY,  -- arrival order (the rowid)
        id       BLOB NOT NULL,        -- the Submit's 8-byte id
        payload  BLOB NOT NULL,        -- its payload, as received
        received REAL NOT NULL,        -- when the server read it (epoch s)
        peer     TEXT NOT NULL,        -- the client, host:port
        conn     INTEGER NOT NULL      -- the connection's number in its server process
    )
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpdemo.frame import HEADER_SIZE, LENGTH
from tcpdemo.handlers import (
    HandlerArgumentError,
    IDeliversReady,
    IHandlesTurns,
    ISubmitHandler,
    Results,
    SubmitBatch,
)
from tcpdemo.handlers.checkpoint import WRITER_AUTOCHECKPOINT, Checkpointer
from tcpdemo.handlers.ready import ReadyQueue
from tcpdemo.packet import ID_SIZE
from tcpdemo.schedslice import requestSlice

SCHEMA = """
CREATE TABLE IF NOT EXISTS submits (
    seq      INTEGER PRIMARY KEY,
    id       BLOB NOT NULL,
    payload  BLOB NOT NULL,
    received REAL NOT NULL,
    peer     TEXT NOT NULL,
    conn     INTEGER NOT NULL
)
"""

log = Logger()

_COLUMNS = 5
_INSERT = "INSERT INTO submits (id, payload, received, peer, conn) VALUES "

#: Rows per INSERT statement: as many as SQLite's limit on bound variables
#: allows (32766 since 3.32, 999 before).  One statement inserts them in
#: one step, so the writer thread leaves and re-takes the GIL once per
#: chunk rather than once per row -- under load, every such hand-over waits
#: for the reactor thread, and per row that capped the store at a fifth of
#: its speed.
CHUNK = 1000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 199


def insertStatement(rowCount: int) -> str:
    """
    An INSERT of C{rowCount} rows of bound values.
    """
    return _INSERT + ",".join(["(?,?,?,?,?)"] * rowCount)


_INSERT_CHUNK = insertStatement(CHUNK)

#: Seconds a commit waits for a lock held by another process (a reader
#: checkpointing, say) before it fails with "database is locked".
BUSY_TIMEOUT = 10.0

_ID_START = HEADER_SIZE + 1
_unpackLength = LENGTH.unpack_from


def openStore(path: str) -> sqlite3.Connection:
    """
    Open (creating if need be) the store at C{path} for writing.
    """
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(SCHEMA)
        db.commit()
    except BaseException:
        db.close()
        raise
    return db


def addRows(batch: SubmitBatch, values: list[object]) -> None:
    """
    Append the column values of C{batch}'s rows, one row per Submit in
    order, flat (five values a row), to C{values}.
    """
    data = batch.frames
    received = batch.received
    peer = batch.peer
    connection = batch.connection
    extend = values.extend
    offset = 0
    size = len(data)
    while offset < size:
        (length,) = _unpackLength(data, offset)
        start = offset + _ID_START
        end = start + ID_SIZE
        offset += length
        extend((data[start:end], data[end:offset], received, peer, connection))


def insertRows(db: sqlite3.Connection, values: list[object]) -> None:
    """
    Insert the flat C{values} (see L{addRows}) in statements of L{CHUNK} rows.
    """
    width = CHUNK * _COLUMNS
    total = len(values)
    full = total - total % width
    if full:
        db.executemany(_INSERT_CHUNK, [values[i : i + width] for i in range(0, full, width)])
    if full < total:
        db.execute(insertStatement((total - full) // _COLUMNS), values[full:])


#: The writer thread's scheduler slice, asked of Linux (L{requestSlice}):
#: when an fsync returns, the commit's Submits wait for the writer to be
#: scheduled, which on a CPU shared with a busy reactor thread took up to
#: the reactor's default slice.  The kernel's minimum.
WRITER_SLICE = 0.0001


#: Bytes of Submit frames queued for (or in) a commit, at most.  The
#: server's bounds (--max-pending-bytes, 64 MiB by default) keep the queue
#: well below this while commits return.  This is for a commit that does
#: not: its batches time out (result 2) and stop counting against the
#: server's bounds but stay queued, so a hung disk would otherwise grow the
#: queue without end.  Past it, batches get result 1 at once.
MAX_QUEUED_BYTES = 256 * 1024 * 1024


class StoreBacklogged(Exception):
    """
    The store holds L{MAX_QUEUED_BYTES} of Submits its commits have not
    taken yet: its disk is not keeping up, or hangs.
    """


#: What one call hands over: its batches, their frames' bytes, its Deferred.
_Work = tuple[Sequence[SubmitBatch], int, "Deferred[Results]"]
_Done = tuple[list[_Work], Optional[BaseException]]


@implementer(ISubmitHandler, IHandlesTurns, IDeliversReady)
class SqliteHandler:
    """
    Stores each batch, acking it once its (group) commit has returned.
    """

    def __init__(self, path: str, reactor: Any, maxQueuedBytes: int = MAX_QUEUED_BYTES) -> None:
        self.path = path
        self.reactor = reactor
        self.maxQueuedBytes = maxQueuedBytes
        #: Bytes of the frames queued or in a commit not yet delivered
        #: (changed only in the reactor thread).
        self.queuedBytes = 0
        self._db: sqlite3.Connection | None = None
        self._condition = threading.Condition()
        #: Calls' batches for the next commit: appended in the reactor
        #: thread, taken in the writer (deque's append and popleft are atomic).
        self._queue: deque[_Work] = deque()
        self._stopping = False
        #: The reactor's call of L{_wake} at the end of this turn, if any.
        self._wakeCall: Any = None
        self._thread: threading.Thread | None = None
        self._checkpointer: Checkpointer | None = None
        self._stopped: Deferred[None] | None = None
        #: Commits done, on their way back to the reactor thread.
        self._done: ReadyQueue[_Done] = ReadyQueue(reactor, self._deliverDone)
        self.deliverReady = self._done.deliverReady
        #: Commits made and rows stored, for tests and curiosity.
        self.commits = 0
        self.stored = 0
        #: The writer thread's scheduler slice in seconds once it runs, or
        #: None where the kernel has no per-thread slice (L{WRITER_SLICE}).
        self.writerSlice: float | None = None

    def startHandler(self) -> None:
        db = self._db = openStore(self.path)
        checkpointer: Checkpointer | None = None
        try:
            db.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
            checkpointer = self._checkpointer = Checkpointer(self.path, self.reactor)
            checkpointer.start()
            self._stopped = Deferred()
            self._thread = threading.Thread(
                target=self._writer, name="tcpdemo-sqlite-writer", daemon=True
            )
            self._thread.start()
        except BaseException:
            # Nothing of a store that did not start is left running or open.
            if checkpointer is not None:
                checkpointer.stop()
            db.close()
            self._db = self._checkpointer = self._thread = self._stopped = None
            raise

    def handle(self, batch: SubmitBatch) -> Deferred[Results]:
        """
        Queue C{batch} for the next commit.

        An idle writer is woken once per turn, when the reactor has read
        every connection that was ready, not at the first batch (a writer
        finishing a commit takes what is queued at once, mid-turn): each commit
        costs ~0.1 ms of CPU whatever it holds (the fsync's share of it in
        the kernel), so waking at once gave request/response load commits
        of a few rows, the writer taking the server's CPU from its reactor.
        """
        d = self._enqueue((batch,))
        if self._wakeCall is None:
            self._wakeCall = self.reactor.callLater(0, self._wake)
        return d

    def handleTurn(self, batches: Sequence[SubmitBatch]) -> Deferred[Results]:
        """
        Queue a turn's C{batches} for the next commit, with one Deferred
        for all, and wake an idle writer now: the server calls this at the
        end of the turn (L{IHandlesTurns}), which L{handle} has to wait for.
        """
        d = self._enqueue(batches)
        call, self._wakeCall = self._wakeCall, None
        if call is not None and call.active():
            call.cancel()
        self._wake()
        return d

    def _enqueue(self, batches: Sequence[SubmitBatch]) -> Deferred[Results]:
        if self._stopping:
            raise RuntimeError("the sqlite store is stopping")
        size = 0
        for batch in batches:
            size += len(batch.frames)
        if self.queuedBytes and self.queuedBytes + size > self.maxQueuedBytes:
            raise StoreBacklogged(
                f"{self.queuedBytes} bytes of Submits wait for a commit: the disk is not "
                "keeping up (or hangs)"
            )
        self.queuedBytes += size
        d: Deferred[Results] = Deferred()
        self._queue.append((batches, size, d))
        return d

    def _wake(self) -> None:
        self._wakeCall = None
        with self._condition:
            self._condition.notify()

    def stopHandler(self) -> Deferred[None]:
        """
        Commit what is queued, then close the file.
        """
        call, self._wakeCall = self._wakeCall, None
        if call is not None and call.active():
            call.cancel()
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._stopped is None:  # never started
            return succeed(None)
        return self._stopped

    def _deliverDone(self, done: _Done) -> None:
        work, error = done
        self.queuedBytes -= sum(size for _, size, _ in work)
        _deliver(work, error)

    # The writer thread

    def _writer(self) -> None:
        db = self._db
        assert db is not None
        condition = self._condition
        queue = self._queue
        checkpointer = self._checkpointer
        assert checkpointer is not None
        committed = checkpointer.committed
        try:
            try:
                self.writerSlice = requestSlice(WRITER_SLICE)
            except Exception:  # it does not raise; and if it did, commits matter more
                self.writerSlice = None
            while True:
                with condition:
                    while not queue and not self._stopping:
                        condition.wait()
                # What came during the last commit goes into the next one at
                # once: the reactor's wake-up waits for the end of its turn.
                work = []
                while queue:
                    work.append(queue.popleft())
                if not work:
                    break
                self._commit(db, work)
                committed()
        finally:
            checkpointer.stop()
            db.close()
            if self._stopped is not None:
                self.reactor.callFromThread(self._writerDone)

    def _writerDone(self) -> None:
        """
        In the reactor, once the writer has closed the file: fire
        L{stopHandler}'s Deferred only when the thread is gone.  The join
        waits for the writer to return from its last statement, not for
        any work.
        """
        assert self._thread is not None and self._stopped is not None
        self._thread.join()
        self.deliverReady()  # nothing, normally: the last commit's call came first
        log.info(
            "sqlite store {path} closed: {rows} Submits stored in {commits} commits, "
            "{checkpoints} background checkpoints ({failures} failed); writer's "
            "scheduler slice {slice}",
            path=self.path,
            slice="the kernel's default"
            if self.writerSlice is None
            else f"{self.writerSlice * 1000:g} ms",
            rows=self.stored,
            commits=self.commits,
            checkpoints=self._checkpointer.checkpoints if self._checkpointer else 0,
            failures=self._checkpointer.failures if self._checkpointer else 0,
        )
        self._stopped.callback(None)

    def _commit(self, db: sqlite3.Connection, work: list[_Work]) -> None:
        error: BaseException | None = None
        try:
            values: list[object] = []
            for batches, _, _ in work:
                for batch in batches:
                    addRows(batch, values)
            insertRows(db, values)
            db.commit()
            self.commits += 1
            self.stored += len(values) // _COLUMNS
        except Exception as e:
            error = e
            try:
                db.rollback()
            except Exception:
                pass
        self._done.put((work, error))


def _deliver(work: list[_Work], error: BaseException | None) -> None:
    """
    In the reactor: give each call its results (one cancelled by the
    server's timeout has had its answer already).
    """
    for batches, _, d in work:
        if d.called:
            continue
        if error is None:
            d.callback(bytes(sum(batch.count for batch in batches)))
        else:
            d.errback(Failure(error))


def _path(argument: str | None) -> str:
    if not argument:
        raise HandlerArgumentError("sqlite needs a file: sqlite:PATH")
    return argument


def makeSqliteHandler(argument: str | None, reactor: Any) -> SqliteHandler:
    """
    C{--handler sqlite:PATH}.
    """
    return SqliteHandler(_path(argument), reactor)


def readStored(argument: str | None) -> Iterator[dict[str, Any]]:
    """
    Every stored Submit, oldest first (C{tcpdemo-dump sqlite:PATH}).  The
    store is opened read-only and checked before the first one is returned.
    """
    path = _path(argument)
    if not os.path.isfile(path):
        raise HandlerArgumentError(f"no such file: {path}")
    try:
        db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM submits LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise HandlerArgumentError(f"{path}: not a tcpdemo sqlite store ({e})") from e
    return _read(db)


def _read(db: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    try:
        cursor = db.execute(
            "SELECT seq, id, payload, received, peer, conn FROM submits ORDER BY seq"
        )
        for seq, submitId, payload, received, peer, connection in cursor:
            yield {
                "id": bytes(submitId).hex(),
                "payload": bytes(payload).hex(),
                "received": received,
                "peer": peer,
                "conn": connection,
                "seq": seq,
            }
    finally:
        db.close()
