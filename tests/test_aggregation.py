"""
Tests for L{tcpdemo.aggregation}, the parent's view of its workers' metrics,
on hand-made families (the whole path, workers' files to the parent's
/metrics, is tested over real processes in tests/test_workers.py).
"""

from __future__ import annotations

import os

from prometheus_client.metrics_core import Metric
from twisted.trial.unittest import SynchronousTestCase

from tcpdemo.aggregation import WorkerFilesCollector, _splitByWorker


def samples(family: Metric) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for s in family.samples]


class SplitByWorkerTests(SynchronousTestCase):
    def test_totalAndPerWorker(self) -> None:
        """
        A family with a worker label becomes its total, under its own name,
        and a C{tcpdemo_worker_} copy by worker, in the workers' numeric order.
        """
        family = Metric("tcpdemo_req_recv", "Submit packets decoded.", "counter")
        for worker, value in (("2", 5.0), ("10", 7.0), ("1", 3.0)):
            family.add_sample("tcpdemo_req_recv_total", {"worker": worker}, value)
        total, perWorker = _splitByWorker(family)
        self.assertEqual((total.name, total.type), ("tcpdemo_req_recv", "counter"))
        self.assertEqual(samples(total), [("tcpdemo_req_recv_total", {}, 15.0)])
        self.assertEqual(perWorker.name, "tcpdemo_worker_req_recv")
        self.assertIn("By worker process", perWorker.documentation)
        self.assertEqual(
            samples(perWorker),
            [
                ("tcpdemo_worker_req_recv_total", {"worker": "1"}, 3.0),
                ("tcpdemo_worker_req_recv_total", {"worker": "2"}, 5.0),
                ("tcpdemo_worker_req_recv_total", {"worker": "10"}, 7.0),
            ],
        )

    def test_otherLabelsKept(self) -> None:
        """
        The total sums over workers only: other labels stay apart.
        """
        family = Metric("tcpdemo_acks", "SubmitAcks sent.", "counter")
        family.add_sample("tcpdemo_acks_total", {"worker": "1", "result": "0"}, 4.0)
        family.add_sample("tcpdemo_acks_total", {"worker": "2", "result": "0"}, 6.0)
        family.add_sample("tcpdemo_acks_total", {"worker": "2", "result": "3"}, 1.0)
        total, _ = _splitByWorker(family)
        self.assertEqual(
            sorted(samples(total), key=lambda s: s[1]["result"]),
            [
                ("tcpdemo_acks_total", {"result": "0"}, 10.0),
                ("tcpdemo_acks_total", {"result": "3"}, 1.0),
            ],
        )


class WorkerFilesCollectorTests(SynchronousTestCase):
    def test_noDirectory(self) -> None:
        """
        Before the workers have a directory, or if it is gone, nothing.
        """
        self.assertEqual(list(WorkerFilesCollector(lambda: None).collect()), [])
        missing = os.path.join(self.mktemp(), "gone")
        self.assertEqual(list(WorkerFilesCollector(lambda: missing).collect()), [])

    def test_emptyDirectory(self) -> None:
        """
        A directory with no worker files yet: no families.
        """
        path = self.mktemp()
        os.makedirs(path)
        self.assertEqual(list(WorkerFilesCollector(lambda: path).collect()), [])
