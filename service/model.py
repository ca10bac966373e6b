"""Load the ONNX models with their metadata and run both on a batch of rows."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from service.model_files import CLASSIFIER_FILE, INPUT_NAME, METADATA_FILE, OUTLIER_DETECTOR_FILE


class ModelLoadError(RuntimeError):
    """A model file or the metadata is missing, unreadable or inconsistent; the message names the file."""


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 3x as long to build, once a request
class Predictions:
    probabilities: np.ndarray  # (rows, classes) float32
    label_indices: np.ndarray  # (rows,) int
    outlier_scores: np.ndarray  # (rows,) float32
    is_outlier: np.ndarray  # (rows,) bool
    classifier_seconds: float
    outlier_detector_seconds: float


def inference_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime session with the service's options (the benchmark's raw runs use it too)."""
    options = onnxruntime.SessionOptions()
    # One row takes microseconds: thread pools only add hand-off latency, and workers are the parallelism.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise ModelLoadError(f"cannot load ONNX model {path}: {error}") from error


def _single_input_width(session: onnxruntime.InferenceSession, path: Path) -> int:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelLoadError(f"{path}: expected one input named {INPUT_NAME!r}")
    width = inputs[0].shape[1]
    if not isinstance(width, int):
        raise ModelLoadError(f"{path}: input {INPUT_NAME!r} has no fixed number of columns")
    return width


class Model:
    """The classifier and the outlier detector, and the metadata.json written beside them by training."""

    def __init__(self, model_dir: Path) -> None:
        metadata_path = model_dir / METADATA_FILE
        try:
            self.metadata = json.loads(metadata_path.read_text())
            self.version: str = self.metadata["model_version"]
            self.feature_names: tuple[str, ...] = tuple(self.metadata["feature_names"])
            self.labels: tuple[str, ...] = tuple(self.metadata["labels"])
            self.training_mean: tuple[float, ...] = tuple(self.metadata["training_mean"])
            self.training_stddev: tuple[float, ...] = tuple(self.metadata["training_stddev"])
            self.outlier_threshold = float(self.metadata["outlier_threshold"])
            # baselines of the drift alerts (exported as gauges by service.metrics)
            self.training_rows = int(self.metadata["training_rows"])
            self.training_outlier_fraction = float(self.metadata["training_outlier_fraction"])
            self.training_predicted_label_shares: tuple[float, ...] = tuple(
                self.metadata["training_predicted_label_shares"]
            )
            self.feature_bucket_edges: tuple[tuple[float, ...], ...] = tuple(
                tuple(edges) for edges in self.metadata["feature_bucket_edges"]
            )
            self.feature_bucket_training_shares: tuple[tuple[float, ...], ...] = tuple(
                tuple(shares) for shares in self.metadata["feature_bucket_training_shares"]
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelLoadError(f"cannot read model metadata {metadata_path}: {error!r}") from error
        if not (
            len(self.feature_names)
            == len(self.training_mean)
            == len(self.training_stddev)
            == len(self.feature_bucket_edges)
            == len(self.feature_bucket_training_shares)
        ):
            raise ModelLoadError(f"{metadata_path}: feature names and training statistics differ in length")
        if len(self.training_predicted_label_shares) != len(self.labels):
            raise ModelLoadError(
                f"{metadata_path}: labels and training_predicted_label_shares differ in length"
            )
        for edges, shares in zip(self.feature_bucket_edges, self.feature_bucket_training_shares, strict=True):
            if not edges or list(edges) != sorted(set(edges)) or len(shares) != len(edges) + 1:
                raise ModelLoadError(
                    f"{metadata_path}: feature_bucket_edges must be increasing, with one training share more"
                )

        classifier_path = model_dir / CLASSIFIER_FILE
        detector_path = model_dir / OUTLIER_DETECTOR_FILE
        self._classifier = inference_session(classifier_path)
        self._detector = inference_session(detector_path)
        for session, path in ((self._classifier, classifier_path), (self._detector, detector_path)):
            width = _single_input_width(session, path)
            if width != len(self.feature_names):
                raise ModelLoadError(
                    f"{path} takes {width} features but {metadata_path} names {len(self.feature_names)}"
                )
        classes = self._classifier.get_outputs()[1].shape[1]
        if classes != len(self.labels):
            raise ModelLoadError(
                f"{classifier_path} predicts {classes} classes but {metadata_path} names {len(self.labels)}"
            )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict(self, rows: np.ndarray) -> Predictions:
        """rows: float32 array of shape (n, n_features), already validated."""
        feed = {INPUT_NAME: rows}
        started = time.perf_counter()
        probabilities = self._classifier.run(["probabilities"], feed)[0]
        classified = time.perf_counter()
        scores = self._detector.run(["scores"], feed)[0].reshape(-1)
        finished = time.perf_counter()
        return Predictions(
            probabilities=probabilities,
            label_indices=probabilities.argmax(axis=1),
            outlier_scores=scores,
            is_outlier=scores < self.outlier_threshold,
            classifier_seconds=classified - started,
            outlier_detector_seconds=finished - classified,
        )
