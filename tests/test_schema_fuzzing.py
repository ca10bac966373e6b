"""Fuzzing the API in-process: schemathesis from the service's own OpenAPI schema; hypothesis, raw requests.

No request gets a 5xx; every 4xx is JSON with a `detail` message (and, from the prediction endpoints, a
`reason`); every prediction request is logged exactly once and counted under its reason; no label value
comes from the request. The limits are set low (1 KiB bodies, 5 rows) so that the fuzzers reach them.
"""

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from conftest import MemorySink, any_json
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.python import asgi as schemathesis_asgi

from service.app import create_app
from service.metrics import HTTP_METHODS, ServiceMetrics
from service.model_files import FEATURE_NAMES, LABELS, METADATA_FILE
from service.prediction_log import PredictionLog
from service.settings import Settings
from service.validation import STATUS_BY_REASON, Reason

MAX_BODY_BYTES = 1024  # the smallest the settings allow
MAX_BATCH_ROWS = 5
PREDICTION_PATHS = ("/predict", "/predict/label", "/predict/batch")
# Every operation of the API; a test below proves the schema documents exactly these.
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metadata"),
    ("GET", "/label"),
    ("GET", "/predict/test"),
    ("GET", "/predict/test/label"),
    *(("POST", path) for path in PREDICTION_PATHS),
]
# (/docs-assets: the Swagger UI and ReDoc files /docs and /redoc load)
UNDOCUMENTED_ROUTES = {
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/docs-assets",
    "/metrics",
}
FUZZ_SETTINGS = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@dataclass
class FuzzedApp:
    app: FastAPI
    metrics: ServiceMetrics
    sink: MemorySink
    metadata: dict


def fuzzed_app(model_dir: Path) -> FuzzedApp:
    settings_ = Settings(model_dir=model_dir, max_body_bytes=MAX_BODY_BYTES, max_batch_rows=MAX_BATCH_ROWS)
    metrics = ServiceMetrics(CollectorRegistry())
    sink = MemorySink()
    app = create_app(settings_, metrics=metrics, prediction_log=PredictionLog(sink))
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    return FuzzedApp(app, metrics, sink, metadata)


def assert_json_error(status: int, content_type: str | None, body: bytes) -> dict:
    """A 4xx answer is JSON with a non-empty `detail` message; returns the decoded answer."""
    assert 400 <= status < 500, status
    assert (content_type or "").split(";")[0] == "application/json", content_type
    answer = json.loads(body)
    assert isinstance(answer, dict) and isinstance(answer.get("detail"), str) and answer["detail"], answer
    return answer


# --- schemathesis: the OpenAPI schema --------------------------------------------------------------------
#
# `schemathesis.pytest.from_fixture` does not work with pytest 9 (it sets `Function._nodeid`, which pytest
# 9 removed), so each operation's generated cases are drawn with `as_strategy` inside a hypothesis test.


@pytest.fixture(scope="module")
def api(model_dir: Path) -> Iterator[tuple[FuzzedApp, schemathesis.BaseSchema]]:
    fuzzed = fuzzed_app(model_dir)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app)  # also starts the app
    # A body over the limit is rejected with 413 before it is parsed, whatever it holds.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    yield fuzzed, schema
    schemathesis_asgi.shutdown_lifespans()


def test_schema_documents_every_route_of_the_api(api: tuple[FuzzedApp, schemathesis.BaseSchema]) -> None:
    fuzzed, schema = api
    documented = sorted((op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations())
    routed = sorted(
        (method, route.path)
        for route in fuzzed.app.routes
        if route.path not in UNDOCUMENTED_ROUTES
        for method in route.methods
    )
    assert documented == routed == sorted(OPERATIONS)


SCHEMA_CASES = [
    pytest.param(method, path, mode, id=f"{mode.value} {method} {path}")
    for method, path in OPERATIONS
    for mode in GenerationMode
    # Operations without parameters or body have nothing to get wrong.
    if mode is GenerationMode.POSITIVE or method == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), SCHEMA_CASES)
def test_schema_generated_requests_get_no_server_error_and_json_errors(
    api: tuple[FuzzedApp, schemathesis.BaseSchema], method: str, path: str, mode: GenerationMode
) -> None:
    _, schema = api
    operation = schema[path][method]

    @FUZZ_SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(mode))
        response = case.call()
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            (content_type,) = response.headers.get("content-type", [None])  # schemathesis: lists of values
            assert_json_error(response.status_code, content_type, response.content)
        # Schemathesis' own checks (no server error, documented status codes, content types and response
        # schemas, negative data rejected); schema-valid data being accepted is the next test.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()


@pytest.mark.parametrize("path", PREDICTION_PATHS)
def test_schema_valid_request_bodies_are_accepted(
    api: tuple[FuzzedApp, schemathesis.BaseSchema], path: str
) -> None:
    _, schema = api
    operation = schema[path]["POST"]

    @settings(FUZZ_SETTINGS, derandomize=True)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(GenerationMode.POSITIVE))
        case.validate_response(case.call(), checks=[positive_data_acceptance])

    check()


# --- hypothesis: raw requests over HTTP --------------------------------------------------------------------

json_values = any_json(max_leaves=20)
numbers = st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=True, allow_infinity=True)
rows = st.lists(st.lists(numbers, min_size=3, max_size=5), min_size=0, max_size=MAX_BATCH_ROWS + 2)
plausible_rows = st.lists(
    st.lists(st.floats(min_value=0, max_value=10), min_size=4, max_size=4),
    min_size=1,
    max_size=MAX_BATCH_ROWS,
)
bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),  # json.dumps writes NaN and Infinity
    st.fixed_dictionaries({"data": json_values}).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"data": rows}).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"data": plausible_rows}).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda text: text.encode("utf-8", errors="surrogatepass")),
    st.integers(min_value=MAX_BODY_BYTES - 8, max_value=MAX_BODY_BYTES + 64).map(lambda size: b" " * size),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "APPLICATION/JSON",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)
request_ids = st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)


@dataclass
class Exchange:
    status: int
    job_id: str
    reason: str | None
    rows_predicted: int


@dataclass
class RawRun:
    fuzzed: FuzzedApp
    exchanges: list[Exchange] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)


@pytest.fixture(scope="module")
def raw_run(model_dir: Path) -> RawRun:
    """Hypothesis sends raw POST requests; the app is then stopped so that its log is flushed."""
    run = RawRun(fuzzed_app(model_dir))
    with TestClient(run.fuzzed.app, raise_server_exceptions=False) as client:

        @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(
            path=st.sampled_from(PREDICTION_PATHS),
            body=bodies,
            content_type=content_types,
            request_id=request_ids,
        )
        def send(path: str, body: bytes, content_type: str | None, request_id: str | None) -> None:
            headers = {}
            if content_type is not None:
                headers["content-type"] = content_type
            if request_id is not None:
                headers["x-request-id"] = request_id
            response = client.post(path, content=body, headers=headers)
            assert response.status_code < 500, response.text
            answer = response.json()
            assert response.headers["x-request-id"] == answer["job_id"]
            if response.status_code == 200:
                predicted = len(answer["results"]) if path == "/predict/batch" else 1
                run.exchanges.append(Exchange(200, answer["job_id"], None, predicted))
                return
            assert_json_error(response.status_code, response.headers["content-type"], response.content)
            assert set(answer) == {"detail", "reason", "job_id"}
            reason = Reason(answer["reason"])
            assert response.status_code == STATUS_BY_REASON.get(reason, 422)
            run.exchanges.append(Exchange(response.status_code, answer["job_id"], reason.value, 0))

        send()
    run.log = run.fuzzed.sink.records()
    return run


def test_raw_requests_get_no_server_error_and_json_errors_with_a_reason(raw_run: RawRun) -> None:
    statuses = Counter(exchange.status for exchange in raw_run.exchanges)
    # the fuzzer reached predictions and each kind of rejection
    assert {200, 413, 415, 422} <= set(statuses), statuses


def test_raw_requests_are_logged_once_each_with_their_status_and_reason(raw_run: RawRun) -> None:
    logged = Counter(
        (record["job_id"], record["status"], record.get("error", {}).get("reason")) for record in raw_run.log
    )
    answered = Counter((exchange.job_id, exchange.status, exchange.reason) for exchange in raw_run.exchanges)
    assert logged == answered


def test_raw_requests_are_counted_under_their_reason_and_predictions_per_row(raw_run: RawRun) -> None:
    fuzzed = raw_run.fuzzed
    registry = fuzzed.metrics.registry
    invalid = {
        reason.value: registry.get_sample_value("model_invalid_requests_total", {"reason": reason.value})
        for reason in Reason
    }
    rejected = Counter(exchange.reason for exchange in raw_run.exchanges if exchange.reason)
    assert invalid == {reason.value: float(rejected[reason.value]) for reason in Reason}
    version = fuzzed.metadata["model_version"]
    predicted = sum(
        registry.get_sample_value(
            "model_predictions_total", {"model_version": version, "predicted_label": label}
        )
        or 0.0
        for label in LABELS
    )
    assert predicted == sum(exchange.rows_predicted for exchange in raw_run.exchanges)


def unexpected_label_values(fuzzed: FuzzedApp) -> set[tuple[str, str, str]]:
    """(sample, label, value) of every label value outside the fixed sets of the metric contract."""
    edges = {floatToGoString(e) for column in fuzzed.metadata["feature_bucket_edges"] for e in column}
    allowed = {
        "handler": {route.path for route in fuzzed.app.routes} | {"other"},
        "method": HTTP_METHODS | {"other"},
        "status": {"200", "404", "405", "413", "415", "422"},
        "reason": {reason.value for reason in Reason},
        "model_version": {fuzzed.metadata["model_version"]},
        "predicted_label": set(LABELS),
        "feature": set(FEATURE_NAMES),
        "stage": {"classifier", "outlier_detector"},
        "classifier": {fuzzed.metadata["classifier"]},
        "outlier_detector": {fuzzed.metadata["outlier_detector"]},
        # the drift buckets' edges, from metadata.json
        "lower": {"-Inf", *edges},
        "upper": {"+Inf", *edges},
    }
    return {
        (sample.name, name, value)
        for family in fuzzed.metrics.registry.collect()
        for sample in family.samples
        for name, value in sample.labels.items()
        if name != "le" and value not in allowed.get(name, set())
    }


def test_no_label_value_comes_from_a_fuzzed_body_or_header(raw_run: RawRun) -> None:
    assert unexpected_label_values(raw_run.fuzzed) == set()


# --- any method on any path ----------------------------------------------------------------------------

paths = st.one_of(
    st.sampled_from(sorted({path for _, path in OPERATIONS} | {"/metrics", "/openapi.json"})),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=30).map(
        lambda text: "/" + text
    ),
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def test_any_method_on_any_path_gets_no_server_error_4xx_as_json_and_no_new_label(model_dir: Path) -> None:
    fuzzed = fuzzed_app(model_dir)
    with TestClient(fuzzed.app, raise_server_exceptions=False) as client:

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(method=methods, path=paths, query=st.text(max_size=20))
        def send(method: str, path: str, query: str) -> None:
            response = client.request(method, path, params={"q": query} if query else None)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert_json_error(
                    response.status_code, response.headers.get("content-type"), response.content
                )

        send()
    assert unexpected_label_values(fuzzed) == set()
