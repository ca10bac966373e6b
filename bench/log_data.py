"""A prediction log written quickly by the service's own code: `Predictor` and `PredictionLog` with
`RotatingFileSink`, so the lines, rotation and gzip parts are exactly what the service writes.

Two shortcuts, neither of which changes a byte of the format: the model runs once over all rows (one
onnxruntime call per 100,000 rows) and the predictor is handed each request's slice of those predictions;
and the predictor's clock is a simulated one, so the requests spread over hours at `rate` per second
instead of landing in the few seconds the generation takes.
"""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import numpy as np

from service.model import Model, Predictions
from service.prediction_log import PredictionLog, RotatingFileSink
from service.predictor import Answer, Predictor
from service.traffic import RowSource, Scenario, load_training_data
from service.validation import InvalidInput, Reason

CHUNK_ROWS = 100_000
REJECTED_EVERY = 1000  # one request in a thousand is rejected (wrong column count)
START = datetime(2026, 1, 1, tzinfo=UTC)


class SlicedModel:
    """The real model's predictions for all rows, handed out request by request, in order."""

    def __init__(self, model: Model, rows: np.ndarray) -> None:
        self._model = model
        parts = [model.predict(rows[start : start + CHUNK_ROWS]) for start in range(0, len(rows), CHUNK_ROWS)]
        self._probabilities = np.concatenate([part.probabilities for part in parts])
        self._scores = np.concatenate([part.outlier_scores for part in parts])
        self._timing = (parts[0].classifier_seconds, parts[0].outlier_detector_seconds)
        self._position = 0

    def __getattr__(self, name: str):  # version, labels, feature names...: the real model's
        return getattr(self._model, name)

    def predict(self, rows: np.ndarray) -> Predictions:
        start, end = self._position, self._position + len(rows)
        self._position = end
        probabilities = self._probabilities[start:end]
        scores = self._scores[start:end]
        return Predictions(
            probabilities=probabilities,
            label_indices=probabilities.argmax(axis=1),
            outlier_scores=scores,
            is_outlier=scores < self._model.outlier_threshold,
            classifier_seconds=self._timing[0],
            outlier_detector_seconds=self._timing[1],
        )


class SimulatedClock:
    """Stands in for `datetime` in service.predictor: `now()` advances by one request interval a call."""

    def __init__(self, start: datetime, rate: float) -> None:
        self._now = start
        self._step = timedelta(seconds=1.0 / rate)

    def now(self, tz: object = None) -> datetime:
        self._now += self._step
        return self._now


def write_log(
    model_dir: Path,
    log_file: Path,
    predictions: int,
    *,
    max_bytes: int,
    backup_count: int,
    rate: float = 100.0,
    outlier_fraction: float = 0.1,
    seed: int = 0,
) -> None:
    """Log `predictions` single-row /predict requests (and one rejected request per REJECTED_EVERY)."""
    source = RowSource(load_training_data(model_dir), Scenario("outliers", outlier_fraction), seed)
    sent = source.rows(predictions)
    data = sent.tolist()
    rows = sent.astype(np.float32)
    model = SlicedModel(Model(model_dir), rows)
    log = PredictionLog(RotatingFileSink(log_file, max_bytes, backup_count))
    # SlicedModel stands in for Model (same interface, no subclass): the one place a non-Model is passed
    predictor = Predictor(model, max_batch_rows=1, metrics=None, prediction_log=log)  # type: ignore[arg-type]
    wrong_shape = InvalidInput(Reason.WRONG_COLUMN_COUNT, "each row must have 4 values, got 3")
    try:
        with mock.patch("service.predictor.datetime", SimulatedClock(START, rate)):
            for index in range(predictions):
                if index % REJECTED_EVERY == 0:
                    body = b'{"data": [[1, 2, 3]]}'
                    predictor.reject("/predict", wrong_shape, body, f"rejected-{index}", time.perf_counter())
                row = rows[index : index + 1]
                predictor.predict(
                    "/predict", Answer.PROBABILITIES, [data[index]], row, f"job-{index}", time.perf_counter()
                )
    finally:
        log.close()
