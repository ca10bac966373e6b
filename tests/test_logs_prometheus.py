"""`logs summary` gives the numbers of Prometheus' recording rules: real traffic through the real service
(2 workers), scraped by a real Prometheus with the shipped rules, then both compared over one 2-minute
window that holds all of the traffic.

Why the comparison can be exact: rate() extrapolates each series' increase from its first and last sample
in the window to the window's ends, by a factor that depends only on those samples' timestamps and on
whether the series started at zero. Every series here comes from the same scrape of a service that had
served nothing before (a fresh stack per test module; the counters are bound, at 0, at startup), so they
all share one factor and it cancels in every ratio the rules record. What does not cancel: the metrics
observe inputs as float32 (the model's input type), the log keeps them as sent, so a feature mean may
differ by float32's rounding, at most 2^-24 ≈ 6e-8 of each value and so of the mean.
`increase2m` itself is extrapolated and not compared; the counts are, from the raw samples.
"""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import poll

from service.traffic import RowSource, Scenario, load_training_data
from stack.processes import Stack

pytestmark = pytest.mark.e2e

WINDOW = "2m"  # the window of the records compared
SINGLE_ROW_REQUESTS = 600
BATCHES = 10
BATCH_ROWS = 40
REJECTED = 7
PREDICTIONS = SINGLE_ROW_REQUESTS + BATCHES * BATCH_ROWS
FLOAT32_ROUNDING = 2.0**-24  # relative rounding of a value stored as float32
EXACT = 1e-12  # ratios of the same integers, in float64


def send_traffic(url: str, model_dir: Path) -> None:
    """30% outliers, single rows, batches and rejected requests: about 10 s on this machine."""
    source = RowSource(load_training_data(model_dir), Scenario("outliers", outlier_fraction=0.3), seed=7)
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for index in range(SINGLE_ROW_REQUESTS):
            endpoint = "/predict" if index % 2 else "/predict/label"
            assert client.post(endpoint, json={"data": [source.next_row()]}).status_code == 200
        for _ in range(BATCHES):
            rows = source.rows(BATCH_ROWS).tolist()
            assert client.post("/predict/batch", json={"data": rows}).status_code == 200
        for _ in range(REJECTED):
            assert client.post("/predict", json={"data": [[1.0, 2.0, 3.0]]}).status_code == 422


def query_at(stack: Stack, promql: str, time: float) -> list[dict]:
    response = httpx.get(
        stack.url("prometheus") + "/api/v1/query", params={"query": promql, "time": time}, timeout=5.0
    )
    response.raise_for_status()
    return response.json()["data"]["result"]


def scalar(results: list[dict]) -> float:
    (result,) = results
    return float(result["value"][1])


def window_holding_all_traffic(stack: Stack) -> float | None:
    """The evaluation time t of the latest outlier-ratio record if its window [t - 2m, t] holds a sample of
    every series from before the first request (all zero) and one from after the last (all counted); else
    None. The sample after the last request must be 15 s older than t (window shifted by `offset 15s`), so
    that it was surely stored before the rule was evaluated at t."""
    records = stack.query("timestamp(job_model_version:model_outliers:ratio_rate2m)")
    if not records:
        return None
    time = float(records[0]["value"][1])
    first = query_at(stack, f"sum(min_over_time(model_predictions_total[{WINDOW}]))", time)
    last = query_at(stack, f"sum(max_over_time(model_predictions_total[{WINDOW}] offset 15s))", time)
    if first and last and scalar(first) == 0 and scalar(last) == PREDICTIONS:
        return time
    return None


def logs_summary(stack: Stack, model_dir: Path, model_version: str) -> dict:
    result = subprocess.run(
        [
            sys.executable, "-m", "service", "logs", "summary", "--format", "json",
            "--logs", str(stack.run_dir / "predictions.jsonl*"), "--model-dir", str(model_dir),
            "--model-version", model_version,
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (window,) = json.loads(result.stdout)
    return window


def test_summary_equals_the_recording_rules_over_a_window_holding_all_traffic(
    stack: Stack, model_dir: Path
) -> None:
    metadata = json.loads((model_dir / "metadata.json").read_text())
    version = metadata["model_version"]
    poll(lambda: stack.query("sum(model_predictions_total) == 0"), 60, "a scrape before any prediction")
    send_traffic(stack.url("service"), model_dir)
    # a scrape after the last request, then a rule evaluation whose window still reaches back before the
    # first one: the traffic takes ~10 s, scrapes and evaluations come every 10 s, the window is 120 s, so
    # evaluations from ~25 s to ~100 s after the traffic qualify
    time = poll(lambda: window_holding_all_traffic(stack), 120, "a 2m window holding all the traffic", 2.0)
    window = poll(
        lambda: (
            (summary := logs_summary(stack, model_dir, version))["predictions"] == PREDICTIONS and summary
        ),
        30,
        "every prediction in the log",
    )
    matcher = f'{{job="prediction-service", model_version="{version}"}}'

    outlier_ratio = scalar(query_at(stack, f"job_model_version:model_outliers:ratio_rate2m{matcher}", time))
    assert window["outlier_ratio"] == pytest.approx(outlier_ratio, rel=EXACT)
    assert 0.2 < window["outlier_ratio"] < 0.45  # 30% of the single rows and batch rows, plus a few flagged

    for feature in metadata["feature_names"]:
        selector = f'{{job="prediction-service", model_version="{version}", feature="{feature}"}}'
        mean = scalar(
            query_at(stack, f"job_model_version_feature:model_input_feature_value:mean2m{selector}", time)
        )
        assert window[f"mean_{feature}"] == pytest.approx(mean, rel=FLOAT32_ROUNDING), feature
        deviation = scalar(
            query_at(
                stack,
                f"job_model_version_feature:model_input_feature_value:mean_deviation_ratio2m{selector}",
                time,
            )
        )
        # deviation = mean / training_mean - 1: its absolute error is the mean's relative one (the gauge
        # of the training mean holds metadata.json's value exactly)
        assert window[f"mean_deviation_{feature}"] == pytest.approx(deviation, abs=FLOAT32_ROUNDING), feature

    for label in metadata["labels"]:
        selector = f'{{job="prediction-service", model_version="{version}", predicted_label="{label}"}}'
        share = query_at(
            stack, f"job_model_version_predicted_label:model_predictions:ratio_rate2m{selector}", time
        )
        assert window[f"share_{label}"] == pytest.approx(scalar(share), rel=EXACT), label

    # counts from the raw samples: last minus first in the same window
    def delta(metric: str) -> float:
        return scalar(
            query_at(
                stack, f"sum(max_over_time({metric}[{WINDOW}]) - min_over_time({metric}[{WINDOW}]))", time
            )
        )

    assert window["predictions"] == delta("model_predictions_total") == PREDICTIONS
    assert window["outliers"] == delta("model_outliers_total")
    assert window["rejections"] == {"wrong_column_count": REJECTED}
    assert delta('model_invalid_requests_total{reason="wrong_column_count"}') == REJECTED
