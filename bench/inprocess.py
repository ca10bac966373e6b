"""In-process cost of one prediction against the two raw onnxruntime calls on the same ONNX files.

Run as `python -m bench.inprocess MODEL_DIR` by the benchmark, in a process of its own so that metrics are
in multiprocess mode as in production; prints one JSON object of seconds per call.
"""

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

SAMPLE_ROW = [5.1, 3.5, 1.4, 0.2]
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


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def measure(model_dir: Path) -> dict[str, float]:
    # multiprocess metrics, as under gunicorn: must be set before prometheus_client is imported
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import numpy as np
    import onnxruntime
    from prometheus_client import CollectorRegistry

    from service.metrics import ServiceMetrics
    from service.model import Model
    from service.model_files import CLASSIFIER_FILE, INPUT_NAME, OUTLIER_DETECTOR_FILE
    from service.prediction_log import PredictionLog
    from service.predictor import Answer, Predictor

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the service's session options: compare the wrappers, not ORT
    options.inter_op_num_threads = 1
    classifier, detector = (
        onnxruntime.InferenceSession(
            str(model_dir / name), sess_options=options, providers=["CPUExecutionProvider"]
        )
        for name in (CLASSIFIER_FILE, OUTLIER_DETECTOR_FILE)
    )
    rows = np.array([SAMPLE_ROW], dtype=np.float32)
    feed = {INPUT_NAME: rows}

    def raw() -> None:
        classifier.run(["probabilities"], feed)
        detector.run(["scores"], feed)

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
        }
    finally:
        log.close()


def main() -> None:
    sys.stdout.buffer.write(orjson.dumps(measure(Path(sys.argv[1]))) + b"\n")


if __name__ == "__main__":
    main()
