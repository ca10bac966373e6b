"""The prediction log: rotation keeps every line, processes share a file safely, the writer survives."""

import gzip
import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import MemorySink

from service.prediction_log import MAX_PENDING_BYTES, PredictionLog, RotatingFileSink

WAIT_SECONDS = 10.0


def line(index: int, writer: int = 0) -> bytes:
    return json.dumps({"id": f"{writer}-{index}", "payload": "x" * (index % 37)}).encode() + b"\n"


def rotated_files(path: Path) -> list[Path]:
    """path.1.gz, path.2.gz, ... in index order (1 is the newest)."""
    files = list(path.parent.glob(path.name + ".*.gz"))
    return sorted(files, key=lambda file: int(file.name[len(path.name) + 1 : -len(".gz")]))


def all_lines_oldest_first(path: Path) -> list[bytes]:
    chunks = [gzip.decompress(file.read_bytes()) for file in reversed(rotated_files(path))]
    if path.exists():
        chunks.append(path.read_bytes())
    return b"".join(chunks).splitlines(keepends=True)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_SECONDS} s waiting for {what}")
        time.sleep(0.01)


def test_rotating_sink_keeps_every_line_in_order_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    sink = RotatingFileSink(path, max_bytes=4096, backup_count=1000)
    written = [line(index) for index in range(5000)]
    for data in written:
        sink.write(data)
    sink.close()
    assert len(rotated_files(path)) > 10  # it did rotate, many times
    assert all_lines_oldest_first(path) == written


def test_rotating_sink_rotates_at_max_bytes_into_numbered_gzip_files(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    sink = RotatingFileSink(path, max_bytes=4096, backup_count=1000)
    for index in range(2000):
        sink.write(line(index))
    sink.close()
    files = rotated_files(path)
    assert [file.name for file in files] == [f"predictions.jsonl.{i}.gz" for i in range(1, len(files) + 1)]
    sizes = [len(gzip.decompress(file.read_bytes())) for file in files]
    longest_line = max(len(line(index)) for index in range(2000))
    assert all(4096 - longest_line < size <= 4096 for size in sizes)
    assert 0 < path.stat().st_size <= 4096


def test_rotating_sink_keeps_only_backup_count_rotated_files_and_the_newest_lines(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    sink = RotatingFileSink(path, max_bytes=1024, backup_count=3)
    written = [line(index) for index in range(2000)]
    for data in written:
        sink.write(data)
    sink.close()
    assert [file.name for file in rotated_files(path)] == [f"predictions.jsonl.{i}.gz" for i in (1, 2, 3)]
    kept = all_lines_oldest_first(path)
    assert kept == written[-len(kept) :]  # the newest lines, none missing in between


def write_lines(path: Path, writer: int, count: int) -> None:
    sink = RotatingFileSink(path, max_bytes=8192, backup_count=1000)
    for index in range(count):
        sink.write(line(index, writer))
    sink.close()


def test_two_processes_writing_with_rotation_lose_and_duplicate_no_line(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    per_writer = 3000
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=write_lines, args=(path, writer, per_writer)) for writer in (1, 2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    lines = all_lines_oldest_first(path)
    ids = [json.loads(data)["id"] for data in lines]  # every line is whole JSON
    assert len(rotated_files(path)) > 10
    assert len(ids) == 2 * per_writer
    assert set(ids) == {f"{writer}-{index}" for writer in (1, 2) for index in range(per_writer)}


class BlockingSink(MemorySink):
    """Holds its first write until released, so records pile up in the queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> None:
        self.entered.set()
        assert self.release.wait(WAIT_SECONDS)
        super().write(data)


def record(index: int) -> dict:
    return {"timestamp": 0.0, "job_id": str(index)}


def test_close_writes_every_queued_record_then_closes_the_sink(tmp_path: Path) -> None:
    sink = BlockingSink()
    log = PredictionLog(sink)
    log.write(record(0))
    wait_until(sink.entered.is_set, "the first write")
    for index in range(1, 5000):
        log.write(record(index))  # queued behind the blocked write
    sink.release.set()
    log.close()
    assert [json.loads(data)["job_id"] for data in sink.data.splitlines()] == [str(i) for i in range(5000)]
    assert sink.closed


def test_write_waits_for_a_blocked_sink_instead_of_buffering_without_bound() -> None:
    sink = BlockingSink()
    log = PredictionLog(sink)
    log.write(record(0))
    wait_until(sink.entered.is_set, "the first write")
    megabyte_record = {"timestamp": 0.0, "job_id": "big", "input": "x" * 1_000_000}
    records = MAX_PENDING_BYTES // 1_000_000 + 4
    returned = threading.Event()

    def write_many() -> None:
        for _ in range(records):
            log.write(megabyte_record)
        returned.set()

    writer = threading.Thread(target=write_many)
    writer.start()
    # the write that takes the buffer past the limit cannot return while the sink holds the first batch
    wait_until(lambda: len(log._buffer) > MAX_PENDING_BYTES, "the buffer to pass its limit")
    assert not returned.is_set()
    assert len(log._buffer) < MAX_PENDING_BYTES + 1_100_000  # bounded: no write got past the waiting one
    sink.release.set()
    writer.join(WAIT_SECONDS)
    assert returned.is_set()
    log.close()
    assert len(sink.data.splitlines()) == 1 + records


def rss_bytes() -> int:
    for status_line in Path("/proc/self/status").read_text().splitlines():
        if status_line.startswith("VmRSS:"):
            return int(status_line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_lines_waiting_for_a_stalled_sink_cost_about_their_own_size_in_memory() -> None:
    sink = BlockingSink()
    log = PredictionLog(sink)
    log.write(record(0))
    wait_until(sink.entered.is_set, "the first write")
    prediction = {
        "timestamp": datetime.now(UTC),
        "job_id": "c597365a-7558-49c6-bcce-c632807574b6",
        "input": [[5.1, 3.5, 1.4, 0.2]],
        "prediction": [[0.9802872538566589, 0.01971195638179779, 7.484755997211323e-7]],
    }
    before = rss_bytes()
    for _ in range(40_000):  # ~8 MB of lines, under the back-pressure limit
        log.write(prediction)
    waiting = len(log._buffer)
    growth = rss_bytes() - before
    sink.release.set()
    log.close()
    # lines kept as separate orjson results held ~4 KiB of heap each: 150 MiB for these
    assert growth < 3 * waiting, f"RSS grew {growth / 2**20:.0f} MiB for {waiting / 2**20:.0f} MiB of lines"


class FailingOnceSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, data: bytes) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        super().write(data)


def test_a_failing_write_does_not_stop_the_writer_thread(capfd: pytest.CaptureFixture[str]) -> None:
    sink = FailingOnceSink()
    log = PredictionLog(sink)
    log.write(record(0))
    wait_until(lambda: sink.calls == 1, "the failing write")
    log.write(record(1))
    wait_until(lambda: sink.calls == 2, "the write after the failure")
    log.close()
    assert [json.loads(data)["job_id"] for data in sink.data.splitlines()] == ["1"]
    assert "prediction log: dropped 1 lines" in capfd.readouterr().err


def test_records_are_json_lines_with_a_utc_iso_timestamp() -> None:
    sink = MemorySink()
    log = PredictionLog(sink)
    timestamp = datetime(2026, 11, 25, 12, 46, 21, 473828, tzinfo=UTC)
    log.write({"timestamp": timestamp, "job_id": "a", "input": "line\nbreak"})
    log.close()
    assert bytes(sink.data) == (
        b'{"timestamp":"2026-11-25T12:46:21.473828+00:00","job_id":"a","input":"line\\nbreak"}\n'
    )
    assert json.loads(sink.data)["timestamp"] == timestamp.isoformat()
