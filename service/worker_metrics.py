"""The gunicorn workers as processes: CPU, memory, open files and start time per worker slot, restarts, and
requests in flight against the workers' capacity.

prometheus-client's process collector does not work in multiprocess mode: the exposition is merged from
the workers' files, and a collector reports only the process that serves the scrape. So the master gives
each worker a slot (the lowest free one, 0 … workers − 1, taken over by the worker that replaces one that
exited: a bounded label, unlike the pid), the worker writes its pid under its slot, and at each scrape
`WorkerProcessCollector` reads /proc for every slot's pid, in whichever process serves /metrics (a worker,
or the master on SERVICE_METRICS_PORT). /proc answers for a stopped or hung worker too, when it matters.

These metrics are declared here, not in `service.metrics`, because the master records some of them and
must not import the model. Import this module only after PROMETHEUS_MULTIPROC_DIR is set.
"""

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SLOTS_DIR = "worker-slots"  # in the multiprocess directory; not *.db, so the metric collector skips it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# A crash loop is workers dying young: the 60 s bucket is the one the alert reads.
LIFETIME_BUCKETS = (1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 24 * 3600.0)

service_workers = Gauge(
    "service_workers",
    "Worker processes the gunicorn master keeps (SERVICE_WORKERS): the service's capacity, since each "
    "worker computes one request at a time.",
    multiprocess_mode="livemax",
)
http_requests_in_flight = Gauge(
    "http_requests_in_flight",
    "Requests read and not yet answered, summed over the workers (each samples its own once a second); "
    "more than service_workers means requests wait.",
    multiprocess_mode="livesum",
)
service_worker_lifetime_seconds = Histogram(
    "service_worker_lifetime_seconds",
    "How long each worker that exited had run; _count is the number of worker restarts.",
    buckets=LIFETIME_BUCKETS,
)


def assign_slot(server: Any, worker: Any) -> None:
    """gunicorn `pre_fork` hook (master): the lowest slot no live worker holds, and the start time."""
    taken = {getattr(other, "slot", None) for other in server.WORKERS.values()}
    worker.slot = next(slot for slot in itertools.count() if slot not in taken)
    worker.started_at = time.monotonic()


def record_slot(directory: Path, slot: int, pid: int) -> None:
    """In the new worker: write its pid under its slot (atomically: a scrape may read it at any time)."""
    slots = directory / SLOTS_DIR
    slots.mkdir(exist_ok=True)
    partial = slots / f".{slot}.{pid}"
    partial.write_text(str(pid))
    partial.replace(slots / str(slot))


def record_exit(worker: Any) -> None:
    """gunicorn `child_exit` hook (master): one restart, and how long the worker lived."""
    service_worker_lifetime_seconds.observe(time.monotonic() - worker.started_at)


def boot_time_seconds() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise RuntimeError("no btime line in /proc/stat")


class WorkerProcessCollector(Collector):
    """/proc figures of the live workers of the gunicorn master `master_pid`, one series per slot."""

    def __init__(self, directory: Path, master_pid: int) -> None:
        self._slots = directory / SLOTS_DIR
        self._master_pid = master_pid
        self._boot_time = boot_time_seconds()

    def _workers(self) -> Iterator[tuple[str, int, list[bytes]]]:
        """(slot, pid, /proc/<pid>/stat fields after the command name) of each slot's live worker."""
        try:
            slots = sorted(entry for entry in os.listdir(self._slots) if entry.isdigit())
        except FileNotFoundError:
            return
        for slot in slots:
            try:
                pid = int((self._slots / slot).read_text())
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, ValueError):  # exited, and not yet replaced
                continue
            if int(fields[1]) == self._master_pid:  # else the pid was reused by another process
                yield slot, pid, fields

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "service_worker_cpu_seconds", "User and system CPU time of the worker.", labels=["worker"]
        )
        memory = GaugeMetricFamily(
            "service_worker_resident_memory_bytes", "Resident memory of the worker.", labels=["worker"]
        )
        fds = GaugeMetricFamily("service_worker_open_fds", "Open file descriptors.", labels=["worker"])
        started = GaugeMetricFamily(
            "service_worker_start_time_seconds",
            "Start of the worker process, seconds since the epoch.",
            labels=["worker"],
        )
        for slot, pid, fields in self._workers():
            # fields[0] is field 3 of proc(5): utime 14, stime 15, starttime 22, rss 24
            cpu.add_metric([slot], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
            memory.add_metric([slot], int(fields[21]) * PAGE_BYTES)
            started.add_metric([slot], self._boot_time + int(fields[19]) / CLOCK_TICKS)
            try:
                fds.add_metric([slot], len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                pass
        yield from (cpu, memory, fds, started)
