"""
The parent's C{/metrics} with C{--workers N}: the workers' multiprocess
files summed, a per-worker copy of the L{PER_WORKER} metrics, and the
C{process_*} metrics of the whole process tree.  Only the supervisor uses
it; a single-process server serves L{tcpdemo.metrics} directly.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterable, Sequence
from typing import Callable

from prometheus_client import CollectorRegistry, PlatformCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from tcpdemo.metrics import WORKER_LABEL, WORKER_PREFIX


def _perWorkerName(name: str, family: str) -> str:
    """
    C{tcpdemo_req_recv_total} of family C{tcpdemo_req_recv} becomes
    C{tcpdemo_worker_req_recv_total}.
    """
    base = WORKER_PREFIX + family[len("tcpdemo_") :]
    return base + name[len(family) :]


def _splitByWorker(family: Metric) -> list[Metric]:
    """
    A family with a C{worker} label as two: the total under its own name
    and labels (what dashboards and alerts query), and the per-worker
    breakdown under a C{tcpdemo_worker_} name.
    """
    total = Metric(family.name, family.documentation, family.type)
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != WORKER_LABEL))
        key = (sample.name, labels)
        sums[key] = sums.get(key, 0.0) + sample.value
    for (name, labels), value in sums.items():
        total.add_sample(name, dict(labels), value)
    perWorker = Metric(
        _perWorkerName(family.name, family.name),
        f"{family.documentation} By worker process (--workers).",
        family.type,
    )

    def order(sample: object) -> tuple[int, str]:
        worker = getattr(sample, "labels", {}).get(WORKER_LABEL, "")
        return (int(worker) if worker.isdigit() else 0, worker)

    for sample in sorted(family.samples, key=order):
        perWorker.add_sample(
            _perWorkerName(sample.name, family.name), dict(sample.labels), sample.value
        )
    return [total, perWorker]


class WorkerFilesCollector:
    """
    What the worker processes wrote to their multiprocess files, merged by
    prometheus_client's C{MultiProcessCollector}: counters summed over every
    process that ever ran (a restarted worker's counts are kept), gauges per
    their C{multiprocess_mode}.  L{PER_WORKER} families are split by
    L{_splitByWorker}.
    """

    def __init__(self, path: Callable[[], str | None]) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        path = self._path()
        if path is None or not os.path.isdir(path):
            return []
        result: list[Metric] = []
        for family in MultiProcessCollector(None, path).collect():
            if any(WORKER_LABEL in sample.labels for sample in family.samples):
                result.extend(_splitByWorker(family))
            else:
                result.append(family)
        return result


def _processSamples(pid: object) -> dict[str, float]:
    """
    prometheus_client's C{process_*} samples of one process (C{"self"} or a
    pid), by name; empty if it is gone or there is no C{/proc}.
    """
    collector = ProcessCollector(pid=lambda: pid, registry=None)  # type: ignore[arg-type,return-value]
    return {s.name: s.value for family in collector.collect() for s in family.samples}


class ProcessTreeCollector:
    """
    The C{process_*} metrics of the parent and its workers, under the names
    a single process exports, so that CPU, memory and file descriptor
    panels keep meaning "this instance":

      - C{process_cpu_seconds_total}: the parent, the live workers and every
        worker that exited (the parent's C{RUSAGE_CHILDREN}); never
        decreasing, even across a worker's death.
      - C{process_resident_memory_bytes}, C{process_virtual_memory_bytes},
        C{process_open_fds}: summed over the parent and the live workers.
      - C{process_max_fds}, C{process_start_time_seconds}: the parent's
        (the workers inherit its limit).

    Plus C{tcpdemo_worker_cpu_seconds_total} and
    C{tcpdemo_worker_resident_memory_bytes} by worker (the CPU counter
    starts again from 0 when a worker is replaced).

    It runs in a scrape thread: C{workers} must return a snapshot.
    """

    def __init__(self, workers: Callable[[], Sequence[tuple[str, int]]]) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._cpu = 0.0

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = [(worker, _processSamples(pid)) for worker, pid in self._workers()]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        parent = _processSamples("self")
        result: list[Metric] = []
        if not parent:
            return result
        every = [parent] + [samples for _, samples in workers]

        def summed(name: str) -> float:
            return sum(samples.get(name, 0.0) for samples in every)

        cpu = summed("process_cpu_seconds_total") + children.ru_utime + children.ru_stime
        with self._lock:
            # A worker reaped between the reads above is counted in neither
            # or in both: never let the counter go backwards.
            cpu = self._cpu = max(self._cpu, cpu)
        result.append(
            CounterMetricFamily(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds, by the parent "
                "and every worker process, live or exited.",
                value=cpu,
            )
        )
        for name, text in (
            ("process_virtual_memory_bytes", "Virtual memory size in bytes"),
            ("process_resident_memory_bytes", "Resident memory size in bytes"),
            ("process_open_fds", "Number of open file descriptors"),
        ):
            if name in parent:
                result.append(
                    GaugeMetricFamily(
                        name, f"{text}, summed over the parent and its workers.", summed(name)
                    )
                )
        for name, text in (
            ("process_max_fds", "Maximum number of open file descriptors (per process)."),
            (
                "process_start_time_seconds",
                "Start time of the parent process since unix epoch in seconds.",
            ),
        ):
            if name in parent:
                result.append(GaugeMetricFamily(name, text, parent[name]))
        workerCpu = CounterMetricFamily(
            WORKER_PREFIX + "cpu_seconds",
            "CPU time of each worker process in seconds (from 0 again when it is replaced).",
            labels=[WORKER_LABEL],
        )
        workerRss = GaugeMetricFamily(
            WORKER_PREFIX + "resident_memory_bytes",
            "Resident memory size of each worker process in bytes.",
            labels=[WORKER_LABEL],
        )
        for worker, samples in workers:
            if samples:
                workerCpu.add_metric([worker], samples.get("process_cpu_seconds_total", 0.0))
                workerRss.add_metric([worker], samples.get("process_resident_memory_bytes", 0.0))
        result.extend([workerCpu, workerRss])
        return result


def workersRegistry(
    path: Callable[[], str | None],
    workers: Callable[[], Sequence[tuple[str, int]]],
    registry: CollectorRegistry | None = None,
) -> CollectorRegistry:
    """
    The parent's registry with C{--workers N}: the workers' multiprocess
    files in C{path()}, the process tree of C{workers()} (pairs of worker
    number and pid), and C{python_info}.  Not prometheus_client's global
    registry, whose process collector would only see the parent.
    """
    if registry is None:
        registry = CollectorRegistry()
    registry.register(WorkerFilesCollector(path))
    registry.register(ProcessTreeCollector(workers))
    PlatformCollector(registry=registry)
    return registry
