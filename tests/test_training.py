"""Training: deterministic files, ONNX faithful to scikit-learn, complete metadata, plain-tensor outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import skl2onnx
import sklearn
from sklearn.datasets import load_iris

from service.model_files import (
    CLASSIFIER_FILE,
    FEATURE_NAMES,
    INPUT_NAME,
    LABELS,
    METADATA_FILE,
    OUTLIER_DETECTOR_FILE,
    TRAINING_DATA_FILE,
)
from service.training import train, train_classifier, train_outlier_detector

ONNX_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def metadata(model_dir: Path) -> dict:
    return json.loads((model_dir / METADATA_FILE).read_text())


def run_onnx(path: Path, output: str, rows: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], {INPUT_NAME: rows.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, dict], tuple[Path, dict]]:
    """One training in this process, one by the CLI in a fresh interpreter with another hash seed."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    first_metadata = train(first)
    subprocess.run(
        [sys.executable, "-m", "service", "train", "--output", str(second)],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return (first, first_metadata), (second, json.loads((second / METADATA_FILE).read_text()))


@pytest.mark.parametrize(
    "file_name", [CLASSIFIER_FILE, OUTLIER_DETECTOR_FILE, METADATA_FILE, TRAINING_DATA_FILE]
)
def test_two_trainings_write_byte_identical_files(two_trainings, file_name: str) -> None:
    (first, _), (second, _) = two_trainings
    assert (first / file_name).read_bytes() == (second / file_name).read_bytes()


def test_two_trainings_return_the_same_model_version(two_trainings) -> None:
    (_, first_metadata), (_, second_metadata) = two_trainings
    assert first_metadata["model_version"] == second_metadata["model_version"]


def test_onnx_classifier_probabilities_match_scikit_learn_on_every_iris_row(
    model_dir: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    features, targets = iris
    classifier, _ = train_classifier(features, targets)
    expected = classifier.predict_proba(features)
    actual = run_onnx(model_dir / CLASSIFIER_FILE, "probabilities", features)
    assert actual.shape == (150, 3)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ONNX_TOLERANCE)


def test_onnx_outlier_scores_match_scikit_learn_decision_function_on_every_iris_row(
    model_dir: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    features, _ = iris
    detector = train_outlier_detector(features)
    expected = detector.decision_function(features)
    actual = run_onnx(model_dir / OUTLIER_DETECTOR_FILE, "scores", features).reshape(-1)
    assert actual.shape == (150,)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ONNX_TOLERANCE)


def test_metadata_names_version_features_labels_and_libraries(metadata: dict) -> None:
    assert len(metadata["model_version"]) == 12
    int(metadata["model_version"], 16)  # hexadecimal
    assert metadata["feature_names"] == list(FEATURE_NAMES)
    assert metadata["labels"] == list(LABELS)
    assert metadata["training_rows"] == 150
    assert metadata["library_versions"] == {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    assert metadata["classifier"] and metadata["outlier_detector"]


def test_metadata_training_mean_and_stddev_match_numpy(
    metadata: dict, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    features, _ = iris
    np.testing.assert_allclose(metadata["training_mean"], features.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(metadata["training_stddev"], features.std(axis=0), rtol=0, atol=1e-6)


def test_metadata_outlier_threshold_is_zero(metadata: dict) -> None:
    assert metadata["outlier_threshold"] == 0.0


def test_metadata_training_outlier_fraction_is_the_detectors_own_fraction(
    metadata: dict, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    features, _ = iris
    detector = train_outlier_detector(features)
    own_fraction = float(np.mean(detector.predict(features) == -1))  # -1: sklearn's "outlier"
    assert metadata["training_outlier_fraction"] == pytest.approx(own_fraction, abs=1e-6)
    assert 0.0 < metadata["training_outlier_fraction"] <= 0.11  # nu=0.1 bounds the training outliers


def test_metadata_held_out_accuracy_is_at_least_0_93(metadata: dict) -> None:
    assert 0.93 <= metadata["held_out_accuracy"] <= 1.0


@pytest.mark.parametrize("file_name", [CLASSIFIER_FILE, OUTLIER_DETECTOR_FILE])
def test_onnx_input_is_float_input_float32_with_any_rows_and_4_columns(
    model_dir: Path, file_name: str
) -> None:
    graph = onnx.load(model_dir / file_name).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    tensor = graph.input[0].type.tensor_type
    assert tensor.elem_type == onnx.TensorProto.FLOAT
    rows, columns = tensor.shape.dim
    assert not rows.HasField("dim_value")  # any number of rows
    assert columns.dim_value == 4


def test_classifier_probabilities_are_a_plain_float_tensor_without_zipmap(model_dir: Path) -> None:
    model = onnx.load(model_dir / CLASSIFIER_FILE)
    assert "ZipMap" not in {node.op_type for node in model.graph.node}
    session = onnxruntime.InferenceSession(
        str(model_dir / CLASSIFIER_FILE), providers=["CPUExecutionProvider"]
    )
    probabilities = {o.name: o for o in session.get_outputs()}["probabilities"]
    assert probabilities.type == "tensor(float)"
    assert probabilities.shape[1] == 3


def test_drift_buckets_lie_between_measured_values_and_their_shares_are_the_training_shares(
    metadata: dict, iris: tuple[np.ndarray, np.ndarray]
):
    features, _ = iris
    for column, (edges, shares) in enumerate(
        zip(metadata["feature_bucket_edges"], metadata["feature_bucket_training_shares"], strict=True)
    ):
        values = features[:, column]
        assert edges == sorted(set(edges)) and 5 <= len(edges) <= 9, edges
        assert not np.isin(np.round(values, 6), edges).any(), "a training value lies on an edge"
        counts = np.histogram(values, bins=[-np.inf, *edges, np.inf])[0]
        np.testing.assert_allclose(shares, counts / len(values), atol=1e-6)
        # near deciles: no bucket holds more than a fifth of the rows, even where measurements tie
        assert max(shares) < 0.2, shares


def test_training_predicted_label_shares_are_the_classifier_shares_on_all_rows(
    metadata: dict, iris: tuple[np.ndarray, np.ndarray]
):
    features, targets = iris
    classifier, _ = train_classifier(features, targets)
    shares = np.bincount(classifier.predict(features), minlength=len(LABELS)) / len(features)
    np.testing.assert_allclose(metadata["training_predicted_label_shares"], shares, atol=1e-6)
