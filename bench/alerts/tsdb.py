"""Samples into a Prometheus TSDB and queries out of it: OpenMetrics text with timestamps,
`promtool tsdb create-blocks-from openmetrics`, and a real Prometheus 2.42 serving the blocks on 127.0.0.1.
"""

import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import numpy as np
import orjson

from stack.processes import free_port, require_binary, wait_until_ready

# promtool rounds --max-block-duration down to 2h·3^k; 486h (20 days) holds the simulated week in one
# block, so promtool reads the file once instead of once per 2-hour block.
MAX_BLOCK_DURATION = "500h"
STEPS_PER_QUERY = 1000  # well below query_range's 11,000 points, and bounds each answer's size
QUERY_THREADS = 2


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def series_text(name: str, labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return f"{name}{{{inner}}}"


def write_series(out: TextIO, series: str, timestamps: np.ndarray, values: np.ndarray) -> None:
    """One series' samples, in time order (timestamps in seconds)."""
    stamps = [f"{t:.3f}".rstrip("0").rstrip(".") for t in timestamps.tolist()]
    prefix = series + " "
    out.write(
        "".join(
            [f"{prefix}{value!r} {stamp}\n" for value, stamp in zip(values.tolist(), stamps, strict=True)]
        )
    )


def create_blocks(openmetrics: Path, output_dir: Path) -> list[Path]:
    """The blocks promtool made of `openmetrics` (which must end with `# EOF`), in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.iterdir())
    result = subprocess.run(
        [
            require_binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            f"--max-block-duration={MAX_BLOCK_DURATION}",
            str(openmetrics),
            str(output_dir),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"promtool create-blocks-from openmetrics {openmetrics} failed:\n{result.stderr[-3000:]}"
        )
    return sorted(set(output_dir.iterdir()) - before)


@dataclass
class QueryResult:
    labels: dict[str, str]
    timestamps: np.ndarray  # seconds
    values: np.ndarray


class Prometheus:
    """A Prometheus serving the blocks in `data_dir` (nothing scraped, nothing evaluated by itself)."""

    def __init__(self, data_dir: Path, work_dir: Path, lookback_seconds: float) -> None:
        self.data_dir = data_dir
        self._work_dir = work_dir
        self._lookback = lookback_seconds
        self._process: subprocess.Popen | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(900.0))
        self.url = ""

    def start(self) -> None:
        config = self._work_dir / "prometheus-empty.yml"
        config.write_text("global: {}\n")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = self._work_dir / "prometheus.log"
        with log.open("ab") as output:
            self._process = subprocess.Popen(
                [
                    require_binary("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.data_dir}",
                    "--storage.tsdb.retention.time=100y",  # the simulated samples are in the past
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--query.lookback-delta={self._lookback:g}s",
                    "--query.timeout=15m",
                    "--query.max-samples=2000000000",
                    "--log.level=warn",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_ready(self.url + "/-/ready", self._process, log, timeout=300.0)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._client.close()

    def add_blocks(self, blocks: list[Path]) -> None:
        """Move blocks into the data directory and restart, so the next queries see them."""
        self.stop()
        for block in blocks:
            shutil.move(str(block), self.data_dir / block.name)
        self.start()

    def _query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        response = self._client.post(
            self.url + "/api/v1/query_range",
            data={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )
        body = orjson.loads(response.content)
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"query_range failed ({response.status_code}): {body.get('error')}\n{expr}")
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[QueryResult]:
        """Every series of `expr` evaluated at start, start + step, ... ≤ end, split in pieces."""
        pieces = []
        first = start
        while first <= end:
            last = min(first + (STEPS_PER_QUERY - 1) * step, end)
            pieces.append((first, last))
            first = last + step
        with ThreadPoolExecutor(QUERY_THREADS) as pool:
            answers = list(pool.map(lambda piece: self._query_range(expr, piece[0], piece[1], step), pieces))
        merged: dict[tuple, tuple[dict, list]] = {}
        for answer in answers:
            for series in answer:
                key = tuple(sorted(series["metric"].items()))
                merged.setdefault(key, (series["metric"], []))[1].extend(series["values"])
        results = []
        for metric, points in merged.values():
            timestamps = np.fromiter((p[0] for p in points), dtype=np.float64, count=len(points))
            values = np.array([p[1] for p in points], dtype=np.float64)
            results.append(QueryResult(metric, timestamps, values))
        return results
