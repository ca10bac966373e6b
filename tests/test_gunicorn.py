"""The production command `python -m service serve`: gunicorn, two uvicorn workers, multiprocess metrics.

One module-scoped run serves N predictions from several connections, is scraped, then stopped with SIGTERM;
each test checks one property of that run. The failure tests start the command with broken model folders.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from service.model_files import CLASSIFIER_FILE, FEATURE_NAMES, LABELS, METADATA_FILE
from stack.processes import free_port, require_binary
from stack.service_process import service_env, start_service

pytestmark = pytest.mark.serving

N_REQUESTS = 400
CONNECTIONS = 8
STARTUP_SECONDS = 30.0
STALE_PREDICTIONS = 1000
FAR_AWAY_ROW = [100.0, 100.0, 100.0, 100.0]
NEGATIVE_ROW = [-1.5, -3.0, -0.25, -2.0]  # a histogram _sum falls on these; the sum's parts do not

Samples = dict[tuple[str, frozenset], float]


@dataclass
class Run:
    metadata: dict
    rows: list[list[float]]
    answers: list[dict]
    metrics_text: str
    samples: Samples
    predictions_by_worker: dict[int, float]
    stale_file_left_at_start: bool
    exit_code: int | None
    log_lines: list[bytes]
    server_output: str

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def model_value(self, name: str, **labels: str) -> float:
        return self.value(name, model_version=self.metadata["model_version"], **labels)


def gunicorn_env(model_dir: Path, tmp: Path, port: int) -> dict[str, str]:
    return service_env(model_dir, tmp, port, workers="2", log_file=str(tmp / "predictions.jsonl"))


def plant_stale_metric_file(multiproc_dir: Path, model_version: str) -> Path:
    """A counter file as an earlier run would leave it: 1000 setosa predictions of this very model."""
    multiproc_dir.mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        import prometheus_client
        counter = prometheus_client.Counter("model_predictions", "", ["model_version", "predicted_label"])
        counter.labels({model_version!r}, "setosa").inc({STALE_PREDICTIONS})
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    (stale,) = multiproc_dir.glob("counter_*.db")
    return stale


def worker_pids(multiproc_dir: Path, prefix: str) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in multiproc_dir.glob(f"{prefix}_*.db")}


def request_rows() -> list[list[float]]:
    """Iris rows with every tenth row far away and another tenth negative, so predictions cover all labels
    and outliers, and the feature sums both signs."""
    iris = np.resize(load_iris().data, (N_REQUESTS, 4)).tolist()
    return [
        FAR_AWAY_ROW if index % 10 == 9 else NEGATIVE_ROW if index % 10 == 4 else row
        for index, row in enumerate(iris)
    ]


async def post_all(base_url: str, rows: list[list[float]]) -> list[httpx.Response]:
    # no keep-alive: every request opens a connection, so the kernel hands connections to both workers
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        return await asyncio.gather(*(client.post("/predict", json={"data": [row]}) for row in rows))


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def predictions_per_worker(multiproc_dir: Path, scratch: Path) -> dict[int, float]:
    """Read each worker's counter file on its own, with prometheus-client's own multiprocess reader."""
    counts = {}
    for pid in worker_pids(multiproc_dir, "counter"):
        single = scratch / str(pid)
        single.mkdir(parents=True)
        shutil.copy(multiproc_dir / f"counter_{pid}.db", single)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(single))
        counts[pid] = sum(
            sample.value
            for family in registry.collect()
            if family.name == "model_predictions"
            for sample in family.samples
        )
    return counts


@pytest.fixture(scope="module")
def run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("gunicorn")
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    env = gunicorn_env(model_dir, tmp, free_port())
    multiproc_dir = Path(env["SERVICE_MULTIPROC_DIR"])
    stale_file = plant_stale_metric_file(multiproc_dir, metadata["model_version"])
    service = start_service(env, tmp / "server-output.txt")
    try:
        service.wait_for_workers(2, STARTUP_SECONDS)
        stale_file_left_at_start = stale_file.exists()
        rows = request_rows()
        responses = asyncio.run(post_all(service.url, rows))
        assert [response.status_code for response in responses] == [200] * N_REQUESTS
        metrics_text = httpx.get(f"{service.url}/metrics", timeout=10.0).text
        predictions_by_worker = predictions_per_worker(multiproc_dir, tmp / "per-worker")
        exit_code = service.stop()  # SIGTERM; None if the server had to be killed
    finally:
        service.stop()
    return Run(
        metadata=metadata,
        rows=rows,
        answers=[response.json() for response in responses],
        metrics_text=metrics_text,
        samples=parse_samples(metrics_text),
        predictions_by_worker=predictions_by_worker,
        stale_file_left_at_start=stale_file_left_at_start,
        exit_code=exit_code,
        log_lines=Path(env["SERVICE_LOG_FILE"]).read_bytes().splitlines(),
        server_output=service.output.read_text(errors="replace"),
    )


def test_stale_metric_files_of_an_earlier_run_are_removed_at_start(run: Run) -> None:
    assert not run.stale_file_left_at_start


def test_both_workers_served_predictions(run: Run) -> None:
    assert len(run.predictions_by_worker) == 2
    assert all(count > 0 for count in run.predictions_by_worker.values()), run.predictions_by_worker
    assert sum(run.predictions_by_worker.values()) == N_REQUESTS


def test_predictions_total_counts_each_request_once_per_predicted_label(run: Run) -> None:
    answered = Counter(LABELS[int(np.argmax(answer["prediction"]))] for answer in run.answers)
    assert len(answered) == 3
    counted = {label: run.model_value("model_predictions_total", predicted_label=label) for label in LABELS}
    assert counted == {label: float(answered[label]) for label in LABELS}


def test_outliers_total_counts_each_flagged_row_once(run: Run) -> None:
    flagged = sum(answer["is_outlier"] for answer in run.answers)
    assert flagged >= N_REQUESTS // 10  # the far-away rows at least
    assert run.model_value("model_outliers_total") == flagged


def test_http_requests_total_counts_each_prediction_request_once(run: Run) -> None:
    assert run.value("http_requests_total", handler="/predict", method="POST", status="200") == N_REQUESTS


def test_http_request_duration_histogram_counts_each_prediction_request_once(run: Run) -> None:
    labels = {"handler": "/predict", "method": "POST"}
    assert run.value("http_request_duration_seconds_count", **labels) == N_REQUESTS
    assert run.value("http_request_duration_seconds_bucket", le="+Inf", **labels) == N_REQUESTS


@pytest.mark.parametrize("stage", ["classifier", "outlier_detector"])
def test_inference_histogram_counts_each_prediction_request_once_per_stage(run: Run, stage: str) -> None:
    assert run.model_value("model_inference_duration_seconds_count", stage=stage) == N_REQUESTS
    assert run.model_value("model_inference_duration_seconds_bucket", stage=stage, le="+Inf") == N_REQUESTS


@pytest.mark.parametrize("feature", FEATURE_NAMES)
def test_feature_histogram_counts_and_sums_every_input_value(run: Run, feature: str) -> None:
    column = np.array(run.rows, dtype=np.float32)[:, FEATURE_NAMES.index(feature)].astype(np.float64)
    assert run.model_value("model_input_feature_value_count", feature=feature) == N_REQUESTS
    assert run.model_value("model_input_feature_value_bucket", feature=feature, le="+Inf") == N_REQUESTS
    assert run.model_value("model_input_feature_value_sum", feature=feature) == pytest.approx(
        column.sum(), rel=1e-12
    )
    positive, negative = column[column > 0].sum(), -column[column < 0].sum()
    assert run.model_value("model_input_feature_value_positive_part_total", feature=feature) == pytest.approx(
        positive, rel=1e-12
    )
    assert run.model_value("model_input_feature_value_negative_part_total", feature=feature) == pytest.approx(
        negative, rel=1e-12
    )
    assert run.model_value("model_input_feature_value_squares_total", feature=feature) == pytest.approx(
        (column**2).sum(), rel=1e-12
    )
    assert negative > 0


def test_outlier_score_histogram_counts_and_sums_every_score(run: Run) -> None:
    scores = [answer["outlier_score"] for answer in run.answers]
    assert run.model_value("model_outlier_score_count") == N_REQUESTS
    assert run.model_value("model_outlier_score_bucket", le="+Inf") == N_REQUESTS
    assert run.model_value("model_outlier_score_sum") == pytest.approx(sum(scores), rel=1e-9, abs=1e-9)


def test_training_gauges_equal_metadata_and_are_not_summed_over_workers(run: Run) -> None:
    for index, feature in enumerate(FEATURE_NAMES):
        mean = run.model_value("model_feature_training_mean", feature=feature)
        stddev = run.model_value("model_feature_training_stddev", feature=feature)
        assert (mean, stddev) == (
            run.metadata["training_mean"][index],
            run.metadata["training_stddev"][index],
        )


def test_model_info_is_1_with_two_workers(run: Run) -> None:
    labels = {key: run.metadata[key] for key in ("model_version", "classifier", "outlier_detector")}
    assert run.value("model_info", **labels) == 1


def test_promtool_check_metrics_accepts_the_exposition(run: Run) -> None:
    checked = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=run.metrics_text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_sigterm_stops_the_server_with_exit_code_0(run: Run) -> None:
    assert run.exit_code == 0, run.server_output


def test_prediction_log_has_one_line_per_request_after_graceful_shutdown(run: Run) -> None:
    logged = [json.loads(line)["job_id"] for line in run.log_lines]
    assert sorted(logged) == sorted(answer["job_id"] for answer in run.answers)


# --- startup failures -----------------------------------------------------------------------------


def serve_with_model_dir(model_dir: Path, tmp: Path) -> tuple[int | None, str]:
    """Run the production command, which must exit by itself (a server that starts anyway is stopped):
    its exit code and output."""
    service = start_service(gunicorn_env(model_dir, tmp, free_port()), tmp / "server-output.txt")
    try:
        service.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        exit_code = service.stop()
    return exit_code, service.output.read_text(errors="replace")


def broken_copy(model_dir: Path, tmp: Path) -> Path:
    copy = tmp / "models"
    shutil.copytree(model_dir, copy)
    return copy


def test_serve_without_models_exits_non_zero_naming_the_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    exit_code, output = serve_with_model_dir(empty, tmp_path)
    assert exit_code not in (0, None), output
    assert str(empty / METADATA_FILE) in output


def test_serve_with_corrupt_classifier_exits_non_zero_naming_it(model_dir: Path, tmp_path: Path) -> None:
    models = broken_copy(model_dir, tmp_path)
    (models / CLASSIFIER_FILE).write_bytes(b"this is not an ONNX model")
    exit_code, output = serve_with_model_dir(models, tmp_path)
    assert exit_code not in (0, None), output
    assert str(models / CLASSIFIER_FILE) in output


def test_serve_with_three_feature_names_in_metadata_exits_non_zero_naming_metadata(
    model_dir: Path, tmp_path: Path
) -> None:
    models = broken_copy(model_dir, tmp_path)
    metadata = json.loads((models / METADATA_FILE).read_text())
    metadata["feature_names"] = metadata["feature_names"][:3]
    (models / METADATA_FILE).write_text(json.dumps(metadata))
    exit_code, output = serve_with_model_dir(models, tmp_path)
    assert exit_code not in (0, None), output
    assert str(models / METADATA_FILE) in output
