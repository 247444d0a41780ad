"""
The jetstream handler driven directly (no twistd) against real nats-servers:
a lone node, a lone node that goes away and comes back, and a 3-node cluster
losing a node to SIGKILL while batches are in flight.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tcpdemo.handlers import SubmitBatch
from tcpdemo.handlers.jetstream import (
    FORMAT_VERSION,
    HEADER_COUNT,
    HEADER_FORMAT,
    HEADER_PEER,
    JetStreamHandler,
    makeHandler,
    readStored,
)
from tests.support import submitFrame

from .natsservers import NatsCluster


def makeBatch(first: int, count: int, payloadSize: int = 16) -> SubmitBatch:
    frames = b"".join(
        submitFrame(first + i, bytes([i % 251]) * ((payloadSize + i) % 300)) for i in range(count)
    )
    return SubmitBatch(
        frames=frames, count=count, connection=1, peer="127.0.0.1:4242", received=time.time()
    )


def expectedRows(batches: list[SubmitBatch]) -> set[tuple[str, str]]:
    return {(i.hex(), p.hex()) for batch in batches for i, p in batch.submits()}


async def _rawMessages(url: str, stream: str) -> list[tuple[bytes, dict[str, str], int]]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out: list[tuple[bytes, dict[str, str], int]] = []
        if info.state.messages == 0:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append((msg.data or b"", dict(msg.headers or {}), info.config.num_replicas or 1))
        return out
    finally:
        await nc.close()


def rawMessages(url: str, stream: str) -> Deferred[list[tuple[bytes, dict[str, str], int]]]:
    """
    Every message of C{stream} as stored (body, headers, replicas), read with
    nats-py in a thread of its own.
    """
    return deferToThread(asyncio.run, _rawMessages(url, stream))


def dump(argument: str) -> Deferred[list[dict[str, Any]]]:
    return deferToThread(lambda: list(readStored(argument)))


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class JetStreamHandlerTests(TestCase):
    timeout = 180

    def cluster(self, size: int) -> NatsCluster:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        cluster = NatsCluster(workdir, size)
        self.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    async def handler(self, argument: str) -> JetStreamHandler:
        handler = makeHandler(argument, reactor)
        await handler.startHandler()
        self.addCleanup(handler.stopHandler)
        return handler

    async def test_singleNode(self) -> None:
        """
        Every batch is acked 0 after it is stored, as one message whose body
        is the frames as received; tcpdemo-dump's reader gives back every
        Submit once, oldest first; a second handler reuses the stream.
        """
        cluster = self.cluster(1)
        spec = f"{cluster.urls}?stream=SINGLE"
        handler = await self.handler(spec)
        batches = [makeBatch(1000 * n, n + 1) for n in range(40)]
        results = await DeferredList([handler.handle(b) for b in batches], fireOnOneErrback=True)
        self.assertEqual([r for _, r in results], [bytes(b.count) for b in batches])

        raw = await rawMessages(cluster.servers[0].url, "SINGLE")
        self.assertEqual(len(raw), len(batches))
        byFrames = {b.frames: b for b in batches}
        for body, headers, replicas in raw:
            self.assertEqual(replicas, 1)
            self.assertIn(body, byFrames)
            self.assertEqual(headers[HEADER_FORMAT], FORMAT_VERSION)
            self.assertEqual(headers[HEADER_COUNT], str(byFrames[body].count))
            self.assertEqual(headers[HEADER_PEER], "127.0.0.1:4242")

        rows = await dump(spec)
        self.assertEqual(len(rows), sum(b.count for b in batches))
        self.assertEqual({(r["id"], r["payload"]) for r in rows}, expectedRows(batches))
        sequences = [r["stream_seq"] for r in rows]
        self.assertEqual(sequences, sorted(sequences))
        self.assertEqual({r["peer"] for r in rows}, {"127.0.0.1:4242"})

        await handler.stopHandler()
        again = await self.handler(spec)
        more = makeBatch(999_000, 3)
        self.assertEqual(await again.handle(more), bytes(3))
        rows = await dump(spec)
        self.assertEqual(len(rows), sum(b.count for b in batches) + 3)
        self.assertEqual(rows[-3]["id"], (b"%08d" % 999_000).hex())

    async def test_neverOkUnlessStored(self) -> None:
        """
        With the node gone, a batch is never acked 0: it fails once the
        handler's timeout is over, or when the server cancels it.  When the
        node comes back, the same handler stores again by itself.
        """
        cluster = self.cluster(1)
        node = cluster.servers[0]
        spec = f"{cluster.urls}?stream=GONE&timeout=2"
        handler = await self.handler(spec)
        self.assertEqual(await handler.handle(makeBatch(1, 5)), bytes(5))

        node.kill()
        started = time.monotonic()
        failing = handler.handle(makeBatch(100, 5))
        cancelled = handler.handle(makeBatch(200, 5))
        await sleep(0.5)
        self.assertFalse(failing.called)
        self.assertFalse(cancelled.called)
        cancelled.cancel()
        await self.assertFailure(cancelled, CancelledError)
        await self.assertFailure(failing, Exception)
        self.assertGreaterEqual(time.monotonic() - started, 1.9)

        node.start()
        cluster.waitHealthy()
        # Recovered by itself: the same handler, no restart.
        self.assertEqual(await handler.handle(makeBatch(300, 7)), bytes(7))
        ids = {r["id"] for r in await dump(spec)}
        for number in (1, 300):
            self.assertIn(b"%08d" % number, {bytes.fromhex(i) for i in ids})

    async def test_clusterLosesANode(self) -> None:
        """
        A 3-node cluster and a 3-replica stream: SIGKILL the stream's leader
        while batches are in flight.  Publishing goes on, and every batch
        acked 0 is read back, once.
        """
        cluster = self.cluster(3)
        spec = f"{cluster.urls}?stream=TRIO"
        handler = await self.handler(spec)
        raw = await rawMessages(cluster.servers[0].url, "TRIO")
        self.assertEqual(raw, [])
        leader = cluster.streamLeader("TRIO")

        acked: list[SubmitBatch] = []
        failed: list[object] = []
        number = 0
        inFlight: list[Deferred[Any]] = []
        killedAt = None
        ackedAfterKill = 0
        start = time.monotonic()
        while time.monotonic() - start < 6.0:
            while len(inFlight) < 16:
                batch = makeBatch(number * 100, 50)
                number += 1

                def done(result: object, batch: SubmitBatch = batch) -> None:
                    if result == bytes(batch.count):
                        acked.append(batch)
                    else:
                        failed.append(result)

                d = handler.handle(batch)
                d.addBoth(done)
                inFlight.append(d)
            await sleep(0.01)
            inFlight = [d for d in inFlight if not d.called]
            if killedAt is None and time.monotonic() - start > 2.0:
                leader.kill()
                killedAt = len(acked)
        await DeferredList(inFlight)
        ackedAfterKill = len(acked) - (killedAt or 0)
        self.assertEqual(failed, [])
        self.assertGreater(ackedAfterKill, 10, "publishing did not go on after the SIGKILL")

        rows = await dump(spec)
        stored = {(r["id"], r["payload"]) for r in rows}
        self.assertEqual(len(stored), len(rows), "a Submit stored twice")
        missing = expectedRows(acked) - stored
        self.assertEqual(missing, set(), f"{len(missing)} acked Submits lost")
        info = await rawMessages(cluster.running()[0].url, "TRIO")
        self.assertEqual({replicas for _, _, replicas in info}, {3})
