"""Every Grafana panel query returns data from a real Prometheus that scraped the real service, and the
alert queries (annotations, firing-alert tables) show every alert rule where its category belongs.

Grafana cannot run here, so its macros and variables are substituted (tests/dashboard_queries.py) and
each query goes to the Prometheus of the shared stack after traffic on every prediction endpoint. The
alert queries go to a second real Prometheus that serves, backfilled with promtool, one firing alert per
rule of prometheus/rules/ (those of every team and generated ones alike), labelled as Prometheus labels it.
"""

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import poll
from dashboard_queries import (
    alert_queries,
    alerts_on_dashboards,
    assert_dashboards_show_no_alert,
    dashboard_queries,
)

from stack.drill import SteadyTraffic
from stack.processes import SERVICE_JOB, Stack, free_port, require_binary, wait_until_ready

pytestmark = pytest.mark.e2e

# Empty while nothing fires, which is the healthy state (tests/test_e2e_alerts.py shows them while alerts
# fire); the queries must still be valid PromQL.
EMPTY_WHEN_HEALTHY = set(alert_queries())
ROW = [5.1, 3.5, 1.4, 0.2]


def send_traffic_to_every_endpoint(url: str) -> None:
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for index in range(200):
            row = [value + 0.01 * (index % 7) for value in ROW]
            assert client.post("/predict", json={"data": [row]}).status_code == 200
            assert client.post("/predict/label", json={"data": [row]}).status_code == 200
        assert client.post("/predict/batch", json={"data": [ROW] * 100}).status_code == 200
        assert client.post("/predict", json={"data": [[1, 2, 3]]}).status_code == 422


def missing_results(stack: Stack) -> list[tuple[str, str, str]]:
    return [
        (uid, title, expr)
        for uid, title, expr in dashboard_queries()
        if (uid, title, expr) not in EMPTY_WHEN_HEALTHY and not stack.query(expr)
    ]


def test_every_dashboard_query_returns_data_from_real_prometheus(stack: Stack, model_dir: Path) -> None:
    send_traffic_to_every_endpoint(stack.url("service"))
    # Ratios of rates exist only while predictions keep coming: a steady trickle, bounded in time.
    traffic = SteadyTraffic(stack.url("service"), model_dir, rate=20, max_seconds=240)
    traffic.start()
    try:
        # Rules over rate windows need two scrapes (10 s apart) and an evaluation after them; the longest
        # window's group is evaluated every 2 minutes (prometheus/generate_rules.py's WINDOWS).
        poll(lambda: not missing_results(stack), 200, "every dashboard query to return data", interval=2.0)
    except AssertionError:
        pytest.fail(f"queries without data: {missing_results(stack)}")
    finally:
        traffic.stop()


def test_alert_queries_are_valid_promql(stack: Stack) -> None:
    assert {title for _, title, _ in EMPTY_WHEN_HEALTHY} >= {
        "Firing alerts",
        "annotation Model quality alerts",
    }
    for _uid, _title, expr in EMPTY_WHEN_HEALTHY:
        stack.query(expr)  # raises on a PromQL error (HTTP 400)


# --- every alert rule, firing in a real Prometheus ----------------------------------------------------

ALERTS_START = 1_750_000_000  # Unix seconds: the synthetic alerts fire from here for ALERTS_SECONDS
ALERTS_SECONDS = 600
EVALUATION_SECONDS = 10
RULES_DIR = Path(__file__).resolve().parents[1] / "prometheus" / "rules"
# Example values of the labels an alert's text refers to, which its expression gives it at run time; the
# job of an infrastructure alert is its exporter's, not the service's.
EXAMPLE_LABELS = {"model_version": "v1", "instance": "127.0.0.1:8000"}
INFRASTRUCTURE_JOB = "node"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CATEGORY_LABELS = {"model_quality": {"job", "model_version"}, "service_health": {"job"}}
DASHBOARD_OF_CATEGORY = {"model_quality": "model-monitoring", "service_health": "prediction-service"}


def firing_alerts_of_the_rules() -> list[dict[str, str]]:
    """One firing alert per alerting rule of prometheus/rules/ (one per feature for per-feature rules),
    labelled as Prometheus would: its static labels and the run-time labels its text refers to."""
    alerts = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in (rule for rule in group["rules"] if "alert" in rule):
                labels = {"alertname": rule["alert"], "alertstate": "firing", **rule.get("labels", {})}
                text = " ".join(rule.get("annotations", {}).values())
                referred = set(re.findall(r"\$labels\.(\w+)", text))
                own_category = labels.get("category", "") in CATEGORY_LABELS
                referred |= CATEGORY_LABELS.get(labels.get("category", ""), set())
                examples = EXAMPLE_LABELS | {"job": SERVICE_JOB if own_category else INFRASTRUCTURE_JOB}
                labels |= {name: examples.get(name, "x") for name in referred - {"feature"}}
                features = FEATURES if "feature" in referred else ("",)
                alerts += [labels | ({"feature": feature} if feature else {}) for feature in features]
    return alerts


def openmetrics(alerts: list[dict[str, str]]) -> str:
    """ALERTS (1 at every evaluation while firing) and ALERTS_FOR_STATE (the activation time) samples."""
    lines = []
    times = range(ALERTS_START, ALERTS_START + ALERTS_SECONDS, EVALUATION_SECONDS)
    for alert in alerts:
        for name, labels, value in (
            ("ALERTS", alert, 1),
            ("ALERTS_FOR_STATE", {k: v for k, v in alert.items() if k != "alertstate"}, ALERTS_START),
        ):
            series = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
            lines += [f"{series} {value} {time}" for time in times]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def alerts_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus serving the backfilled firing alerts of every rule; yields its URL."""
    run_dir = tmp_path_factory.mktemp("alerts-prometheus")
    samples = run_dir / "alerts.om"
    samples.write_text(openmetrics(firing_alerts_of_the_rules()))
    data = run_dir / "data"
    subprocess.run(
        [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(samples), str(data)],
        check=True,
        capture_output=True,
    )
    config = run_dir / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    port = free_port()
    log = run_dir / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                "--storage.tsdb.retention.time=100y",  # the samples are old: keep them
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url + "/-/ready", process, log)
        yield url
    finally:
        process.terminate()
        process.wait(15)


def query_at(url: str, time: int) -> Callable[[str], list[dict]]:
    def query(promql: str) -> list[dict]:
        response = httpx.get(url + "/api/v1/query", params={"query": promql, "time": time}, timeout=5.0)
        response.raise_for_status()
        return response.json()["data"]["result"]

    return query


def test_alert_queries_show_nothing_before_any_alert_fires(alerts_prometheus: str) -> None:
    assert_dashboards_show_no_alert(query_at(alerts_prometheus, ALERTS_START - 10))


@pytest.mark.parametrize(
    "alert",
    firing_alerts_of_the_rules(),
    ids=lambda alert: alert["alertname"] + (f"/{alert['feature']}" if "feature" in alert else ""),
)
def test_every_alert_rule_is_listed_and_shaded_on_the_dashboard_of_its_category(
    alerts_prometheus: str, alert: dict[str, str]
) -> None:
    shown = alerts_on_dashboards(query_at(alerts_prometheus, ALERTS_START + ALERTS_SECONDS // 2))
    key = (alert["alertname"], alert.get("feature", ""))
    panels = {panel for panel, alerts in shown.items() if key in alerts}
    home = DASHBOARD_OF_CATEGORY.get(alert.get("category", ""), "prediction-service")
    assert {("prediction-service", "Firing alerts"), ("model-monitoring", "Firing alerts")} <= panels
    graphs = {(uid, title) for uid, title in panels if title != "Firing alerts"}
    assert graphs and {uid for uid, _ in graphs} == {home}, (key, graphs)
    for _uid, title in graphs:
        prefix = title.split(": ")[0]
        if prefix in FEATURES:
            assert prefix == alert.get("feature"), (key, title)
