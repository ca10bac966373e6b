"""A prediction log written quickly by the service's own code: `Predictor` and `PredictionLog` with
`RotatingFileSink`, so the lines, rotation and gzip parts are exactly what the service writes.

Two shortcuts, neither of which changes a byte of the format: the model runs once per chunk of rows (one
onnxruntime call for 100,000 by default) and the predictor is handed each request's slice of those
predictions; and the predictor's clock is a simulated one, so the requests spread over hours at `rate`
per second instead of landing in the few seconds the generation takes.
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
    """The real model's predictions for a chunk of rows (one onnxruntime call each), handed out request by
    request, in order."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._predictions = model.predict(np.zeros((1, model.n_features), dtype=np.float32))
        self._position = 0

    def load(self, rows: np.ndarray) -> None:
        self._predictions = self._model.predict(rows)
        self._position = 0

    def __getattr__(self, name: str):  # version, labels, feature names...: the real model's
        return getattr(self._model, name)

    def predict(self, rows: np.ndarray) -> Predictions:
        start, end = self._position, self._position + len(rows)
        self._position = end
        chunk = self._predictions
        return Predictions(
            probabilities=chunk.probabilities[start:end],
            label_indices=chunk.label_indices[start:end],
            outlier_scores=chunk.outlier_scores[start:end],
            is_outlier=chunk.is_outlier[start:end],
            classifier_seconds=chunk.classifier_seconds,
            outlier_detector_seconds=chunk.outlier_detector_seconds,
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
    chunk_rows: int = CHUNK_ROWS,
) -> None:
    """Log `predictions` single-row /predict requests (and one rejected request per REJECTED_EVERY)."""
    source = RowSource(load_training_data(model_dir), Scenario("outliers", outlier_fraction), seed)
    model = SlicedModel(Model(model_dir))
    wrong_shape = InvalidInput(Reason.WRONG_COLUMN_COUNT, "each row must have 4 values, got 3")
    body = b'{"data": [[1, 2, 3]]}'
    with mock.patch("service.predictor.datetime", SimulatedClock(START, rate)):
        for chunk_start in range(0, predictions, chunk_rows):
            sent = source.rows(min(chunk_rows, predictions - chunk_start))
            data = sent.tolist()
            rows = sent.astype(np.float32)
            model.load(rows)
            # a log per chunk, closed (so written out) at its end: no write holds more than a chunk's lines,
            # so the rotated parts have the size asked for within a chunk
            log = PredictionLog(RotatingFileSink(log_file, max_bytes, backup_count))
            # SlicedModel stands in for Model (same interface, no subclass): the one non-Model passed
            predictor = Predictor(model, max_batch_rows=1, metrics=None, prediction_log=log)  # type: ignore[arg-type]
            try:
                for offset, row in enumerate(data):
                    index = chunk_start + offset
                    if index % REJECTED_EVERY == 0:
                        predictor.reject(
                            "/predict", wrong_shape, body, f"rejected-{index}", time.perf_counter()
                        )
                    predictor.predict(
                        "/predict",
                        Answer.PROBABILITIES,
                        [row],
                        rows[offset : offset + 1],
                        f"job-{index}",
                        time.perf_counter(),
                    )
            finally:
                log.close()
