"""The API in-process: the book's endpoints and shapes, errors, exact metric increments, prediction log."""

import json
import random
import string
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import MemorySink
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString
from sklearn.datasets import load_iris

from service.app import create_app
from service.metrics import HTTP_METHODS, ServiceMetrics
from service.model import Model
from service.model_files import FEATURE_NAMES, LABELS, METADATA_FILE
from service.prediction_log import MAX_LOGGED_BODY_CHARS, PredictionLog
from service.predictor import Answer, Predictor
from service.settings import Settings
from service.validation import Reason

ROW = [5.1, 3.5, 1.4, 0.2]  # the book's sample row: setosa
FAR_AWAY_ROW = [100.0, 100.0, 100.0, 100.0]
MAX_BODY_BYTES = 1_048_576
PREDICTION_KEYS = {"job_id", "prediction", "is_outlier", "outlier_score"}
ERROR_KEYS = {"detail", "reason", "job_id"}


@dataclass
class Service:
    app: FastAPI
    client: TestClient
    metrics: ServiceMetrics
    sink: MemorySink
    metadata: dict
    _stack: ExitStack = field(repr=False)

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a series that does not exist (yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def model_value(self, name: str, **labels: str) -> float:
        return self.value(name, model_version=self.metadata["model_version"], **labels)

    def log_records(self) -> list[dict]:
        """Stop the app (its shutdown closes, and so flushes, the prediction log), then read the log."""
        self._stack.close()
        return [json.loads(line) for line in self.sink.lines()]


@contextmanager
def running_service(model_dir: Path) -> Iterator[Service]:
    metrics = ServiceMetrics(CollectorRegistry())
    sink = MemorySink()
    app = create_app(Settings(model_dir=model_dir), metrics=metrics, prediction_log=PredictionLog(sink))
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    with ExitStack() as stack:
        client = stack.enter_context(TestClient(app))
        yield Service(app, client, metrics, sink, metadata, stack)


@pytest.fixture
def service(model_dir: Path) -> Iterator[Service]:
    with running_service(model_dir) as running:
        yield running


def predict(service: Service, rows: list[list[float]], endpoint: str = "/predict") -> dict:
    response = service.client.post(endpoint, json={"data": rows})
    assert response.status_code == 200, response.text
    return response.json()


def assert_full_uuid(value: str) -> None:
    assert str(uuid.UUID(value)) == value


def iris_rows() -> np.ndarray:
    return load_iris().data


# --- the book's endpoints -------------------------------------------------------------------------


def test_health_answers_ok(service: Service) -> None:
    response = service.client.get("/health")
    assert (response.status_code, response.json()) == (200, {"health": "ok"})


def test_ready_answers_200_with_the_model_version(service: Service) -> None:
    response = service.client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "model_version": service.metadata["model_version"]}


def test_label_maps_class_index_to_label(service: Service) -> None:
    response = service.client.get("/label")
    assert (response.status_code, response.json()) == (
        200,
        {"0": "setosa", "1": "versicolor", "2": "virginica"},
    )


def test_metadata_describes_shapes_samples_and_the_model(service: Service) -> None:
    response = service.client.get("/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "data_type": "float32",
        "data_structure": "(1,4)",
        "data_sample": [ROW],
        "prediction_type": "float32",
        "prediction_structure": "(1,3)",
        "prediction_sample": body["prediction_sample"],
        "outlier_type": "bool, float32",
        "outlier_structure": "(1,2)",
        "outlier_sample": body["outlier_sample"],
        "model": service.metadata,
    }
    assert len(body["prediction_sample"]) == 3


def assert_probabilities_answer(body: dict) -> None:
    assert set(body) == PREDICTION_KEYS
    assert_full_uuid(body["job_id"])
    assert len(body["prediction"]) == 3
    assert sum(body["prediction"]) == pytest.approx(1.0, abs=1e-5)
    assert max(body["prediction"]) == body["prediction"][0]  # the sample row is a setosa
    assert body["is_outlier"] is False
    assert isinstance(body["outlier_score"], float) and body["outlier_score"] >= 0.0


def assert_label_answer(body: dict) -> None:
    assert set(body) == PREDICTION_KEYS
    assert_full_uuid(body["job_id"])
    assert body["prediction"] == "setosa"
    assert body["is_outlier"] is False
    assert isinstance(body["outlier_score"], float)


def test_get_predict_test_answers_probabilities_for_the_sample_row(service: Service) -> None:
    response = service.client.get("/predict/test")
    assert response.status_code == 200
    assert_probabilities_answer(response.json())


def test_get_predict_test_label_answers_the_sample_rows_label(service: Service) -> None:
    response = service.client.get("/predict/test/label")
    assert response.status_code == 200
    assert_label_answer(response.json())


def test_post_predict_answers_probabilities_for_one_row(service: Service) -> None:
    assert_probabilities_answer(predict(service, [ROW]))


def test_post_predict_label_answers_the_label_of_one_row(service: Service) -> None:
    assert_label_answer(predict(service, [ROW], "/predict/label"))


def test_predict_test_answers_the_same_as_posting_the_sample_row(service: Service) -> None:
    sample = service.client.get("/predict/test").json()
    posted = predict(service, [ROW])
    assert (sample["prediction"], sample["outlier_score"]) == (posted["prediction"], posted["outlier_score"])


def test_far_away_row_is_an_outlier_with_a_negative_score(service: Service) -> None:
    body = predict(service, [FAR_AWAY_ROW])
    assert body["is_outlier"] is True
    assert body["outlier_score"] < 0.0


def test_batch_of_1000_rows_answers_1000_results(service: Service) -> None:
    rows = np.resize(iris_rows(), (1000, 4)).tolist()
    body = predict(service, rows, "/predict/batch")
    assert set(body) == {"job_id", "results"}
    assert_full_uuid(body["job_id"])
    assert len(body["results"]) == 1000
    for result in body["results"]:
        assert set(result) == {"prediction", "label", "is_outlier", "outlier_score"}
        assert result["label"] == LABELS[int(np.argmax(result["prediction"]))]


def test_training_rows_are_flagged_below_the_threshold_in_the_training_outlier_fraction(
    service: Service,
) -> None:
    results = predict(service, iris_rows().tolist(), "/predict/batch")["results"]
    flagged = [result["is_outlier"] for result in results]
    assert flagged == [result["outlier_score"] < service.metadata["outlier_threshold"] for result in results]
    assert sum(flagged) / len(results) == pytest.approx(
        service.metadata["training_outlier_fraction"], abs=1e-6
    )


def test_batch_of_1001_rows_is_422_too_many_rows(service: Service) -> None:
    response = service.client.post("/predict/batch", json={"data": [ROW] * 1001})
    assert response.status_code == 422
    assert response.json()["reason"] == "too_many_rows"


def test_empty_object_is_422_missing_data_where_the_books_reference_answered_200(service: Service) -> None:
    response = service.client.post("/predict", json={})
    assert response.status_code == 422
    assert response.json()["reason"] == "missing_data"


def test_unknown_path_is_404(service: Service) -> None:
    assert service.client.get("/no/such/path").status_code == 404


# --- request ids ----------------------------------------------------------------------------------

REQUESTS = {
    "GET /predict/test": ("GET", "/predict/test", None),
    "GET /predict/test/label": ("GET", "/predict/test/label", None),
    "POST /predict": ("POST", "/predict", {"data": [ROW]}),
    "POST /predict/label": ("POST", "/predict/label", {"data": [ROW]}),
    "POST /predict/batch": ("POST", "/predict/batch", {"data": [ROW, ROW]}),
    "POST /predict rejected": ("POST", "/predict", {"data": [ROW[:3]]}),
}


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS.values(), ids=REQUESTS.keys())
def test_x_request_id_header_equals_job_id(
    service: Service, method: str, path: str, body: dict | None
) -> None:
    response = service.client.request(method, path, json=body)
    assert response.headers["x-request-id"] == response.json()["job_id"]
    assert_full_uuid(response.json()["job_id"])


@pytest.mark.parametrize("request_id", ["abc-123", "trace:1.2_3", "A" * 64])
@pytest.mark.parametrize(("method", "path", "body"), REQUESTS.values(), ids=REQUESTS.keys())
def test_safe_client_request_id_becomes_the_job_id(
    service: Service, method: str, path: str, body: dict | None, request_id: str
) -> None:
    response = service.client.request(method, path, json=body, headers={"X-Request-ID": request_id})
    assert response.json()["job_id"] == request_id
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "request_id",
    [
        "has space",
        "a/b",
        "../../etc",
        "a" * 65,
        "-starts-with-dash",
        "semi;colon",
        'quote"',
        "<tag>",
        "a=b&c",
    ],
)
def test_unsafe_client_request_id_is_replaced_by_a_uuid(service: Service, request_id: str) -> None:
    response = service.client.post("/predict", json={"data": [ROW]}, headers={"X-Request-ID": request_id})
    job_id = response.json()["job_id"]
    assert_full_uuid(job_id)
    assert response.headers["x-request-id"] == job_id


# --- rejected input over HTTP ---------------------------------------------------------------------

JSON = "application/json"


def case(
    body: bytes, reason: Reason, endpoint: str = "/predict", content_type: str = JSON, status: int = 422
) -> tuple[str, bytes, str, int, Reason]:
    return endpoint, body, content_type, status, reason


TWO_ROWS = b'{"data": [[1, 2, 3, 4], [1, 2, 3, 4]]}'
REJECTED = {
    "empty body": case(b"", Reason.EMPTY_BODY),
    "invalid JSON": case(b'{"data": [[', Reason.INVALID_JSON),
    "missing data": case(b'{"rows": [[1, 2, 3, 4]]}', Reason.MISSING_DATA),
    "data not a list": case(b'{"data": "1,2,3,4"}', Reason.WRONG_SHAPE),
    "two rows to /predict": case(TWO_ROWS, Reason.WRONG_ROW_COUNT),
    "two rows to /predict/label": case(TWO_ROWS, Reason.WRONG_ROW_COUNT, "/predict/label"),
    "no rows to /predict/batch": case(b'{"data": []}', Reason.WRONG_ROW_COUNT, "/predict/batch"),
    "1001 rows": case(json.dumps({"data": [ROW] * 1001}).encode(), Reason.TOO_MANY_ROWS, "/predict/batch"),
    "3 columns": case(b'{"data": [[1, 2, 3]]}', Reason.WRONG_COLUMN_COUNT),
    "5 columns": case(b'{"data": [[1, 2, 3, 4, 5]]}', Reason.WRONG_COLUMN_COUNT),
    "ragged rows": case(b'{"data": [[1, 2, 3, 4], [1, 2]]}', Reason.WRONG_COLUMN_COUNT, "/predict/batch"),
    "string": case(b'{"data": [[1, 2, 3, "4"]]}', Reason.NON_NUMERIC),
    "null": case(b'{"data": [[1, 2, 3, null]]}', Reason.NON_NUMERIC),
    "boolean": case(b'{"data": [[1, 2, 3, false]]}', Reason.NON_NUMERIC),
    "nested list": case(b'{"data": [[1, 2, 3, [4]]]}', Reason.NON_NUMERIC),
    "NaN": case(b'{"data": [[1, 2, 3, NaN]]}', Reason.NON_FINITE),
    "Infinity": case(b'{"data": [[1, 2, 3, Infinity]]}', Reason.NON_FINITE),
    "-Infinity": case(b'{"data": [[1, 2, 3, -Infinity]]}', Reason.NON_FINITE),
    "1e999": case(b'{"data": [[1, 2, 3, 1e999]]}', Reason.NON_FINITE),
    "1e39": case(b'{"data": [[1, 2, 3, 1e39]]}', Reason.OUT_OF_RANGE),
    "huge integer": case(f'{{"data": [[1, 2, 3, {10**400}]]}}'.encode(), Reason.OUT_OF_RANGE),
    "text/plain": case(
        b'{"data": [[1, 2, 3, 4]]}', Reason.UNSUPPORTED_MEDIA_TYPE, content_type="text/plain", status=415
    ),
    "form": case(
        b"data=1", Reason.UNSUPPORTED_MEDIA_TYPE, "/predict/label", "application/x-www-form-urlencoded", 415
    ),
    "body too large": case(b"[" * (MAX_BODY_BYTES + 1), Reason.BODY_TOO_LARGE, status=413),
}


def post_rejected(service: Service, endpoint: str, body: bytes, content_type: str):
    return service.client.post(endpoint, content=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "status", "reason"), REJECTED.values(), ids=REJECTED.keys()
)
def test_rejected_request_answers_json_with_detail_reason_and_job_id(
    service: Service, endpoint: str, body: bytes, content_type: str, status: int, reason: Reason
) -> None:
    response = post_rejected(service, endpoint, body, content_type)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == ERROR_KEYS
    assert answer["reason"] == reason.value
    assert isinstance(answer["detail"], str) and answer["detail"]
    assert answer["job_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("endpoint", "body", "content_type", "status", "reason"), REJECTED.values(), ids=REJECTED.keys()
)
def test_rejected_request_counts_once_under_its_reason_only(
    service: Service, endpoint: str, body: bytes, content_type: str, status: int, reason: Reason
) -> None:
    post_rejected(service, endpoint, body, content_type)
    counts = {r: service.value("model_invalid_requests_total", reason=r.value) for r in Reason}
    assert counts == {r: float(r is reason) for r in Reason}


def test_rejected_request_predicts_nothing(service: Service) -> None:
    for endpoint, body, content_type, _, _ in REJECTED.values():
        post_rejected(service, endpoint, body, content_type)
    assert sum(service.model_value("model_predictions_total", predicted_label=label) for label in LABELS) == 0
    assert service.model_value("model_input_feature_value_count", feature=FEATURE_NAMES[0]) == 0


def test_deeply_nested_body_is_422_invalid_json(service: Service) -> None:
    response = post_rejected(service, "/predict", b"[" * 2_000, JSON)
    assert (response.status_code, response.json()["reason"]) == (422, "invalid_json")


def test_body_over_the_limit_with_content_length_is_413_before_reading_it(service: Service) -> None:
    response = service.client.post(
        "/predict", content=b" " * (MAX_BODY_BYTES + 1), headers={"Content-Type": JSON}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == f"body has {MAX_BODY_BYTES + 1} bytes; the limit is {MAX_BODY_BYTES}"


def test_chunked_body_over_the_limit_is_413(service: Service) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 4096 + 1):
            yield b" " * 4096

    response = service.client.post("/predict", content=chunks(), headers={"Content-Type": JSON})
    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert response.status_code == 413
    assert response.json()["detail"] == f"body is larger than the limit of {MAX_BODY_BYTES} bytes"


def test_chunked_body_within_the_limit_is_predicted(service: Service) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"data": [[5.1, 3.5,'
        yield b" 1.4, 0.2]]}"

    response = service.client.post("/predict", content=chunks(), headers={"Content-Type": JSON})
    assert response.status_code == 200
    assert len(response.json()["prediction"]) == 3


# --- metrics --------------------------------------------------------------------------------------


def test_predictions_are_counted_per_predicted_label(service: Service) -> None:
    rows = iris_rows()[::5]  # 30 rows, 10 of each class
    labels = Counter(predict(service, [row], "/predict/label")["prediction"] for row in rows.tolist())
    assert len(labels) == 3
    counted = {
        label: service.model_value("model_predictions_total", predicted_label=label) for label in LABELS
    }
    assert counted == {label: float(labels[label]) for label in LABELS}


def test_outliers_are_counted(service: Service) -> None:
    rows = [ROW, FAR_AWAY_ROW, [-100.0, 0.0, 50.0, 2.0], ROW, [0.0, 0.0, 0.0, 0.0]]
    flagged = sum(predict(service, [row])["is_outlier"] for row in rows)
    assert flagged == 3  # the three rows that are not the sample row
    assert service.model_value("model_outliers_total") == 3


def test_input_feature_histogram_count_sum_sum_parts_and_squares_are_exact(service: Service) -> None:
    rows = np.concatenate([iris_rows()[::7], [FAR_AWAY_ROW, [-100.0, 0.0, 50.0, -2.5]]])
    for row in rows.tolist():
        predict(service, [row])
    as_served = rows.astype(np.float32).astype(np.float64)  # the service sees float32 values
    for column, feature in enumerate(FEATURE_NAMES):
        values = as_served[:, column]
        positive, negative = values[values > 0].sum(), -values[values < 0].sum()
        assert service.model_value("model_input_feature_value_count", feature=feature) == len(rows)
        assert service.model_value("model_input_feature_value_sum", feature=feature) == pytest.approx(
            values.sum(), rel=1e-12
        )
        assert service.model_value(
            "model_input_feature_value_positive_part_total", feature=feature
        ) == pytest.approx(positive, rel=1e-12)
        assert service.model_value(
            "model_input_feature_value_negative_part_total", feature=feature
        ) == pytest.approx(negative, rel=1e-12)
        squares = service.model_value("model_input_feature_value_squares_total", feature=feature)
        assert squares == pytest.approx((values**2).sum(), rel=1e-12)
    negative_sepal_length = service.model_value(
        "model_input_feature_value_negative_part_total", feature=FEATURE_NAMES[0]
    )
    assert negative_sepal_length == 100  # the one negative sepal length


def test_inference_histograms_observe_each_stage_once_per_request(service: Service) -> None:
    for _ in range(4):
        predict(service, [ROW])
    predict(service, [ROW] * 10, "/predict/batch")
    service.client.get("/predict/test")
    for stage in ("classifier", "outlier_detector"):
        assert service.model_value("model_inference_duration_seconds_count", stage=stage) == 6
        assert service.model_value("model_inference_duration_seconds_bucket", stage=stage, le="+Inf") == 6


def test_outlier_score_histogram_observes_every_row_in_its_bucket(service: Service) -> None:
    for _ in range(3):
        predict(service, [ROW])  # scores about 0.19
    predict(service, [FAR_AWAY_ROW] * 9, "/predict/batch")  # score about -2.94
    # no _sum here: prometheus-client leaves it out of histograms with negative buckets in one process
    assert service.model_value("model_outlier_score_count") == 12
    assert service.model_value("model_outlier_score_bucket", le="-3.0") == 0
    assert service.model_value("model_outlier_score_bucket", le="-2.0") == 9
    assert service.model_value("model_outlier_score_bucket", le="0.1") == 9
    assert service.model_value("model_outlier_score_bucket", le="0.2") == 12
    assert service.model_value("model_outlier_score_bucket", le="+Inf") == 12


def test_http_requests_are_counted_by_handler_method_and_status(service: Service) -> None:
    for _ in range(3):
        service.client.post("/predict", json={"data": [ROW]})
    for _ in range(2):
        service.client.post("/predict", json={"data": []})
    service.client.get("/health")
    service.client.get("/predict/test")
    counted = {
        (s.labels["handler"], s.labels["method"], s.labels["status"]): s.value
        for metric in service.registry.collect()
        if metric.name == "http_requests"
        for s in metric.samples
        if s.name == "http_requests_total"
    }
    assert counted == {
        ("/predict", "POST", "200"): 3,
        ("/predict", "POST", "422"): 2,
        ("/health", "GET", "200"): 1,
        ("/predict/test", "GET", "200"): 1,
    }


def test_http_request_duration_is_observed_once_per_request(service: Service) -> None:
    for _ in range(3):
        service.client.post("/predict", json={"data": [ROW]})
    service.client.post("/predict", json={"data": []})
    labels = {"handler": "/predict", "method": "POST"}
    assert service.value("http_request_duration_seconds_count", **labels) == 4
    assert service.value("http_request_duration_seconds_bucket", le="+Inf", **labels) == 4


def test_unknown_path_is_counted_as_handler_other(service: Service) -> None:
    service.client.get("/no/such/path")
    assert service.value("http_requests_total", handler="other", method="GET", status="404") == 1


def test_training_gauges_equal_metadata(service: Service) -> None:
    for feature, mean, stddev in zip(
        FEATURE_NAMES, service.metadata["training_mean"], service.metadata["training_stddev"], strict=True
    ):
        assert service.model_value("model_feature_training_mean", feature=feature) == mean
        assert service.model_value("model_feature_training_stddev", feature=feature) == stddev


def test_drift_baseline_gauges_equal_metadata(service: Service) -> None:
    metadata = service.metadata
    assert service.model_value("model_training_rows") == metadata["training_rows"]
    assert service.model_value("model_training_outlier_ratio") == metadata["training_outlier_fraction"]
    for label, share in zip(LABELS, metadata["training_predicted_label_shares"], strict=True):
        assert service.model_value("model_training_predicted_label_ratio", predicted_label=label) == share
    for feature, edges, shares in zip(
        FEATURE_NAMES,
        metadata["feature_bucket_edges"],
        metadata["feature_bucket_training_shares"],
        strict=True,
    ):
        bounds = ["-Inf", *(floatToGoString(edge) for edge in edges), "+Inf"]
        for lower, upper, share in zip(bounds[:-1], bounds[1:], shares, strict=True):
            value = service.model_value(
                "model_feature_training_bucket_share", feature=feature, lower=lower, upper=upper
            )
            assert value == share, (feature, lower, upper)


def test_each_feature_histogram_has_its_own_training_decile_buckets(service: Service) -> None:
    service.client.post("/predict", json={"data": [ROW]})
    for column, (feature, edges) in enumerate(
        zip(FEATURE_NAMES, service.metadata["feature_bucket_edges"], strict=True)
    ):
        les = {
            sample.labels["le"]
            for metric in service.registry.collect()
            if metric.name == "model_input_feature_value"
            for sample in metric.samples
            if sample.name.endswith("_bucket") and sample.labels["feature"] == feature
        }
        assert les == {*(floatToGoString(edge) for edge in edges), "+Inf"}, feature
        first_bucket_holding_the_value = next(
            (floatToGoString(edge) for edge in edges if ROW[column] <= edge), "+Inf"
        )
        assert (
            service.model_value(
                "model_input_feature_value_bucket", feature=feature, le=first_bucket_holding_the_value
            )
            == 1
        )


def test_model_info_is_1_for_the_loaded_model(service: Service) -> None:
    info = service.model_value(
        "model_info",
        classifier=service.metadata["classifier"],
        outlier_detector=service.metadata["outlier_detector"],
    )
    assert info == 1


def model_samples(service: Service) -> dict[tuple[str, frozenset], float]:
    """Every sample of the per-row model metrics (not the timings, which differ from run to run)."""
    names = {
        "model_predictions",
        "model_outliers",
        "model_outlier_score",
        "model_input_feature_value",
        "model_input_feature_value_positive_part",
        "model_input_feature_value_negative_part",
        "model_input_feature_value_squares",
    }
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for metric in service.registry.collect()
        if metric.name in names
        for s in metric.samples
    }
    # prometheus-client exports no _sum for a histogram with negative buckets in one process (it does in
    # multiprocess mode, which gunicorn uses): read the child's sum directly
    score = service.metrics.model_outlier_score.labels(service.metadata["model_version"])
    samples["model_outlier_score_sum", frozenset()] = score._sum.get()
    return samples


def test_batch_of_1000_rows_increments_model_metrics_like_1000_single_rows(model_dir: Path) -> None:
    rng = np.random.default_rng(7)
    edge_rows = [[0.5, 1.0, 8.0, 10.0], [0.0, -1.0, 10.5, 12.0], [0.25, 7.75, 9.99, 0.1], FAR_AWAY_ROW]
    far_rows = rng.uniform(-20, 20, size=(96, 4)).round(2)
    rows = np.concatenate([np.resize(iris_rows(), (900, 4)), edge_rows, far_rows]).tolist()
    assert len(rows) == 1000
    with running_service(model_dir) as singles, running_service(model_dir) as batch:
        for row in rows:
            predict(singles, [row])
        predict(batch, rows, "/predict/batch")
        assert singles.model_value("model_outliers_total") > 0  # the comparison covers outliers
        from_singles, from_batch = model_samples(singles), model_samples(batch)
    sums = {key for key in from_singles if key[0].endswith(("_sum", "_part_total", "_squares_total"))}
    assert sum(1 for key in sums if "squares" in key[0]) == len(FEATURE_NAMES)  # the squares compared too
    assert any(from_singles[key] for key in sums if "negative_part" in key[0])  # negative values compared too
    assert {k: v for k, v in from_batch.items() if k not in sums} == {
        k: v for k, v in from_singles.items() if k not in sums
    }
    # ONNX answers a batch with float32 rounding differences of ~1e-7 per row against single rows
    assert {k: from_batch[k] for k in sums} == pytest.approx(
        {k: from_singles[k] for k in sums}, rel=1e-6, abs=1e-3
    )


def test_http_metric_labels_stay_bounded_for_random_paths_and_methods(service: Service) -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-._~%"
    for _ in range(50):
        path = "/" + "/".join(
            "".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 3))
        )
        service.client.request(rng.choice(["GET", "POST", "FOO", "PROPFIND", "BREW"]), path)
    for method in ["FOO", "PROPFIND", "BREW", "get"]:
        service.client.request(method, "/predict")
        service.client.request(method, "/health")
    routes = {route.path for route in service.app.routes} | {"other"}
    methods = HTTP_METHODS | {"other"}
    label_sets = {
        (s.labels["handler"], s.labels["method"])
        for metric in service.registry.collect()
        if metric.name in {"http_requests", "http_request_duration_seconds"}
        for s in metric.samples
    }
    assert {handler for handler, _ in label_sets} <= routes
    assert {method for _, method in label_sets} <= methods


# --- prediction log -------------------------------------------------------------------------------


def test_app_shutdown_closes_the_prediction_log(model_dir: Path) -> None:
    sink = MemorySink()
    app = create_app(
        Settings(model_dir=model_dir),
        metrics=ServiceMetrics(CollectorRegistry()),
        prediction_log=PredictionLog(sink),
    )
    with TestClient(app) as client:
        client.get("/predict/test")
    assert sink.closed  # PredictionLog.close() closes its sink only after writing everything queued


def test_prediction_log_has_one_line_per_prediction_request_valid_or_not(service: Service) -> None:
    job_ids = [
        service.client.get("/predict/test").json()["job_id"],
        service.client.get("/predict/test/label").json()["job_id"],
        predict(service, [ROW])["job_id"],
        predict(service, [ROW], "/predict/label")["job_id"],
        predict(service, [ROW] * 5, "/predict/batch")["job_id"],
    ]
    for endpoint, body, content_type, _, _ in REJECTED.values():
        job_ids.append(post_rejected(service, endpoint, body, content_type).json()["job_id"])
    for path in ["/health", "/ready", "/metadata", "/label", "/metrics", "/no/such/path"]:
        service.client.get(path)
    assert sorted(record["job_id"] for record in service.log_records()) == sorted(job_ids)


def assert_utc_iso_timestamp(value: str) -> None:
    assert datetime.fromisoformat(value).utcoffset() == timedelta(0)


def test_prediction_log_line_of_a_prediction_has_its_fields(service: Service) -> None:
    answer = predict(service, [ROW], "/predict/label")
    (record,) = service.log_records()
    assert set(record) == {
        "timestamp",
        "job_id",
        "endpoint",
        "model_version",
        "latency_ms",
        "status",
        "input",
        "prediction",
        "label",
        "is_outlier",
        "outlier_score",
    }
    assert_utc_iso_timestamp(record["timestamp"])
    assert record["job_id"] == answer["job_id"]
    assert record["endpoint"] == "/predict/label"
    assert record["model_version"] == service.metadata["model_version"]
    assert isinstance(record["latency_ms"], float) and record["latency_ms"] > 0
    assert record["latency_ms"] == round(record["latency_ms"], 3)  # microseconds, not 15 digits
    assert record["status"] == 200
    assert record["input"] == [ROW]
    assert len(record["prediction"]) == 1 and sum(record["prediction"][0]) == pytest.approx(1, abs=1e-5)
    assert record["label"] == ["setosa"]
    assert record["is_outlier"] == [answer["is_outlier"]]
    assert record["outlier_score"] == [answer["outlier_score"]]


def test_prediction_log_line_of_a_batch_has_one_entry_per_row(service: Service) -> None:
    answer = predict(service, [ROW, FAR_AWAY_ROW, ROW], "/predict/batch")
    (record,) = service.log_records()
    assert record["input"] == [ROW, FAR_AWAY_ROW, ROW]
    assert record["label"] == [result["label"] for result in answer["results"]]
    assert record["is_outlier"] == [False, True, False]
    assert record["outlier_score"] == [result["outlier_score"] for result in answer["results"]]


def test_prediction_log_line_of_a_rejection_has_status_error_and_raw_input(service: Service) -> None:
    body = b'{"data": [[1, 2, "three", 4]]}'
    answer = post_rejected(service, "/predict", body, JSON).json()
    (record,) = service.log_records()
    assert set(record) == {
        "timestamp",
        "job_id",
        "endpoint",
        "model_version",
        "latency_ms",
        "status",
        "error",
        "input",
    }
    assert_utc_iso_timestamp(record["timestamp"])
    assert record["job_id"] == answer["job_id"]
    assert record["endpoint"] == "/predict"
    assert record["status"] == 422
    assert record["error"] == {"reason": "non_numeric", "message": answer["detail"]}
    assert record["input"] == body.decode()


def test_prediction_log_cuts_a_big_rejected_body_to_2048_characters_and_a_marker(service: Service) -> None:
    body = b'{"data": "' + b"x" * 5000 + b'"}'
    post_rejected(service, "/predict", body, JSON)
    (record,) = service.log_records()
    more = len(body) - MAX_LOGGED_BODY_CHARS
    assert record["input"] == body[:MAX_LOGGED_BODY_CHARS].decode() + f"…[{more} more characters]"


def test_body_with_newlines_is_logged_as_exactly_one_line(service: Service) -> None:
    body = b'{"data":\n[[1, 2,\r\n3]]\n}\n'
    post_rejected(service, "/predict", body, JSON)
    lines = service.log_records()
    assert len(lines) == 1
    assert lines[0]["input"] == body.decode()


def test_rows_the_model_cannot_score_are_rejected_not_answered_with_nan(model_dir: Path) -> None:
    # Validation stops values beyond ±1e30; the predictor still guards against a model whose scaling
    # overflows (here: float32 values near its limit, passed straight to the predictor).
    metrics = ServiceMetrics(CollectorRegistry())
    sink = MemorySink()
    log = PredictionLog(sink)
    model = Model(model_dir)
    predictor = Predictor(model, 10, metrics, log)
    data = [[-2.7e38, 3.0e38, 1.1e16, 0.0]]
    rows = np.array(data, dtype=np.float32)
    outcome = predictor.predict("/predict", Answer.PROBABILITIES, data, rows, "job-1", time.perf_counter())
    log.close()
    assert (outcome.status_code, outcome.body["reason"]) == (422, "out_of_range")
    assert metrics.registry.get_sample_value("model_invalid_requests_total", {"reason": "out_of_range"}) == 1
    assert not metrics.registry.get_sample_value(
        "model_outliers_total", {"model_version": Model(model_dir).version}
    )
    (line,) = sink.lines()
    assert json.loads(line)["error"]["reason"] == "out_of_range"


def test_a_probe_is_answered_and_logged_but_kept_out_of_the_model_metrics(service: Service) -> None:
    response = service.client.post(
        "/predict", json={"data": [ROW]}, headers={"X-Prediction-Probe": "blackbox"}
    )
    assert response.status_code == 200 and "prediction" in response.json()
    assert service.model_value("model_predictions_total", predicted_label="setosa") == 0
    assert service.model_value("model_input_feature_value_count", feature=FEATURE_NAMES[0]) == 0
    assert service.value("http_requests_total", handler="/predict", method="POST", status="200") == 1
    service.client.post("/predict", json={"data": [ROW]})
    assert service.model_value("model_predictions_total", predicted_label="setosa") == 1
    assert [record.get("probe") for record in service.log_records()] == [True, None]
