"""
The sqlite store (tcpdemo/handlers/sqlite.py) with the real reactor and its
real writer thread, alone and behind a server over loopback TCP.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import TestCase

from tcpdemo import tap
from tcpdemo.handlers import SubmitBatch, checkpoint, sqlite
from tcpdemo.handlers.checkpoint import WRITER_AUTOCHECKPOINT, Checkpointer
from tcpdemo.handlers.sqlite import CHUNK, SqliteHandler, StoreBacklogged, readStored
from tcpdemo.schedslice import currentSlice

from .support import ackFrame, ackFrames, submitFrame, submitFrames, waitUntil
from .test_handlers import HandlerTestCase
from .test_schedslice import kernelHasSlices


def batch(first: int, count: int, payload: bytes = b"", connection: int = 1) -> SubmitBatch:
    frames = b"".join(submitFrame(i, payload or b"p%d" % i) for i in range(first, first + count))
    return SubmitBatch(frames, count, connection, f"127.0.0.1:{1000 + connection}", time.time())


class StoreTests(TestCase):
    def handler(self) -> SqliteHandler:
        path = os.path.abspath(self.mktemp())
        handler = SqliteHandler(path, reactor)
        handler.startHandler()
        thread = handler._thread
        assert thread is not None
        self.addCleanup(lambda: handler.stopHandler() if thread.is_alive() else None)
        return handler

    async def test_groupCommit(self) -> None:
        """
        Batches handed while a commit runs share the next one; each batch
        gets zeros once committed; rows keep the order batches came in,
        across statements of CHUNK rows.
        """
        handler = self.handler()
        sizes = [1, CHUNK - 1, CHUNK, CHUNK + 1, 7] * 20
        first = 0
        waits = []
        for connection, size in enumerate(sizes):
            waits.append(handler.handle(batch(first, size, connection=connection % 3)))
            first += size
        results = await defer.gatherResults(waits)
        self.assertEqual([bytes(r) for r in results], [bytes(size) for size in sizes])
        self.assertLess(handler.commits, len(sizes))
        self.assertEqual(handler.stored, first)
        await handler.stopHandler()
        stored = list(readStored(handler.path))
        self.assertEqual(
            [bytes.fromhex(s["id"]) for s in stored], [b"%08d" % i for i in range(first)]
        )
        self.assertEqual(
            [bytes.fromhex(s["payload"]) for s in stored], [b"p%d" % i for i in range(first)]
        )
        self.assertEqual(stored[0]["peer"], "127.0.0.1:1000")
        self.assertEqual([s["seq"] for s in stored], list(range(1, first + 1)))
        db = sqlite3.connect(handler.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    async def test_oneCommitPerReactorTurn(self) -> None:
        """
        Batches handed in one reactor turn, from any number of connections,
        go into one commit: the writer is woken when the turn ends, not at
        the first batch, so a long turn of one-Submit reads (request/response
        load) is not cut into commits of a few rows.
        """
        handler = self.handler()
        await handler.handle(batch(0, 1))
        await deferLater(reactor, 0.2, lambda: None)  # the writer waits again
        self.assertEqual(handler.commits, 1)
        waits = [handler.handle(batch(1 + i, 1, connection=i)) for i in range(100)]
        time.sleep(0.2)  # the turn goes on: no commit may start meanwhile
        self.assertEqual(handler.commits, 1)
        results = await defer.gatherResults(waits)
        self.assertEqual([bytes(r) for r in results], [b"\0"] * 100)
        self.assertEqual((handler.commits, handler.stored), (2, 101))

    async def test_hungCommitBoundsTheQueue(self) -> None:
        """
        While a commit hangs (a disk that stalls), batches queue up to
        C{maxQueuedBytes}; past it L{SqliteHandler.handle} raises at once
        (the server gives result 1).  Once the commit returns, everything
        queued is stored and acked, and the store takes batches again.
        """
        path = os.path.abspath(self.mktemp())
        handler = SqliteHandler(path, reactor, maxQueuedBytes=10_000)
        entered, release = threading.Event(), threading.Event()
        commit = handler._commit

        def hangingCommit(db: sqlite3.Connection, work: Any) -> None:
            entered.set()
            release.wait(60)
            commit(db, work)

        handler._commit = hangingCommit  # type: ignore[method-assign]
        handler.startHandler()
        self.addCleanup(release.set)
        first = handler.handle(batch(0, 10, b"x" * 100))  # 1,130 bytes
        await waitUntil(entered.is_set)
        waits = []
        with self.assertRaises(StoreBacklogged):
            for n in range(1, 100):
                waits.append(handler.handle(batch(n * 10, 10, b"x" * 100)))
        self.assertEqual(len(waits), 7)  # 8 batches of 1,130 bytes fit
        self.assertLessEqual(handler.queuedBytes, 10_000)
        release.set()
        results = await defer.gatherResults([first, *waits])
        self.assertEqual([bytes(r) for r in results], [bytes(10)] * 8)
        self.assertEqual(handler.queuedBytes, 0)
        self.assertEqual(bytes(await handler.handle(batch(1000, 3))), bytes(3))
        await handler.stopHandler()
        self.assertEqual(len(list(readStored(path))), 83)

    async def test_stopCommitsWhatIsQueued(self) -> None:
        handler = self.handler()
        waits = [handler.handle(batch(i * 10, 10)) for i in range(50)]
        stopped = handler.stopHandler()
        self.assertIsNone(handler._wakeCall)  # the turn's wake-up, cancelled
        self.assertRaises(RuntimeError, handler.handle, batch(9999, 1))
        await stopped
        self.assertEqual([bytes(r) for r in await defer.gatherResults(waits)], [bytes(10)] * 50)
        self.assertEqual(len(list(readStored(handler.path))), 500)
        assert handler._thread is not None
        self.assertFalse(handler._thread.is_alive())

    async def test_handleTurn(self) -> None:
        """
        A turn's batches, from several connections: one Deferred with a
        result for each of their Submits, rows in the order given.
        """
        handler = self.handler()
        batches = [batch(0, 2, connection=1), batch(2, 1, connection=2), batch(3, 3, connection=1)]
        self.assertEqual(bytes(await handler.handleTurn(batches)), bytes(6))
        await handler.stopHandler()
        rows = list(readStored(handler.path))
        self.assertEqual([row["id"] for row in rows], [(b"%08d" % i).hex() for i in range(6)])
        self.assertEqual([row["conn"] for row in rows], [1, 1, 2, 1, 1, 1])

    async def test_writerAsksForAShortSlice(self) -> None:
        """
        The writer thread runs with L{sqlite.WRITER_SLICE} where the kernel
        has per-thread slices (the reactor thread keeps its own), and the
        close line says which.
        """
        reactorSlice = currentSlice()
        handler = self.handler()
        await handler.handleTurn([batch(0, 1)])  # the writer has run
        events: list[dict[str, Any]] = []
        self.patch(sqlite, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        await handler.stopHandler()
        if kernelHasSlices():
            self.assertAlmostEqual(handler.writerSlice, sqlite.WRITER_SLICE)
            self.assertIn("writer's scheduler slice 0.1 ms", formatEvent(events[-1]))
        else:
            self.assertIsNone(handler.writerSlice)
            self.assertIn("writer's scheduler slice the kernel's default", formatEvent(events[-1]))
        self.assertEqual(currentSlice(), reactorSlice)

    def test_noThreadLeftWhenTheWriterCannotStart(self) -> None:
        """
        A writer thread that cannot start (the process is out of threads)
        fails startHandler with nothing left behind: the checkpointer's
        thread is stopped and both connections are closed.
        """
        started: list[threading.Thread] = []
        realStart = threading.Thread.start

        def start(thread: threading.Thread) -> None:
            if thread.name == "tcpdemo-sqlite-writer":
                raise RuntimeError("can't start new thread")
            started.append(thread)
            realStart(thread)

        self.patch(threading.Thread, "start", start)
        opened: list[sqlite3.Connection] = []
        realConnect = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            connection: sqlite3.Connection = realConnect(*args, **kwargs)
            opened.append(connection)
            return connection

        self.patch(sqlite3, "connect", connect)
        handler = SqliteHandler(os.path.abspath(self.mktemp()), reactor)
        self.assertRaises(RuntimeError, handler.startHandler)
        self.assertEqual([thread.name for thread in started], ["tcpdemo-sqlite-checkpointer"])
        self.assertFalse(started[0].is_alive())
        self.assertEqual(len(opened), 2)  # the writer's and the checkpointer's
        for connection in opened:
            self.assertRaises(sqlite3.ProgrammingError, connection.execute, "SELECT 1")
        self.assertEqual((handler._db, handler._checkpointer, handler._thread), (None, None, None))
        self.assertIsNone(self.successResultOf(handler.stopHandler()))

    def test_checkpointerThatCannotStartClosesItsConnection(self) -> None:
        realStart = threading.Thread.start

        def start(thread: threading.Thread) -> None:
            if thread.name == "tcpdemo-sqlite-checkpointer":
                raise RuntimeError("can't start new thread")
            realStart(thread)

        path = os.path.abspath(self.mktemp())
        sqlite.openStore(path).close()
        self.patch(threading.Thread, "start", start)
        checkpointer = Checkpointer(path, reactor)
        self.assertRaises(RuntimeError, checkpointer.start)
        assert checkpointer._db is not None
        self.assertRaises(sqlite3.ProgrammingError, checkpointer._db.execute, "SELECT 1")
        checkpointer.stop()  # nothing to stop, and no error

    async def test_writerOutlivesAFailingSliceRequest(self) -> None:
        """
        Were asking for the slice to raise, the writer would still commit
        and stop: it is a hint.
        """

        def raising(seconds: float) -> float:
            raise ValueError("told to raise")

        self.patch(sqlite, "requestSlice", raising)
        handler = self.handler()
        self.assertEqual(await handler.handleTurn([batch(0, 2)]), bytes(2))
        await handler.stopHandler()
        self.assertEqual(len(list(readStored(handler.path))), 2)

    def test_cannotOpen(self) -> None:
        handler = SqliteHandler(os.path.join(self.mktemp(), "no", "such", "dir.db"), reactor)
        self.assertRaises(sqlite3.OperationalError, handler.startHandler)


class CheckpointTests(TestCase):
    """
    WAL checkpoints run in a thread of their own, not inside commits.
    """

    def rowsInTheDatabaseFile(self, path: str) -> int:
        """
        The rows the database file itself holds, without its WAL: those
        that a checkpoint has copied there.
        """
        copy = os.path.abspath(self.mktemp())
        shutil.copyfile(path, copy)
        db = sqlite3.connect(copy)
        try:
            return int(db.execute("SELECT count(*) FROM submits").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet: not even the schema is there
            return 0
        except sqlite3.DatabaseError:  # copied in the middle of a checkpoint's write
            return -1
        finally:
            db.close()

    async def test_checkpointedAfterCommits(self) -> None:
        """
        The writer's commits would checkpoint only past
        L{WRITER_AUTOCHECKPOINT} pages; shortly after commits, the
        background checkpoint has copied every row into the database file.
        """
        handler = StoreTests.handler(self)  # type: ignore[arg-type]
        assert handler._db is not None and handler._checkpointer is not None
        self.assertEqual(
            handler._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], WRITER_AUTOCHECKPOINT
        )
        for n in range(20):
            await handler.handleTurn([batch(n * 100, 100, b"x" * 50)])
        checkpointer = handler._checkpointer
        await waitUntil(
            lambda: (
                self.rowsInTheDatabaseFile(handler.path) == 2000 and checkpointer.checkpoints >= 1
            )
        )
        events: list[dict[str, Any]] = []
        self.patch(sqlite, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        await handler.stopHandler()
        self.assertIn("background checkpoints", formatEvent(events[-1]))
        self.assertFalse(handler._checkpointer._thread.is_alive())  # type: ignore[union-attr]

    async def test_failingCheckpointIsOneLine(self) -> None:
        """
        A checkpoint that fails (here: an I/O error) is counted and logged
        once, however often it fails; stopping still works.
        """
        path = os.path.abspath(self.mktemp())
        sqlite.openStore(path).close()
        events: list[dict[str, Any]] = []
        self.patch(checkpoint, "log", Logger(observer=events.append))  # type: ignore[arg-type]

        class Failing(Checkpointer):
            def checkpoint(self, db: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("disk I/O error")

        checkpointer = Failing(path, reactor, delay=0.01)
        checkpointer.start()
        self.addCleanup(checkpointer.stop)
        for expected in (1, 2, 3):
            checkpointer.committed()
            await waitUntil(lambda e=expected: checkpointer.failures >= e)  # type: ignore[misc]
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(events), 1, events)
        self.assertIn("background checkpoint failed", formatEvent(events[0]))
        self.assertEqual(checkpointer.checkpoints, 0)
        checkpointer.stop()
        assert checkpointer._thread is not None
        self.assertFalse(checkpointer._thread.is_alive())


class FullDiskTests(HandlerTestCase):
    async def test_fullGivesOneAndRecovers(self) -> None:
        """
        A full database (SQLite's max_page_count standing in for a full
        disk): result 1 for the batches of the failed commit, counted; the
        connection stays open, and once there is room Submits are stored
        again.
        """
        path = os.path.abspath(self.mktemp())
        handler = SqliteHandler(path, reactor)
        svc = self.startService(handler)
        assert handler._db is not None
        pages = handler._db.execute("PRAGMA page_count").fetchone()[0]
        handler._db.execute(f"PRAGMA max_page_count={pages + 2}")
        client = await self.connect(svc)
        client.send(submitFrames(range(1, 3), b"small"))
        await waitUntil(lambda: len(client.received) >= 28)
        client.send(submitFrames(range(3, 103), b"x" * 4000))  # ~400 KB: does not fit
        await waitUntil(lambda: len(client.received) >= 14 * 102)
        self.assertEqual(client.data, ackFrames(range(1, 3)) + ackFrames(range(3, 103), 1))
        self.assertGreaterEqual(self.sample(svc, "tcpdemo_handler_errors_total"), 1)
        self.assertIn("full", self.warnings()[0])
        handler._db.execute("PRAGMA max_page_count=1073741823")
        client.send(submitFrame(103, b"after"))
        await waitUntil(lambda: len(client.received) >= 14 * 103)
        self.assertEqual(client.data[-14:], ackFrame(103))
        await svc.stopService()
        stored = [bytes.fromhex(s["payload"]) for s in readStored(path)]
        self.assertEqual(stored, [b"small", b"small", b"after"])


class StartFailureTests(TestCase):
    def test_unopenableIsOneLine(self) -> None:
        options = tap.Options()
        path = os.path.join(os.path.abspath(self.mktemp()), "missing-dir", "s.db")
        options.parseOptions(
            [
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                "none",
                "--handler",
                f"sqlite:{path}",
            ]
        )
        svc = tap.makeService(options, reactor, CollectorRegistry())
        error = self.assertRaises(SystemExit, svc.privilegedStartService)
        # SQLite's own words after the colon differ between CPython ("unable
        # to open database file") and PyPy ("Could not open database").
        message = str(error)
        self.assertTrue(
            message.startswith(
                f"tcpdemo: --handler sqlite:{path} failed to start: OperationalError: "
            ),
            message,
        )
        self.assertIn("open database", message)
        self.assertNotIn("\n", message)
