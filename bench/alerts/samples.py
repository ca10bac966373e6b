"""The service's own metric samples for simulated traffic: rows through the real models into a real
`ServiceMetrics` (single-process, fresh registry), scraped every 10 simulated seconds.

Recording every simulated request would take hours (a week at 1,000 requests/s is 6·10^8 rows), so each
scenario gets a seeded pool of rows, predicted once by the real models. Each pool row is recorded on its
own through `ModelMetrics.record` and the registry's values read after it: the difference is that row's
contribution to every series (its "row vector"; counters and histograms only ever add, so a scrape is the
first scrape plus the row vectors of every request so far). A simulated interval with n requests (Poisson
per scrape interval) adds n row vectors drawn uniformly from the pool: digit by digit, as sums of 1, 10,
100, ... random rows (pre-summed tables of 10^k random rows), so the work per interval is at most 9 picks per
digit. Two checks against the registry itself guard the shortcut: the values read after the last row
equal `registry.collect()`, and recording the whole pool in one `record` call (the batch path) gives the
same totals.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from service.metrics import ServiceMetrics
from service.model import Model, Predictions

SCRAPE_SECONDS = 10
GAUGE_EVERY_SCRAPES = 12  # constant gauges are written every 2 minutes: the queries' lookback is longer
GAUGE_SECONDS = GAUGE_EVERY_SCRAPES * SCRAPE_SECONDS
DIGIT_BASE = 10
CHUNK_INTERVALS = 4096  # intervals generated at once (bounds memory)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    labels: tuple[tuple[str, str], ...]
    is_gauge: bool


class _Reader:
    """Reads the chosen series' values straight from a registry's children (prometheus-client's own value
    objects; histogram buckets summed up as the exposition does), in `series` order."""

    def __init__(self, metrics: ServiceMetrics, wanted: set[str]) -> None:
        registry = metrics.registry
        kinds = {
            family.name: family.type
            for family in registry.collect()
            if any(sample.name in wanted for sample in family.samples)
        }
        every: list[Series] = []
        # per child: its value objects (a histogram's buckets, non-cumulative) and a histogram's sum
        self._parts: list[tuple[list[Any], Any]] = []
        collectors: dict[int, Any] = {id(c): c for c in registry._names_to_collectors.values()}
        for collector in collectors.values():
            name = getattr(collector, "_name", "")
            kind = kinds.get(name)
            if kind is None:
                continue
            for label_values, child in sorted(collector._metrics.items()):
                base = tuple(zip(collector._labelnames, label_values, strict=True))
                if kind in ("counter", "gauge"):
                    sample_name = f"{name}_total" if kind == "counter" else name
                    every.append(Series(sample_name, base, kind == "gauge"))
                    self._parts.append(([child._value], None))
                elif kind == "histogram":
                    every += [
                        Series(f"{name}_bucket", (*base, ("le", floatToGoString(bound))), False)
                        for bound in child._upper_bounds
                    ]
                    every += [Series(f"{name}_count", base, False), Series(f"{name}_sum", base, False)]
                    self._parts.append((child._buckets, child._sum))
                else:
                    raise ValueError(f"metric {name}: type {kind} is not simulated")
        self._keep = [one.name in wanted for one in every]
        self.series = [one for one, keep in zip(every, self._keep, strict=True) if keep]

    def read(self) -> list[float]:
        values: list[float] = []
        for counts, total in self._parts:
            if total is None:
                values.append(counts[0].get())
                continue
            cumulative = 0.0
            for bucket in counts:
                cumulative += bucket.get()
                values.append(cumulative)
            values += [cumulative, total.get()]
        return [value for value, keep in zip(values, self._keep, strict=True) if keep]


def _collected(registry: CollectorRegistry, series: list[Series]) -> np.ndarray:
    by_key = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }
    return np.array([by_key[(s.name, tuple(sorted(s.labels)))] for s in series])


def _predictions_slice(predictions: Predictions, index: np.ndarray | slice) -> Predictions:
    return Predictions(
        predictions.probabilities[index],
        predictions.label_indices[index],
        predictions.outlier_scores[index],
        predictions.is_outlier[index],
        predictions.classifier_seconds,
        predictions.outlier_detector_seconds,
    )


@dataclass(frozen=True)
class Pool:
    """A scenario's rows with their row vectors, and the scrape of a freshly started service."""

    series: list[Series]
    first_scrape: np.ndarray  # (series,)
    row_vectors: np.ndarray  # (rows, series)
    outlier_share: float  # of the pool rows, by the real detector
    feature_means: np.ndarray  # of the pool rows


def build_pool(model: Model, rows: np.ndarray, wanted: set[str]) -> Pool:
    """Predict `rows` with the real models and record them one by one into a real ServiceMetrics."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    predictions = model.predict(rows)
    metrics = ServiceMetrics(CollectorRegistry())
    model_metrics = metrics.bind_model(model)
    reader = _Reader(metrics, wanted)
    if not reader.series:
        raise ValueError("the rules read none of the service's model metrics")
    first = np.array(reader.read())
    snapshots = np.empty((len(rows), len(first)))
    for index in range(len(rows)):
        model_metrics.record(
            rows[index : index + 1], _predictions_slice(predictions, slice(index, index + 1))
        )
        snapshots[index] = reader.read()
    collected = _collected(metrics.registry, reader.series)
    if not np.allclose(snapshots[-1], collected, rtol=1e-9, atol=1e-9):
        raise AssertionError("values read from the registry's children differ from registry.collect()")
    row_vectors = np.diff(np.vstack([first, snapshots]), axis=0)

    batch = ServiceMetrics(CollectorRegistry())
    batch.bind_model(model).record(rows, predictions)
    if not np.allclose(_collected(batch.registry, reader.series), first + row_vectors.sum(axis=0), rtol=1e-9):
        raise AssertionError("recording the pool row by row and in one batch gave different metrics")
    return Pool(
        reader.series,
        first,
        row_vectors,
        float(predictions.is_outlier.mean()),
        rows.astype(np.float64).mean(axis=0),
    )


class _Sums:
    """Tables of sums of DIGIT_BASE**k random row vectors, built as they are needed."""

    def __init__(self, pool: Pool, rng: np.random.Generator) -> None:
        self._tables = [pool.row_vectors]
        self._rng = rng

    def table(self, digit: int) -> np.ndarray:
        while len(self._tables) <= digit:
            below = self._tables[-1]
            picks = self._rng.integers(0, len(below), size=(len(below), DIGIT_BASE))
            self._tables.append(below[picks].sum(axis=1))
        return self._tables[digit]


def interval_sums(sums: _Sums, requests: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    """(intervals, width): for each interval, the sum of `requests[i]` random row vectors of the pool."""
    result = np.zeros((len(requests), width))
    largest = int(requests.max(initial=0))
    top = len(str(largest)) - 1 if largest else -1  # the highest decimal digit in use
    for digit in range(top + 1):
        count = requests // DIGIT_BASE**digit
        if digit < top:
            count = count % DIGIT_BASE
        picked = np.flatnonzero(count)
        if not len(picked):
            continue
        table = sums.table(digit)
        values = table[rng.integers(0, len(table), size=int(count[picked].sum()))]
        starts = np.concatenate([[0], np.cumsum(count[picked])[:-1]])
        result[picked] += np.add.reduceat(values, starts, axis=0)
    return result


@dataclass(frozen=True)
class Phase:
    pool: Pool
    seconds: float


def scrapes(phases: list[Phase], rate: float, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first scrape index, values (scrapes, series)) blocks: scrape 0 is the fresh service, scrape k the
    values after k intervals of Poisson(rate × 10 s) requests, phase after phase."""
    rng = np.random.default_rng(seed)
    current = phases[0].pool.first_scrape.copy()
    yield 0, current[np.newaxis, :]
    index = 1
    for phase in phases:
        sums = _Sums(phase.pool, np.random.default_rng(rng.integers(2**63)))
        intervals = int(round(phase.seconds / SCRAPE_SECONDS))
        for start in range(0, intervals, CHUNK_INTERVALS):
            size = min(CHUNK_INTERVALS, intervals - start)
            requests = rng.poisson(rate * SCRAPE_SECONDS, size=size)
            block = current + np.cumsum(interval_sums(sums, requests, rng, len(current)), axis=0)
            current = block[-1].copy()
            yield index, block
            index += size
