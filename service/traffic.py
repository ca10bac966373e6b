"""Traffic generator for drills, tests and the alert simulation: rows like the training data, outliers, one
feature shifted or spread out, or one class far more often than in training.

Bounded by construction: it sends at most rate × duration requests and stops by itself.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from service.model_files import TRAINING_DATA_FILE

JITTER_FRACTION_OF_STDDEV = 0.05
OUTLIER_DISTANCE_IN_STDDEVS = 4.0
SCENARIOS = ("normal", "outliers", "drift", "spread", "class-share")
BATCH = 256  # rows drawn at a time for `next_row`


@dataclass(frozen=True)
class Scenario:
    """normal: training rows with a little jitter; outliers: `outlier_fraction` of the rows far from the
    training data; drift: `feature` multiplied by `factor`; spread: `feature` spread by `factor` around its
    training mean (the mean stays); class-share: rows of class `label` make up `share` of the traffic."""

    name: str
    outlier_fraction: float = 0.4
    feature: str = "petal_length"
    factor: float = 1.1
    label: str = "setosa"
    share: float = 0.8

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; one of {', '.join(SCENARIOS)}")


@dataclass(frozen=True)
class TrainingData:
    rows: np.ndarray  # (n, features) float64
    feature_names: list[str]
    labels: np.ndarray  # (n,) str: the true class of each row


def load_training_data(model_dir: Path) -> TrainingData:
    """The training rows that `train` writes beside the models, with their feature names and classes."""
    path = model_dir / TRAINING_DATA_FILE
    with path.open() as file:
        header = file.readline().strip().split(",")
    if header[-1] != "label":
        raise ValueError(f"{path}: expected a last column 'label'; run `python -m service train` again")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=str)
    return TrainingData(table[:, :-1].astype(float), header[:-1], table[:, -1])


class RowSource:
    """Draws rows for one scenario, seeded: `rows(n)` for many at once, `next_row()` for one."""

    def __init__(self, training: TrainingData, scenario: Scenario, seed: int) -> None:
        if scenario.feature not in training.feature_names:
            known = ", ".join(training.feature_names)
            raise ValueError(f"unknown feature {scenario.feature!r}; one of {known}")
        if scenario.name == "class-share" and scenario.label not in set(training.labels.tolist()):
            known = ", ".join(sorted(set(training.labels.tolist())))
            raise ValueError(f"unknown label {scenario.label!r}; one of {known}")
        self._rows = training.rows
        self._mean = training.rows.mean(axis=0)
        self._stddev = training.rows.std(axis=0)
        self._scenario = scenario
        self._feature_index = training.feature_names.index(scenario.feature)
        self._in_class = np.flatnonzero(training.labels == scenario.label)
        self._not_in_class = np.flatnonzero(training.labels != scenario.label)
        self._rng = np.random.default_rng(seed)
        self._mirror: np.ndarray | None = None  # the twin still owed by the last outlier
        self._batch: list[list[float]] = []

    def _training_rows(self, n: int) -> np.ndarray:
        scenario = self._scenario
        if scenario.name == "class-share":
            from_class = self._rng.random(n) < scenario.share
            indices = np.where(
                from_class,
                self._rng.choice(self._in_class, size=n),
                self._rng.choice(self._not_in_class, size=n),
            )
        else:
            indices = self._rng.integers(len(self._rows), size=n)
        jitter = self._rng.normal(0.0, JITTER_FRACTION_OF_STDDEV * self._stddev, size=(n, len(self._mean)))
        return self._rows[indices] + jitter

    def _outlier_rows(self, n: int) -> np.ndarray:
        # Outliers come in mirrored pairs around the training mean (every second one is the twin of the one
        # before), so they raise the outlier share without moving any feature's mean: the outlier drill must
        # not also look like drift. The share of outlier rows is exactly the outlier fraction.
        owed = [] if self._mirror is None or n == 0 else [self._mirror]
        pairs = (n - len(owed) + 1) // 2
        signs = self._rng.choice([-1.0, 1.0], size=(pairs, len(self._mean)))
        first = self._mean + signs * OUTLIER_DISTANCE_IN_STDDEVS * self._stddev
        pairs_rows = np.stack([first, 2 * self._mean - first], axis=1).reshape(-1, len(self._mean))
        rows = np.concatenate([np.array(owed).reshape(-1, len(self._mean)), pairs_rows])
        if n:
            self._mirror = rows[n] if len(rows) > n else None
        return rows[:n]

    def rows(self, n: int) -> np.ndarray:
        """n rows of the scenario, rounded to 4 decimals as a client would send them."""
        scenario = self._scenario
        rows = self._training_rows(n)
        column = self._feature_index
        if scenario.name == "outliers":
            is_outlier = self._rng.random(n) < scenario.outlier_fraction
            rows[is_outlier] = self._outlier_rows(int(is_outlier.sum()))
        elif scenario.name == "drift":
            rows[:, column] *= scenario.factor
        elif scenario.name == "spread":
            mean = self._mean[column]
            rows[:, column] = mean + scenario.factor * (rows[:, column] - mean)
        return np.round(rows, 4)

    def next_row(self) -> list[float]:
        if not self._batch:
            self._batch = self.rows(BATCH).tolist()[::-1]
        return self._batch.pop()


Progress = Callable[[dict, float], None]  # called with the counts so far and the seconds elapsed


async def run(
    url: str,
    source: RowSource,
    rate: float,
    duration: float,
    concurrency: int = 8,
    progress: Progress | None = None,
    progress_seconds: float = 10.0,
) -> dict:
    """Send POST /predict at `rate` requests per second for `duration` seconds; return counts.

    `progress`, if given, is called every `progress_seconds` while requests go out, and once at the end.
    """
    total = int(rate * duration)
    counts = {"sent": 0, "ok": 0, "outliers": 0, "errors": 0}
    started = time.monotonic()
    next_progress = started + progress_seconds
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
            if progress is not None and time.monotonic() >= next_progress:
                progress(counts, time.monotonic() - started)
                next_progress += progress_seconds
        await asyncio.gather(*tasks)
    if progress is not None:
        progress(counts, time.monotonic() - started)
    return counts
