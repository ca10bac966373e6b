"""The HTTP API: the book's paths and shapes, plus /ready, /metrics and /predict/batch.

Routes stay thin: they read the request, hand it to the Predictor and turn its Outcome into a response.
"""

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
import prometheus_client
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from pydantic import BaseModel, Field

from service.http_metrics import HttpMetricsMiddleware
from service.metrics import ServiceMetrics
from service.model import Model
from service.prediction_log import PredictionLog, RotatingFileSink, StreamSink
from service.predictor import Answer, Outcome, Predictor, job_id_for
from service.settings import Settings
from service.validation import InvalidInput, Reason

SAMPLE_ROW = [5.1, 3.5, 1.4, 0.2]  # the book's test input, served by /predict/test


class PredictRequest(BaseModel):
    """Request body of the prediction endpoints (documentation only: bodies are validated by hand)."""

    data: list[list[float]] = Field(examples=[[SAMPLE_ROW]], description="Rows of 4 finite numbers.")


class PredictResponse(BaseModel):
    job_id: str
    prediction: list[float] | str
    is_outlier: bool
    outlier_score: float


class BatchResult(BaseModel):
    prediction: list[float]
    label: str
    is_outlier: bool
    outlier_score: float


class BatchResponse(BaseModel):
    job_id: str
    results: list[BatchResult]


class ErrorResponse(BaseModel):
    detail: str
    reason: Reason
    job_id: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (413, "Body larger than SERVICE_MAX_BODY_BYTES"),
        (415, "Content-Type is not JSON"),
        (422, "The input is not rows of finite numbers of the right shape"),
    )
}
BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def json_response(body: Any, status_code: int = 200, job_id: str | None = None) -> Response:
    headers = {"X-Request-ID": job_id} if job_id else None
    return Response(
        orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers
    )


def outcome_response(outcome: Outcome) -> Response:
    return json_response(outcome.body, outcome.status_code, outcome.job_id)


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(Reason.BODY_TOO_LARGE, f"body has {declared} bytes; the limit is {max_bytes}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(Reason.BODY_TOO_LARGE, f"body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def metrics_exposition(metrics: ServiceMetrics) -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # gunicorn workers each write their own files: merge them on every scrape
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(metrics.registry)


def open_prediction_log(settings: Settings) -> PredictionLog:
    if settings.log_file is not None:
        return PredictionLog(
            RotatingFileSink(settings.log_file, settings.log_max_bytes, settings.log_backup_count)
        )
    return PredictionLog(StreamSink(settings.multiproc_dir / "prediction-log.lock"))


def create_app(
    settings: Settings | None = None,
    metrics: ServiceMetrics | None = None,
    prediction_log: PredictionLog | None = None,
) -> FastAPI:
    """Build the API. Tests pass a fresh `ServiceMetrics(CollectorRegistry())` and their own log."""
    settings = settings or Settings()
    metrics = metrics or ServiceMetrics(prometheus_client.REGISTRY)
    model = Model(settings.model_dir)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log = prediction_log
        if log is None and settings.prediction_log_enabled:
            log = open_prediction_log(settings)
        state["predictor"] = Predictor(
            model, settings.max_batch_rows, metrics if settings.metrics_enabled else None, log
        )
        yield
        state.pop("predictor")
        if log is not None:
            log.close()

    app = FastAPI(
        title="Iris prediction service",
        version=model.version,
        description="Iris classifier with a One-class SVM outlier detector, monitored by Prometheus.",
        lifespan=lifespan,
    )

    async def predict_body(request: Request, endpoint: str, answer: Answer) -> Response:
        started = time.perf_counter()
        predictor: Predictor = state["predictor"]
        job_id = job_id_for(request.headers.get("x-request-id"))
        try:
            body = await read_body(request, settings.max_body_bytes)
        except InvalidInput as error:
            return outcome_response(predictor.reject(endpoint, error, b"", job_id, started))
        outcome = predictor.handle_body(
            endpoint, answer, body, request.headers.get("content-type"), job_id, started
        )
        return outcome_response(outcome)

    def predict_sample(request: Request, endpoint: str, answer: Answer) -> Response:
        started = time.perf_counter()
        job_id = job_id_for(request.headers.get("x-request-id"))
        rows = np.array([SAMPLE_ROW], dtype=np.float32)
        return outcome_response(state["predictor"].predict(endpoint, answer, rows, job_id, started))

    @app.get("/health", summary="Liveness (the book's health check)")
    async def health() -> Response:
        return json_response({"health": "ok"})

    @app.get("/ready", summary="200 once the models are loaded, 503 before")
    async def ready() -> Response:
        if "predictor" not in state:
            return json_response({"ready": False}, 503)
        return json_response({"ready": True, "model_version": model.version})

    @app.get("/metadata", summary="Input and output shapes, samples and the model metadata")
    async def metadata() -> Response:
        return json_response(
            {
                "data_type": "float32",
                "data_structure": f"(1,{model.n_features})",
                "data_sample": [SAMPLE_ROW],
                "prediction_type": "float32",
                "prediction_structure": f"(1,{len(model.labels)})",
                "prediction_sample": [0.97093159, 0.01558308, 0.01348537],
                "outlier_type": "bool, float32",
                "outlier_structure": "(1,2)",
                "outlier_sample": [False, -0.5],
                "model": model.metadata,
            }
        )

    @app.get("/label", summary="Class index to label")
    async def label() -> Response:
        return json_response({str(index): name for index, name in enumerate(model.labels)})

    @app.get("/predict/test", summary="Predict the sample row", response_model=PredictResponse)
    async def predict_test(request: Request) -> Response:
        return predict_sample(request, "/predict/test", Answer.PROBABILITIES)

    @app.get("/predict/test/label", summary="Predict the sample row's label", response_model=PredictResponse)
    async def predict_test_label(request: Request) -> Response:
        return predict_sample(request, "/predict/test/label", Answer.LABEL)

    @app.post(
        "/predict",
        summary="Class probabilities for one row",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=BODY_SCHEMA,
    )
    async def predict(request: Request) -> Response:
        return await predict_body(request, "/predict", Answer.PROBABILITIES)

    @app.post(
        "/predict/label",
        summary="Label for one row",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=BODY_SCHEMA,
    )
    async def predict_label(request: Request) -> Response:
        return await predict_body(request, "/predict/label", Answer.LABEL)

    @app.post(
        "/predict/batch",
        summary=f"One result per row, up to SERVICE_MAX_BATCH_ROWS ({settings.max_batch_rows}) rows",
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=BODY_SCHEMA,
    )
    async def predict_batch(request: Request) -> Response:
        return await predict_body(request, "/predict/batch", Answer.BATCH)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics_exposition(metrics), media_type=CONTENT_TYPE_LATEST)

    if settings.metrics_enabled:
        handlers = {route.path for route in app.routes}
        app.add_middleware(HttpMetricsMiddleware, metrics=metrics, handlers=handlers)
    return app
