"""In-process cost of one prediction against the two raw onnxruntime calls on the same ONNX files, and of
one POST /predict through the whole ASGI app, with and without instrumentation.

Run as `python -m bench.inprocess MODEL_DIR` by the benchmark, in a process of its own so that metrics are
in multiprocess mode as in production; prints one JSON object of seconds per call.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Message

from bench.bare_app import SAMPLE_ROW, raw_model_runs

SAMPLE_BODY = orjson.dumps({"data": [SAMPLE_ROW]})


def best_seconds(call: Callable[[], Any], repeats: int = 7, min_seconds: float = 0.2) -> float:
    """Best of `repeats` timed loops (noise on a shared machine only ever adds time)."""
    for _ in range(1000):  # warm caches and onnxruntime's first-run allocations
        call()
    loops = 1000
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            call()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds / 4:
            break
        loops *= 4
    best = elapsed / loops
    for _ in range(repeats - 1):
        started = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - started) / loops)
    return best


def asgi_path_seconds(model_dir: Path, instrumented: bool, repeats: int = 7, loops: int = 20_000) -> float:
    """Seconds per POST /predict through the app (ServiceApp, PredictionRoute) with a fake receive and send:
    the route without the server and the network, best of `repeats` loops."""
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from service.metrics import ServiceMetrics
    from service.prediction_log import PredictionLog
    from service.settings import Settings

    settings = Settings(
        model_dir=model_dir, metrics_enabled=instrumented, prediction_log_enabled=instrumented
    )
    log = PredictionLog(_NullSink()) if instrumented else None
    app = create_app(settings, ServiceMetrics(CollectorRegistry()), log)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(SAMPLE_BODY)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    request = {"type": "http.request", "body": SAMPLE_BODY, "more_body": False}

    async def receive() -> Message:
        return request

    async def send(message: Message) -> None:
        pass

    async def seconds_per_request(count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / count

    async def best() -> float:
        async with app.router.lifespan_context(app):  # loads the predictor; closes the log at the end
            await seconds_per_request(2000)  # warm up
            return min([await seconds_per_request(loops) for _ in range(repeats)])

    return asyncio.run(best())


class _NullSink:
    def write(self, data: bytes | bytearray) -> None:
        pass

    def close(self) -> None:
        pass


def measure(model_dir: Path) -> dict[str, float]:
    # multiprocess metrics, as under gunicorn: must be set before prometheus_client is imported
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import numpy as np
    from prometheus_client import CollectorRegistry

    from service.metrics import ServiceMetrics
    from service.model import Model
    from service.prediction_log import PredictionLog
    from service.predictor import Answer, Predictor

    raw = raw_model_runs(model_dir)  # the service's session options: compare the wrappers, not onnxruntime
    rows = np.array([SAMPLE_ROW], dtype=np.float32)

    model = Model(model_dir)
    log = PredictionLog(_NullSink())
    predictor = Predictor(model, 1000, ServiceMetrics(CollectorRegistry()), log)

    def request_path() -> None:
        predictor.handle_body("/predict", Answer.PROBABILITIES, SAMPLE_BODY, "application/json", "bench", 0.0)

    try:
        return {
            "raw_seconds": best_seconds(raw),
            "predict_seconds": best_seconds(lambda: model.predict(rows)),
            "request_path_seconds": best_seconds(request_path),
            "asgi_instrumented_seconds": asgi_path_seconds(model_dir, instrumented=True),
            "asgi_uninstrumented_seconds": asgi_path_seconds(model_dir, instrumented=False),
        }
    finally:
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("model_dir", type=Path, help="trained models (as `python -m service train` writes)")
    args = parser.parse_args(argv)
    sys.stdout.buffer.write(orjson.dumps(measure(args.model_dir)) + b"\n")


if __name__ == "__main__":
    main()
