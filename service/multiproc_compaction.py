"""Fold the metric files of dead gunicorn workers into one archive file per type, so they cannot pile up.

In multiprocess mode every worker writes its own `counter_<pid>.db` and `histogram_<pid>.db`. When a worker
exits, `mark_process_dead` removes only its live gauges: its counters and histograms must keep counting in
/metrics, so their files stay. With worker recycling (SERVICE_MAX_REQUESTS) or crashing workers, every dead
worker leaves two files behind, and every scrape reads all of them. So when a worker exits, the gunicorn
master adds its values into `counter_archive.db` / `histogram_archive.db` (prometheus-client's own file
format, read by `MultiProcessCollector` like any other file) and deletes its files.

A scrape that read the files while a worker was being folded could count it twice, or not at all, or fail on
a file deleted under it. Folding therefore holds an exclusive `flock`, and scrapes hold it shared
(`LockedMultiProcessCollector`). Gauges of the non-live modes (`max`, `sum`, ...) are not folded: the
service has none.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

ARCHIVE = "archive"  # stands where the pid stands in the file name
FOLDED_TYPES = ("counter", "histogram")
LOCK_FILE = "folding.lock"  # not *.db: the collector reads only those


@contextmanager
def folding_lock(directory: Path, operation: int) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # also releases the lock


def fold_dead_worker(directory: Path, pid: int) -> None:
    """Add the counters and histograms of the exited process `pid` to the archives, then delete its files."""
    with folding_lock(directory, fcntl.LOCK_EX):
        for metric_type in FOLDED_TYPES:
            dead = directory / f"{metric_type}_{pid}.db"
            if not dead.exists():
                continue
            archive = MmapedDict(str(directory / f"{metric_type}_{ARCHIVE}.db"))
            try:
                for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(dead)):
                    archived, _ = archive.read_value(key)
                    archive.write_value(key, archived + value, 0.0)
            finally:
                archive.close()
            dead.unlink()


class LockedMultiProcessCollector(MultiProcessCollector):
    """Merges the workers' files only while no dead worker is being folded (shared lock)."""

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        self._directory = directory
        super().__init__(registry, str(directory))

    def collect(self) -> list[Metric]:
        with folding_lock(self._directory, fcntl.LOCK_SH):
            return list(super().collect())


def multiprocess_registry(directory: Path, master_pid: int) -> CollectorRegistry:
    """A registry that reads every worker's metric files (and the archives) at each collection, and the
    /proc figures of the workers of the gunicorn master `master_pid`."""
    from service.worker_metrics import WorkerProcessCollector

    registry = CollectorRegistry()
    LockedMultiProcessCollector(registry, directory)
    registry.register(WorkerProcessCollector(directory, master_pid))
    return registry
