"""
The jetstream handler's argument and stored format, without a server (the
handler against real nats-servers is in systests/test_jetstream_handler.py).
"""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpdemo.handlers import HandlerArgumentError, SubmitBatch
from tcpdemo.handlers.jetstream import (
    DEFAULT_STREAM,
    DEFAULT_SUBJECT,
    DEFAULT_TIMEOUT,
    FORMAT_VERSION,
    HEADER_COUNT,
    HEADER_FORMAT,
    HEADER_MSG_ID,
    HEADER_PEER,
    HEADER_RECEIVED,
    JetStreamSpec,
    batchHeaders,
    decodeMessage,
    parseSpec,
)

from .support import REPO_ROOT, requireBinary, submitFrame


class SpecTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(
            parseSpec("nats://127.0.0.1:4222"),
            JetStreamSpec(("nats://127.0.0.1:4222",), DEFAULT_STREAM, DEFAULT_SUBJECT, 1),
        )

    def test_threeServersThreeReplicas(self) -> None:
        spec = parseSpec("nats://a:1,nats://b:2, nats://c:3")
        self.assertEqual(spec.servers, ("nats://a:1", "nats://b:2", "nats://c:3"))
        self.assertEqual(spec.replicas, 3)
        self.assertEqual(parseSpec("nats://a:1,nats://b:2").replicas, 1)

    def test_options(self) -> None:
        spec = parseSpec(
            "nats://a:1,nats://b:2,nats://c:3?stream=S1&subject=x.y&replicas=1&timeout=5"
        )
        self.assertEqual(
            (spec.stream, spec.subject, spec.replicas, spec.timeout), ("S1", "x.y", 1, 5.0)
        )
        self.assertEqual(parseSpec("nats://a:1").timeout, DEFAULT_TIMEOUT)

    def test_bad(self) -> None:
        for bad in (
            None,
            "",
            "?stream=S",
            "a:1",
            "http://a:1",
            "nats://a:1?stream=a.b",
            "nats://a:1?stream=",
            "nats://a:1?replicas=0",
            "nats://a:1?replicas=x",
            "nats://a:1?replicas=7",
            "nats://a:1?timeout=-1",
            "nats://a:1?timeout=x",
            "nats://a:1?colour=red",
        ):
            with self.assertRaises(HandlerArgumentError, msg=repr(bad)):
                parseSpec(bad)


class FormatTests(SynchronousTestCase):
    def batch(self) -> SubmitBatch:
        frames = submitFrame(7, b"hello") + submitFrame(8, b"") + submitFrame(9, b"\x00" * 300)
        return SubmitBatch(frames, 3, 5, "[::1]:9999", 1700000000.25)

    def test_headers(self) -> None:
        self.assertEqual(
            batchHeaders(self.batch(), "abc.1"),
            {
                HEADER_FORMAT: FORMAT_VERSION,
                HEADER_COUNT: "3",
                HEADER_PEER: "[::1]:9999",
                HEADER_RECEIVED: "1700000000.25",
                HEADER_MSG_ID: "abc.1",
            },
        )

    def test_roundTrip(self) -> None:
        """
        The body is the frames as received; decoding gives one dump row per
        Submit, in order.
        """
        batch = self.batch()
        rows = decodeMessage(batch.frames, batchHeaders(batch, "abc.1"), 12)
        self.assertEqual(
            rows,
            [
                {
                    "id": (b"%08d" % n).hex(),
                    "payload": payload.hex(),
                    "received": 1700000000.25,
                    "peer": "[::1]:9999",
                    "stream_seq": 12,
                }
                for n, payload in ((7, b"hello"), (8, b""), (9, b"\x00" * 300))
            ],
        )

    def test_refusesWhatItDoesNotKnow(self) -> None:
        batch = self.batch()
        headers = batchHeaders(batch, "abc.1")
        with self.assertRaises(ValueError):
            decodeMessage(batch.frames, {**headers, HEADER_FORMAT: "2"}, 1)
        with self.assertRaises(ValueError):
            decodeMessage(batch.frames, None, 1)
        with self.assertRaises(ValueError):
            decodeMessage(batch.frames, {**headers, HEADER_COUNT: "4"}, 1)


class DeployTests(TestCase):
    def test_prometheusConfig(self) -> None:
        """
        deploy/prometheus-jetstream.yml, and the rules it loads, are valid;
        it scrapes the NATS nodes' health and the exporter's job is there.
        """
        promtool = requireBinary("promtool", package="prometheus")
        path = os.path.join(REPO_ROOT, "deploy", "prometheus-jetstream.yml")
        result = subprocess.run(
            [promtool, "check", "config", path],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertEqual(result.returncode, 0, output)
        with open(path) as f:
            text = f.read()
        for node in (1, 2, 3):
            self.assertIn(f'"http://10.0.1.{node}:8222/healthz"', text)
            self.assertIn(f'"10.0.1.{node}:7777"', text)
