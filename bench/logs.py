"""`python -m bench.logs`: time and peak memory of `python -m service logs summary` and `report` over large
prediction logs, mostly in rotated .gz parts, written by the service's own code (`bench.log_data`).

Each size gets its log (generated once into --work-dir, kept for reruns), then, in processes of their own:
the floor — decompressing and counting every line (`gzip -dc`/`cat` into `wc -l`) — then `summary`,
`summary --every 5m` and `report`, each with its wall time, its ratio to the floor and its peak RSS
(`wait4`'s ru_maxrss of that one process). Two sizes show whether memory follows the query or the log.
"""

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.log_data import write_log
from service.settings import Settings

ROTATE_BYTES = Settings.model_fields["log_max_bytes"].default  # the service's default: 100 MiB
RESULTS = Path(__file__).resolve().parent / "results" / "logs.md"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    what: str
    seconds: float
    cpu_seconds: float  # user + system, of the process and its children: what a shared machine cannot inflate
    peak_rss_bytes: int


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the peak resident memory of the process's own address space (0 once it has exited).

    Not wait4's ru_maxrss, which also counts the memory the child inherited from this Python at fork."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(what: str, command: list[str] | str, shell: bool = False) -> Measurement:
    """Run one command to its end: its wall and CPU time, and its peak RSS read every 20 ms until it exits."""
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, peak_rss_bytes(process.pid))
        time.sleep(0.02)  # sampling, not waiting for a condition: VmHWM only grows, the last read is kept
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}): {stderr}")
    return Measurement(what, seconds, usage.ru_utime + usage.ru_stime, peak)


def log_for(work_dir: Path, model_dir: Path, predictions: int) -> Path:
    directory = work_dir / f"{predictions}"
    done = directory / "complete"
    if not done.exists():
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("predictions.jsonl*"):
            stale.unlink()
        print(f"writing a log of {predictions:,} predictions into {directory}…", file=sys.stderr, flush=True)
        started = time.perf_counter()
        write_log(
            model_dir, directory / "predictions.jsonl", predictions, max_bytes=ROTATE_BYTES, backup_count=100
        )
        print(f"  written in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        done.touch()
    return directory


def describe(directory: Path) -> tuple[int, int, int]:
    """Files, bytes on disk, and bytes of lines (the .gz parts decompressed)."""
    files = [path for path in directory.glob("predictions.jsonl*") if path.suffix in (".jsonl", ".gz")]
    on_disk = sum(path.stat().st_size for path in files)
    lines = 0
    for path in files:
        if path.suffix == ".gz":
            with open(path, "rb") as file:  # gzip's trailer: the uncompressed size modulo 2^32
                file.seek(-4, os.SEEK_END)
                lines += int.from_bytes(file.read(4), "little")
        else:
            lines += path.stat().st_size
    return len(files), on_disk, lines


def measure_size(directory: Path, model_dir: Path) -> list[Measurement]:
    logs = ["--logs", str(directory / "predictions.jsonl*"), "--model-dir", str(model_dir)]
    service_logs = [sys.executable, "-m", "service", "logs"]
    parts = " ".join(str(path) for path in sorted(directory.glob("predictions.jsonl.*.gz")))
    floor = f"(gzip -dc {parts}; cat {directory / 'predictions.jsonl'}) | wc -l"
    return [
        measure("floor: decompress and count the lines", floor, shell=True),
        measure("logs summary", [*service_logs, "summary", *logs]),
        measure("logs summary --every 5m", [*service_logs, "summary", "--every", "5m", *logs]),
        measure("logs report", [*service_logs, "report", "--output", str(directory / "report.html"), *logs]),
    ]


def table(results: dict[int, tuple[tuple[int, int, int], list[Measurement]]]) -> str:
    lines = [
        "| predictions | files | on disk | lines | command | wall s | CPU s | CPU × floor | peak RSS |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for predictions, ((files, on_disk, raw), measurements) in results.items():
        floor, *commands = measurements
        size = f"| {predictions:,} | {files} | {on_disk / MIB:,.0f} MiB | {raw / MIB:,.0f} MiB "
        # no RSS for the floor: a shell pipeline's, not one process's
        lines.append(f"{size}| {floor.what} | {floor.seconds:.1f} | {floor.cpu_seconds:.1f} | 1.0 | – |")
        for command in commands:
            lines.append(
                f"{size}| {command.what} | {command.seconds:.1f} | {command.cpu_seconds:.1f} "
                f"| {command.cpu_seconds / floor.cpu_seconds:.1f} | {command.peak_rss_bytes / MIB:,.0f} MiB |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__)
    parser.add_argument(
        "--predictions",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1_000_000, 3_000_000],
        help="log sizes in predictions, comma-separated (default: 1000000,3000000)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="trained models (default: models)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".run/bench-logs"),
        help="where the logs are kept (default: .run/bench-logs)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"markdown file to write (default: {RESULTS})"
    )
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    results = {}
    for predictions in args.predictions:
        directory = log_for(args.work_dir, args.model_dir, predictions)
        print(f"measuring {predictions:,} predictions…", file=sys.stderr, flush=True)
        results[predictions] = (describe(directory), measure_size(directory, args.model_dir))
    header = (
        f"`python -m bench.logs --predictions {','.join(str(p) for p in args.predictions)}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, DuckDB {duckdb_version()}; "
        f"rotated at {ROTATE_BYTES // MIB} MiB; load average before: {load_before:.1f}, after: "
        f"{os.getloadavg()[0]:.1f} (2 cores shared: wall times stretch, CPU times much less)."
    )
    text = f"{header}\n\n{table(results)}\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    return 0


def duckdb_version() -> str:
    import duckdb

    return duckdb.__version__


if __name__ == "__main__":
    sys.exit(main())
