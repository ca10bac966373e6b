"""Replicas for real: two instances of the service (two gunicorn masters, 2 workers each, metrics on their
own port as in the Kubernetes pod) scraped by one real Prometheus as one job, with the shipped rules.

The recording rules must be exact over both instances, and drifted traffic on one replica alone must move
the job's numbers by that replica's share of the predictions.

Why "exact" needs care: increase() and rate() extrapolate. For a counter at 0 in the window's first sample,
Prometheus 2.42 (promql/functions.go, extrapolatedRate) adds nothing before that sample (a counter cannot go
below 0) and extends the growth from the last sample to the window's end when that is closer than 1.1 sample
intervals (else by half an interval). Each instance's counters are scraped at their own times, so each
instance i gets its own factor f_i = (sampled span + extension) / sampled span, between 1 and
1 + 1.1 / (n - 1) for n samples in the window (young series, as here, have few). The job's numbers are then
sums of f_i × what instance i was sent:
  predictions in the window = Σ f_i N_i,   outlier share = Σ f_i O_i / Σ f_i N_i,
  feature mean = Σ f_i S_i / Σ f_i N_i  (S_i: the sum of the float32 values i read)
with f_i computed from the sample timestamps Prometheus stored. The test compares at evaluations whose
2-minute window holds every sample of the traffic (a 0 first, the final count last, so all traffic counts)
and whose samples were stored at least a second before the evaluation (a scrape still being written is not
yet seen by the rule; the evaluation interval is 3 s here so that such evaluations come around whatever the
targets' scrape offsets are).
"""

import csv
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import poll

from stack.processes import SERVICE_JOB, free_port, require_binary, wait_until_ready
from stack.service_process import ServiceProcess, service_env, start_service

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
WINDOW_SECONDS = 120  # the 2-minute records
EVALUATION_INTERVAL = "3s"
STORED_BEFORE_EVALUATION_SECONDS = 1.0
# Not the shipped 10 s: the 2m group is evaluated every 10 s, so with 10 s scrapes every evaluation sits at
# the same offset after an instance's scrape, and an offset under STORED_BEFORE_EVALUATION_SECONDS (0.8 s
# in a CI run) made every evaluation ineligible. With 7 s the offset moves 3 s at each evaluation.
SCRAPE_INTERVAL = "7s"
DRIFT_FEATURE, DRIFT_FACTOR = "petal_length", 1.3
NORMAL_REPEATS, DRIFTED_REPEATS = 8, 4  # of the 150 training rows: 1200 normal rows, 600 drifted rows
BATCH_ROWS = 500
RELATIVE_TOLERANCE = 1e-9  # float64 sums in a different order, nothing more


@dataclass
class Replica:
    process: ServiceProcess
    metrics_port: int

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"


@dataclass
class Sent:
    """What one replica was sent and answered, row by row."""

    predictions: int
    outliers: int
    feature_sums: dict[str, float]

    def mean(self, feature: str) -> float:
        return self.feature_sums[feature] / self.predictions


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str, time: float | None = None) -> list[dict]:
        params = {"query": promql} if time is None else {"query": promql, "time": f"{time:.3f}"}
        response = httpx.get(self.url + "/api/v1/query", params=params, timeout=10.0)
        response.raise_for_status()
        return response.json()["data"]["result"]


def training_rows(model_dir: Path) -> tuple[list[str], list[list[float]]]:
    with (model_dir / "training_data.csv").open() as data:
        reader = csv.reader(data)
        header = next(reader)
        return header[:4], [[float(value) for value in row[:4]] for row in reader]


def send(replica: Replica, features: list[str], rows: list[list[float]]) -> Sent:
    outliers = 0
    for start in range(0, len(rows), BATCH_ROWS):
        response = httpx.post(
            replica.process.url + "/predict/batch",
            json={"data": rows[start : start + BATCH_ROWS]},
            timeout=30.0,
        )
        response.raise_for_status()
        outliers += sum(result["is_outlier"] for result in response.json()["results"])
    as_read = np.array(rows, dtype=np.float32).astype(np.float64)  # the service validates into float32
    return Sent(len(rows), outliers, dict(zip(features, as_read.sum(axis=0).tolist(), strict=True)))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, model_dir) -> Iterator[list[Replica]]:
    started = []
    try:
        for name in ("a", "b"):
            run_dir = tmp_path_factory.mktemp(f"replica-{name}")
            metrics_port = free_port()
            env = service_env(
                model_dir,
                run_dir,
                free_port(),
                workers="2",
                metrics_port=str(metrics_port),
                log_file=str(run_dir / "predictions.jsonl"),
            )
            started.append(Replica(start_service(env, run_dir / "service.log"), metrics_port))
        for replica in started:
            replica.process.wait_for_workers(2, timeout=60)
        yield started
    finally:
        for replica in started:
            replica.process.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, replicas) -> Iterator[Prometheus]:
    """One job, two instances, every rule file of prometheus/rules/ (as the PrometheusRules hold them)."""
    run_dir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": EVALUATION_INTERVAL,
        },
        "rule_files": [str(path) for path in sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))],
        "scrape_configs": [
            {
                "job_name": SERVICE_JOB,
                "static_configs": [{"targets": [replica.instance for replica in replicas]}],
            }
        ],
    }
    (run_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = run_dir / "prometheus.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={run_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={run_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", process, log)
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def extrapolation_factor(timestamps_ms: list[int], evaluation_ms: int) -> float:
    """What increase() multiplies the growth of a counter by when the window's first sample is 0."""
    sampled = (timestamps_ms[-1] - timestamps_ms[0]) / 1000
    average_interval = sampled / (len(timestamps_ms) - 1)
    to_end = (evaluation_ms - timestamps_ms[-1]) / 1000
    extension = to_end if to_end < 1.1 * average_interval else average_interval / 2
    return (sampled + extension) / sampled


def milliseconds(timestamp: float) -> int:
    return round(timestamp * 1000)  # Prometheus stores milliseconds; the API writes seconds


def window_factors(
    prometheus: Prometheus, replicas: list[Replica], sent: list[Sent], evaluation_ms: int
) -> list[float] | None:
    """f_i of each replica at an evaluation, or None unless its window holds all traffic, stored in time."""
    factors = []
    for replica, what in zip(replicas, sent, strict=True):
        selector = f'model_predictions_total{{instance="{replica.instance}"}}[{WINDOW_SECONDS}s]'
        totals: dict[int, float] = {}  # every label's series of one scrape has its timestamp
        for series in prometheus.query(selector, evaluation_ms / 1000):
            for timestamp, value in series["values"]:
                totals[milliseconds(timestamp)] = totals.get(milliseconds(timestamp), 0.0) + float(value)
        timestamps = sorted(totals)
        if len(timestamps) < 3 or totals[timestamps[0]] != 0 or totals[timestamps[-1]] != what.predictions:
            return None
        if evaluation_ms - timestamps[-1] < STORED_BEFORE_EVALUATION_SECONDS * 1000:
            return None
        factors.append(extrapolation_factor(timestamps, evaluation_ms))
    return factors


def at_eligible_evaluation(
    prometheus: Prometheus, replicas: list[Replica], sent: list[Sent], record: str
) -> tuple[list[float], list[dict]] | None:
    """At the newest evaluation of `record` whose window holds all the traffic: f_i and the record."""
    samples = prometheus.query(f"{record}[{WINDOW_SECONDS}s]")
    evaluations = sorted({milliseconds(t) for series in samples for t, _ in series["values"]}, reverse=True)
    for evaluation_ms in evaluations:
        factors = window_factors(prometheus, replicas, sent, evaluation_ms)
        if factors is not None:
            return factors, prometheus.query(record, evaluation_ms / 1000)
    return None


def weighted(factors: list[float], values: list[float]) -> float:
    return sum(f * v for f, v in zip(factors, values, strict=True))


def test_recording_rules_are_exact_over_two_replicas_and_one_replicas_drift_moves_them_by_its_share(
    replicas, prometheus, model_dir
):
    features, rows = training_rows(model_dir)
    drift_column = features.index(DRIFT_FEATURE)
    drifted_rows = [
        [value * DRIFT_FACTOR if column == drift_column else value for column, value in enumerate(row)]
        for row in rows
    ]
    drifting, normal = replicas

    # Two scrapes of zeros on both instances first: the windows start at 0.
    poll(
        lambda: all(
            prometheus.query(
                f'count_over_time(model_predictions_total{{instance="{r.instance}"}}[1m]) >= 2'
                f' and model_predictions_total{{instance="{r.instance}"}} == 0'
            )
            for r in replicas
        ),
        60,
        "two scrapes of both idle instances",
    )
    sent = [
        send(drifting, features, drifted_rows * DRIFTED_REPEATS),
        send(normal, features, rows * NORMAL_REPEATS),
    ]
    poll(
        lambda: all(
            prometheus.query(f'sum(model_predictions_total{{instance="{r.instance}"}}) == {s.predictions}')
            for r, s in zip(replicas, sent, strict=True)
        ),
        60,
        "a scrape of both instances after the traffic",
    )
    assert sent[0].outliers / sent[0].predictions > 2 * sent[1].outliers / sent[1].predictions  # a real drift

    def check(record: str):
        return poll(
            lambda: at_eligible_evaluation(prometheus, replicas, sent, record),
            60,
            f"an evaluation of {record} whose window holds all the traffic",
        )

    predictions = [s.predictions for s in sent]

    factors, (result,) = check("job_model_version:model_predictions:increase2m")
    assert result["metric"]["job"] == SERVICE_JOB
    assert all(f >= 1 for f in factors), factors
    assert float(result["value"][1]) == pytest.approx(weighted(factors, predictions), rel=RELATIVE_TOLERANCE)

    # The drifting replica's share of the window's predictions: 600 / 1800 = 1/3 if both f_i were equal.
    factors, (result,) = check("job_model_version:model_outliers:ratio_rate2m")
    share = factors[0] * predictions[0] / weighted(factors, predictions)
    outlier_shares = [s.outliers / s.predictions for s in sent]
    job_outlier_share = float(result["value"][1])
    assert job_outlier_share == pytest.approx(
        weighted(factors, [s.outliers for s in sent]) / weighted(factors, predictions), rel=RELATIVE_TOLERANCE
    )
    assert job_outlier_share - outlier_shares[1] == pytest.approx(
        share * (outlier_shares[0] - outlier_shares[1]), rel=RELATIVE_TOLERANCE
    )

    factors, results = check("job_model_version_feature:model_input_feature_value:mean2m")
    share = factors[0] * predictions[0] / weighted(factors, predictions)
    means = {r["metric"]["feature"]: float(r["value"][1]) for r in results}
    assert set(means) == set(features)
    for feature in features:
        sums = [s.feature_sums[feature] for s in sent]
        assert means[feature] == pytest.approx(
            weighted(factors, sums) / weighted(factors, predictions), rel=1e-9
        )
        moved = share * (sent[0].mean(feature) - sent[1].mean(feature))
        assert means[feature] - sent[1].mean(feature) == pytest.approx(moved, rel=1e-6, abs=1e-12), feature
    # The drifted feature moved by the drifting replica's share of its drift, the others not at all.
    assert means[DRIFT_FEATURE] - sent[1].mean(DRIFT_FEATURE) == pytest.approx(
        share * (DRIFT_FACTOR - 1) * sent[1].mean(DRIFT_FEATURE), rel=1e-6
    )
    for feature in set(features) - {DRIFT_FEATURE}:
        assert means[feature] == pytest.approx(sent[1].mean(feature), rel=1e-9)


def test_each_replica_answers_the_pods_probes_on_its_api_port_and_metrics_only_on_the_metrics_port(replicas):
    deployment = next(
        obj
        for obj in yaml.safe_load_all(
            (REPO_ROOT / "deploy" / "kubernetes" / "rendered" / "production.yaml").read_text()
        )
        if obj["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    paths = {
        container[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for replica in replicas:
        for path in paths:
            assert httpx.get(replica.process.url + path, timeout=5.0).status_code == 200, path
        assert httpx.get(replica.process.url + "/metrics", timeout=5.0).status_code == 404
        metrics = httpx.get(f"http://{replica.instance}/metrics", timeout=5.0)
        assert metrics.status_code == 200 and "model_predictions_total" in metrics.text
