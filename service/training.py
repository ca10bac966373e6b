"""Train the Iris classifier and the One-class SVM outlier detector, export both to ONNX.

Everything is seeded and written deterministically, so a rerun produces byte-identical files and the same
model version.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from service.model_files import (
    CLASSIFIER_FILE,
    FEATURE_NAMES,
    INPUT_NAME,
    LABELS,
    METADATA_FILE,
    OUTLIER_DETECTOR_FILE,
    TRAINING_DATA_FILE,
)

SEED = 0
HELD_OUT_FRACTION = 0.3
MIN_HELD_OUT_ACCURACY = 0.93
# Drift buckets: edges near the training deciles. Iris is measured to 0.1 cm, so many rows tie on a decile:
# an edge is put halfway between two measured values (no training value lies on an edge) and the share of
# training rows in every bucket is stored rather than assumed to be 10%.
DRIFT_BUCKETS = 10


def bucket_edges(values: np.ndarray, buckets: int = DRIFT_BUCKETS) -> list[float]:
    """Upper edges (the last bucket, up to +Inf, is implied) whose cumulative training shares come closest
    to 1/buckets, 2/buckets, ...; midpoints between distinct values, so ties never straddle an edge."""
    distinct = np.unique(values)
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    cumulative = np.searchsorted(np.sort(values), midpoints, side="right") / len(values)
    chosen = {int(np.argmin(np.abs(cumulative - k / buckets))) for k in range(1, buckets)}
    return [round(float(midpoints[index]), 6) for index in sorted(chosen)]


def bucket_shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of `values` in each bucket (lower edge, upper edge], the last one up to +Inf."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return [round(float(count) / len(values), 6) for count in counts]


def train_classifier(features: np.ndarray, targets: np.ndarray) -> tuple[Pipeline, float]:
    """Fit on a stratified split and return the model with its accuracy on the held-out part."""
    train_x, test_x, train_y, test_y = train_test_split(
        features, targets, test_size=HELD_OUT_FRACTION, random_state=SEED, stratify=targets
    )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED))
    classifier.fit(train_x, train_y)
    accuracy = float(classifier.score(test_x, test_y))
    if accuracy < MIN_HELD_OUT_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.3f} is below {MIN_HELD_OUT_ACCURACY}")
    return classifier, accuracy


def train_outlier_detector(features: np.ndarray) -> Pipeline:
    """The book's detector: One-class SVM on all rows, nu=0.1 so about 10% of them score below 0."""
    return make_pipeline(StandardScaler(), OneClassSVM(nu=0.1, gamma="auto")).fit(features)


def to_onnx_bytes(model: Pipeline, options: dict | None = None) -> bytes:
    onnx_model = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURE_NAMES)]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.producer_version = ""  # keep the bytes independent of the skl2onnx patch release
    # skl2onnx collects opsets in a set: sort them so the bytes do not depend on hash seeds
    opsets = sorted((o.domain, o.version) for o in onnx_model.opset_import)
    del onnx_model.opset_import[:]
    for domain, version in opsets:
        onnx_model.opset_import.add(domain=domain, version=version)
    return onnx_model.SerializeToString(deterministic=True)


def train(output_dir: Path, outlier_threshold: float = 0.0) -> dict:
    """Train both models, write them and metadata.json to output_dir, and return the metadata."""
    features, targets = load_iris(return_X_y=True)
    classifier, accuracy = train_classifier(features, targets)
    detector = train_outlier_detector(features)

    classifier_bytes = to_onnx_bytes(classifier, options={"zipmap": False})
    detector_bytes = to_onnx_bytes(detector)
    training_scores = detector.decision_function(features)
    predicted = classifier.predict(features)
    edges = [bucket_edges(features[:, column]) for column in range(features.shape[1])]

    version = hashlib.sha256(
        classifier_bytes + detector_bytes + repr(outlier_threshold).encode()
    ).hexdigest()[:12]
    metadata = {
        "model_version": version,
        "feature_names": list(FEATURE_NAMES),
        "labels": list(LABELS),
        "training_mean": [round(float(v), 6) for v in features.mean(axis=0)],
        "training_stddev": [round(float(v), 6) for v in features.std(axis=0)],
        "training_rows": int(features.shape[0]),
        # the baselines of the drift alerts, over all training rows (the traffic generator's source too)
        "feature_bucket_edges": edges,
        "feature_bucket_training_shares": [
            bucket_shares(features[:, column], column_edges) for column, column_edges in enumerate(edges)
        ],
        "training_predicted_label_shares": [
            round(float(np.mean(predicted == label)), 6) for label in range(len(LABELS))
        ],
        "outlier_threshold": outlier_threshold,
        "training_outlier_fraction": round(float(np.mean(training_scores < outlier_threshold)), 6),
        "held_out_accuracy": round(accuracy, 6),
        "classifier": "StandardScaler + LogisticRegression",
        "outlier_detector": "StandardScaler + OneClassSVM(nu=0.1, gamma='auto')",
        "library_versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CLASSIFIER_FILE).write_bytes(classifier_bytes)
    (output_dir / OUTLIER_DETECTOR_FILE).write_bytes(detector_bytes)
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    with (output_dir / TRAINING_DATA_FILE).open("w") as file:
        file.write(",".join((*FEATURE_NAMES, "label")) + "\n")
        for row, target in zip(features.tolist(), targets.tolist(), strict=True):
            file.write(",".join(f"{value:.1f}" for value in row) + f",{LABELS[target]}\n")
    return metadata
