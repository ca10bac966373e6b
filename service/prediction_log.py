"""The prediction log: one JSON object per line for every prediction request, valid or not.

Requests only put a record on a queue; a background thread encodes and writes. Several gunicorn workers
share one destination, so every write (and every rotation of the log file) happens under an exclusive
`flock`: lines never interleave and rotation never loses or duplicates a line.
"""

import fcntl
import gzip
import os
import queue
import shutil
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

MAX_LOGGED_BODY_CHARS = 2048  # a rejected body is logged as text, cut to this many characters
_BATCH_LINES = 512
_STOP = object()


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class _FileLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StreamSink:
    """Writes to an inherited file descriptor (stdout by default), serialised across processes."""

    def __init__(self, lock_path: Path, fd: int = 1) -> None:
        self._fd = fd
        self._lock = _FileLock(lock_path)

    def write(self, data: bytes) -> None:
        with self._lock:
            _write_all(self._fd, data)

    def close(self) -> None:
        self._lock.close()


class RotatingFileSink:
    """Appends to `path`; past `max_bytes` the file becomes `path.1.gz` and older ones shift up."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backup_count = backup_count
        self._lock = _FileLock(path.with_name(path.name + ".lock"))
        self._fd = -1

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _current_file_is_ours(self) -> bool:
        # another process may have rotated the file since we opened it
        try:
            return self._fd >= 0 and os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}.gz")

    def _rotate(self) -> None:
        self._rotated(self._backup_count).unlink(missing_ok=True)
        for index in range(self._backup_count - 1, 0, -1):
            if self._rotated(index).exists():
                os.replace(self._rotated(index), self._rotated(index + 1))
        with open(self.path, "rb") as source, gzip.open(self._rotated(1), "wb") as target:
            shutil.copyfileobj(source, target)
        os.unlink(self.path)
        self._open()

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self._current_file_is_ours():
                self._open()
            size = os.fstat(self._fd).st_size
            if size and size + len(data) > self._max_bytes:
                self._rotate()
            _write_all(self._fd, data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lock.close()


def _encode(record: dict[str, Any]) -> bytes:
    record["timestamp"] = datetime.fromtimestamp(record["timestamp"], UTC).isoformat(timespec="microseconds")
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


class PredictionLog:
    """Queue in front of a sink: `write` never blocks the request; a thread does the encoding and I/O."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """record: JSON-able values and numpy arrays; `timestamp` is seconds since the epoch."""
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            records = [self._queue.get()]
            while len(records) < _BATCH_LINES:
                try:
                    records.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in records
            if stop:
                records = records[: records.index(_STOP)]
            if records:
                try:
                    self._sink.write(b"".join(_encode(record) for record in records))
                except Exception as error:  # a full disk must not kill the thread and pile up the queue
                    print(f"prediction log: dropped {len(records)} lines: {error!r}", file=sys.stderr)
            if stop:
                return

    def close(self) -> None:
        """Write everything queued so far, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()
        self._sink.close()


def truncate_body(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    if len(text) <= MAX_LOGGED_BODY_CHARS:
        return text
    return text[:MAX_LOGGED_BODY_CHARS] + f"…[{len(text) - MAX_LOGGED_BODY_CHARS} more characters]"
