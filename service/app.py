"""The HTTP API: the book's paths and shapes, plus /ready, /metrics and /predict/batch.

Routes stay thin: they read the request, hand it to the Predictor and turn its Outcome into a response.
The POST prediction routes are declared here (schema, 405 for other methods) but served by
`service.prediction_routes`, a plain ASGI path in front of FastAPI's routing.
"""

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import prometheus_client
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.http_metrics import HttpMetricsMiddleware
from service.metrics import ServiceMetrics
from service.model import Model
from service.multiproc_compaction import multiprocess_registry
from service.prediction_log import PredictionLog, RotatingFileSink, StreamSink, mount_point
from service.prediction_routes import PredictionRoute
from service.predictor import Answer, Outcome, Predictor, job_id_for
from service.settings import Settings
from service.validation import MAX_ABS_VALUE, Reason

SAMPLE_ROW = [5.1, 3.5, 1.4, 0.2]  # the book's test input, served by /predict/test
# Swagger UI and ReDoc as files of the fastapi-offline package: FastAPI's own /docs loads them from a CDN,
# and is blank behind a firewall.
DOCS_ASSETS_PATH = "/docs-assets"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))


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


def body_schema(n_features: int, max_rows: int) -> dict[str, Any]:
    """The request body as validation accepts it (validation itself is by hand, for speed)."""
    number = {"type": "number", "minimum": -MAX_ABS_VALUE, "maximum": MAX_ABS_VALUE}
    row = {"type": "array", "items": number, "minItems": n_features, "maxItems": n_features}
    data = {
        "type": "array",
        "items": row,
        "minItems": 1,
        "maxItems": max_rows,
        "description": f"Rows of {n_features} finite numbers.",
        "examples": [[SAMPLE_ROW]],
    }
    schema = {"type": "object", "properties": {"data": data}, "required": ["data"], "title": "PredictRequest"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def json_response(body: Any, status_code: int = 200, job_id: str | None = None) -> Response:
    headers = {"X-Request-ID": job_id} if job_id else None
    return Response(
        orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers
    )


def outcome_response(outcome: Outcome) -> Response:
    return json_response(outcome.body, outcome.status_code, outcome.job_id)


class ServiceApp(FastAPI):
    """FastAPI, except that POST requests to the prediction paths go straight to their PredictionRoute.

    Those requests bypass FastAPI's middleware stack: PredictionRoute counts and times them itself, and a
    middleware added to the app later would not see them.
    """

    prediction_routes: dict[str, PredictionRoute]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.prediction_routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


# The endpoint FastAPI documents for the POST prediction paths; ServiceApp never lets a POST reach it.
# (No docstring: FastAPI would publish it as the operations' description.)
def served_by_prediction_route() -> Response:
    raise RuntimeError("POST prediction requests are served by service.prediction_routes.PredictionRoute")


def metrics_exposition(metrics: ServiceMetrics) -> bytes:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # gunicorn workers each write their own files: merge them on every scrape
        return generate_latest(multiprocess_registry(Path(directory), os.getppid()))
    return generate_latest(metrics.registry)


def open_prediction_log(settings: Settings) -> PredictionLog:
    if settings.log_file is not None:
        return PredictionLog(
            RotatingFileSink(settings.log_file, settings.log_max_bytes, settings.log_backup_count)
        )
    return PredictionLog(StreamSink(settings.multiproc_dir / "prediction-log.lock"))


def add_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc as FastAPI serves them, but from local files only."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    favicon = f"{DOCS_ASSETS_PATH}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=favicon,
            # no validator badge: it is an image from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )


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
            if settings.log_file is not None and settings.metrics_enabled:
                metrics.prediction_log_filesystem_info.labels(str(mount_point(settings.log_file))).set(1)
        state["predictor"] = Predictor(
            model, settings.max_batch_rows, metrics if settings.metrics_enabled else None, log
        )
        yield
        state.pop("predictor")
        if log is not None:
            log.close()

    app = ServiceApp(
        title="Iris prediction service",
        version=model.version,
        description="Iris classifier with a One-class SVM outlier detector, monitored by Prometheus.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)

    def predict_sample(request: Request, endpoint: str, answer: Answer) -> Response:
        started = time.perf_counter()
        job_id = job_id_for(request.headers.get("x-request-id"))
        data = [SAMPLE_ROW]
        rows = np.array(data, dtype=np.float32)
        return outcome_response(state["predictor"].predict(endpoint, answer, data, rows, job_id, started))

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

    one_row = body_schema(model.n_features, 1)
    prediction_endpoints = (
        ("/predict", "predict", Answer.PROBABILITIES, "Probabilities of one row", PredictResponse, one_row),
        ("/predict/label", "predict_label", Answer.LABEL, "Label for one row", PredictResponse, one_row),
        (
            "/predict/batch",
            "predict_batch",
            Answer.BATCH,
            f"One result per row, up to SERVICE_MAX_BATCH_ROWS ({settings.max_batch_rows}) rows",
            BatchResponse,
            body_schema(model.n_features, settings.max_batch_rows),
        ),
    )
    app.prediction_routes = {}
    for path, name, answer, summary, response_model, request_body in prediction_endpoints:
        app.prediction_routes[path] = PredictionRoute(
            path,
            answer,
            lambda: state["predictor"],
            settings.max_body_bytes,
            metrics if settings.metrics_enabled else None,
        )
        app.add_api_route(
            path,
            served_by_prediction_route,
            methods=["POST"],
            name=name,
            summary=summary,
            response_model=response_model,
            responses=ERROR_RESPONSES,
            openapi_extra=request_body,
        )

    if settings.metrics_port is None:  # else the gunicorn master serves them on their own port

        @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(metrics_exposition(metrics), media_type=CONTENT_TYPE_LATEST)

    if settings.metrics_enabled:
        handlers = {route.path for route in app.routes if isinstance(route, Route)}
        app.add_middleware(HttpMetricsMiddleware, metrics=metrics, handlers=handlers)
    return app
