"""Traffic generator for drills and tests: rows like the training data, outliers, or one drifted feature.

Bounded by construction: it sends at most rate × duration requests and stops by itself.
"""

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from service.model_files import TRAINING_DATA_FILE

JITTER_FRACTION_OF_STDDEV = 0.05
OUTLIER_DISTANCE_IN_STDDEVS = 4.0


@dataclass(frozen=True)
class Scenario:
    name: str  # normal | outliers | drift
    outlier_fraction: float = 0.4
    feature: str = "petal_length"
    factor: float = 1.1


class RowSource:
    """Draws rows: training rows resampled with a little jitter, outliers, or a feature scaled by a factor."""

    def __init__(self, training_rows: np.ndarray, feature_names: list[str], scenario: Scenario, seed: int):
        self._rows = training_rows
        self._mean = training_rows.mean(axis=0)
        self._stddev = training_rows.std(axis=0)
        self._scenario = scenario
        self._feature_index = feature_names.index(scenario.feature)
        self._rng = np.random.default_rng(seed)
        self._mirror: np.ndarray | None = None

    def _normal_row(self) -> np.ndarray:
        row = self._rows[self._rng.integers(len(self._rows))]
        return row + self._rng.normal(0.0, JITTER_FRACTION_OF_STDDEV * self._stddev)

    def _outlier_row(self) -> np.ndarray:
        # Outliers come in mirrored pairs around the training mean, so they raise the outlier ratio
        # without moving any feature's mean: the outlier drill must not also look like drift.
        if self._mirror is not None:
            row, self._mirror = self._mirror, None
            return row
        signs = self._rng.choice([-1.0, 1.0], size=len(self._mean))
        row = self._mean + signs * OUTLIER_DISTANCE_IN_STDDEVS * self._stddev
        self._mirror = 2 * self._mean - row
        return row

    def next_row(self) -> list[float]:
        scenario = self._scenario
        wants_outlier = self._mirror is not None or self._rng.random() < scenario.outlier_fraction
        if scenario.name == "outliers" and wants_outlier:
            row = self._outlier_row()
        else:
            row = self._normal_row()
            if scenario.name == "drift":
                row[self._feature_index] *= scenario.factor
        return [round(float(value), 4) for value in row]


def load_training_rows(model_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The training rows that `train` writes beside the models, and their feature names."""
    path = model_dir / TRAINING_DATA_FILE
    with path.open() as file:
        header = file.readline().strip().split(",")
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2), header


async def run(url: str, source: RowSource, rate: float, duration: float, concurrency: int = 8) -> dict:
    """Send POST /predict at `rate` requests per second for `duration` seconds; return counts."""
    total = int(rate * duration)
    counts = {"sent": 0, "ok": 0, "outliers": 0, "errors": 0}
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, row: list[float]) -> None:
        async with semaphore:
            try:
                response = await client.post("/predict", json={"data": [row]})
                if response.status_code == 200:
                    counts["ok"] += 1
                    counts["outliers"] += bool(response.json()["is_outlier"])
                else:
                    counts["errors"] += 1
            except httpx.HTTPError:
                counts["errors"] += 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5.0) as client:
        tasks = set()
        for index in range(total):
            # pace by the schedule, not by sleeps per request, so the rate holds under load
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(client, source.next_row()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            counts["sent"] += 1
        await asyncio.gather(*tasks)
    return counts
