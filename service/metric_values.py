"""Multiprocess metric values that cost one 8-byte store per update.

prometheus-client's own multiprocess value takes a global lock, checks the process id, looks its key up
in a dict and packs two doubles on every `inc` (about 1 µs; a histogram observation takes two). This one
writes the same files in the same format — one `<type>_<pid>.db` per metric type and process, read by
`MultiProcessCollector` and cleaned up by `mark_process_dead` as before — but locates each value once and
then updates it through a memoryview of the file: `value.doubles[value.index]` is the value.

Every metric of this service is updated from the worker's event loop thread, so updates need no lock.
`install()` must run before the first metric is created; `service.metrics` calls it at import.
"""

from __future__ import annotations  # memoryview[float] is for the type checker only before Python 3.12

import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

from prometheus_client import values
from prometheus_client.mmap_dict import mmap_key

INITIAL_FILE_BYTES = 1 << 16  # as prometheus-client: files start at 64 KiB and double when full
_USED = struct.Struct("i")  # bytes in use, at the start of the file (then 4 bytes of padding)
_ENTRY_HEADER = struct.Struct("i")  # length of the key that follows


class ValueFile:
    """One process's file of (key, value, timestamp) entries in prometheus-client's mmap format."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115 - open for the life of the process
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            self._file.truncate(INITIAL_FILE_BYTES)
            size = INITIAL_FILE_BYTES
        self._map(size)
        self._used = _USED.unpack_from(self._mmap, 0)[0] or 8
        _USED.pack_into(self._mmap, 0, self._used)
        self._positions: dict[str, int] = {}
        position = 8
        while position < self._used:  # a file of this pid from before a restart: keep its entries
            key_length = _ENTRY_HEADER.unpack_from(self._mmap, position)[0]
            key = bytes(self._mmap[position + 4 : position + 4 + key_length]).decode()
            position += 4 + key_length + (8 - (key_length + 4) % 8)
            self._positions[key] = position
            position += 16

    def _map(self, size: int) -> None:
        # Earlier maps stay open while values use them: they map the same pages of the file.
        self._mmap = mmap.mmap(self._file.fileno(), size)
        self._doubles = memoryview(self._mmap).cast("d")

    def cell(self, key: str) -> tuple[memoryview[float], int]:
        """A view of the file as doubles, and the index of the key's value in it (its timestamp is next)."""
        position = self._positions.get(key)
        if position is None:
            encoded = key.encode()
            padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)  # value 8-byte aligned
            entry = _ENTRY_HEADER.pack(len(encoded)) + padded + struct.pack("dd", 0.0, 0.0)
            size = len(self._mmap)
            if self._used + len(entry) > size:
                while self._used + len(entry) > size:
                    size *= 2
                self._file.truncate(size)
                self._map(size)
            self._mmap[self._used : self._used + len(entry)] = entry
            self._used += len(entry)
            _USED.pack_into(self._mmap, 0, self._used)  # written last: readers never see half an entry
            position = self._used - 16
            self._positions[key] = position
        return self._doubles, position // 8


def fast_multiprocess_value_class(directory: str) -> type:
    files: dict[str, ValueFile] = {}
    created: list[Any] = []
    lock = threading.Lock()  # creating values (not updating them) may happen on any thread

    def file_for(prefix: str) -> ValueFile:
        if prefix not in files:
            files[prefix] = ValueFile(Path(directory) / f"{prefix}_{os.getpid()}.db")
        return files[prefix]

    def after_fork_in_child() -> None:
        # as prometheus-client: a forked child starts its own files, with every value back at 0
        files.clear()
        for value in created:
            value._locate()

    os.register_at_fork(after_in_child=after_fork_in_child)

    class FastMmapedValue:
        """Drop-in for prometheus-client's multiprocess value (same constructor and methods)."""

        _multiprocess = True
        # `doubles[index]` is the value itself, in the file: hot paths may add to it directly
        __slots__ = ("_prefix", "_key", "doubles", "index")

        def __init__(
            self,
            typ: str,
            metric_name: str,
            name: str,
            labelnames: Any,
            labelvalues: Any,
            help_text: str,
            multiprocess_mode: str = "",
            **kwargs: Any,
        ) -> None:
            self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            with lock:
                self._locate()
                created.append(self)

        def _locate(self) -> None:
            self.doubles, self.index = file_for(self._prefix).cell(self._key)

        def inc(self, amount: float) -> None:
            self.doubles[self.index] += amount

        def set(self, value: float, timestamp: float | None = None) -> None:
            self.doubles[self.index] = value
            self.doubles[self.index + 1] = timestamp or 0.0

        def set_exemplar(self, exemplar: Any) -> None:
            return  # exemplars do not work in multiprocess mode

        def get(self) -> float:
            return self.doubles[self.index]

        def get_exemplar(self) -> None:
            return None

    return FastMmapedValue


def install() -> None:
    """Use the fast values if prometheus-client is in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set)."""
    if getattr(values.ValueClass, "_multiprocess", False) and values.ValueClass.__name__ == "MmapedValue":
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ["prometheus_multiproc_dir"]
        values.ValueClass = fast_multiprocess_value_class(directory)
