"""Every Grafana panel query returns data from a real Prometheus that scraped the real service.

Grafana cannot run here, so its macros and variables are substituted (tests/dashboard_queries.py) and
each query goes to the Prometheus of the shared stack after traffic on every prediction endpoint.
"""

from pathlib import Path

import httpx
import pytest
from conftest import poll
from dashboard_queries import alert_queries, dashboard_queries

from stack.drill import SteadyTraffic
from stack.processes import Stack

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
    traffic = SteadyTraffic(stack.url("service"), model_dir, rate=20, max_seconds=120)
    traffic.start()
    try:
        # rules over rate windows need two scrapes (10 s apart) and an evaluation after them
        poll(lambda: not missing_results(stack), 90, "every dashboard query to return data", interval=2.0)
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
