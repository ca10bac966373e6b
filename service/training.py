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
    np.savetxt(
        output_dir / TRAINING_DATA_FILE,
        features,
        fmt="%.1f",
        delimiter=",",
        header=",".join(FEATURE_NAMES),
        comments="",
    )
    return metadata
