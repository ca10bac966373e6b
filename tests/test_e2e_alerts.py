"""End to end: real service (2 gunicorn workers), real Prometheus with the shipped rules, real Alertmanager
with the shipped routing and templates, and a local stand-in for Slack's incoming webhook.

One story, in order, each step waited for by bounded polling: normal traffic pages nobody; 40% outliers
page with the outlier ratio; petal_length shifted +10% pages for petal_length only; normal traffic again
resolves it.
"""

import re
from pathlib import Path

import pytest
from conftest import poll
from dashboard_queries import assert_dashboards_show, assert_dashboards_show_no_alert

from service.traffic import Scenario
from stack.drill import SteadyTraffic, alert_title
from stack.processes import Stack
from stack.slack_receiver import SlackReceiver

pytestmark = pytest.mark.e2e

RATE_PER_SECOND = 100  # 12,000 predictions in the 2-minute window: the 2m verdicts decide within seconds
MAX_TRAFFIC_SECONDS = 900  # the traffic thread stops by itself even if the test is interrupted
# The drift alert resolves once no window sees the drift any more, plus keep_firing_for (5m)
RESOLVE_TIMEOUT_SECONDS = 540


def alert_text(message: dict) -> str:
    return message["payload"]["attachments"][0]["text"]


def test_alerts_page_slack_for_outliers_and_drift_and_resolve(
    stack: Stack, slack_receiver: SlackReceiver, model_dir: Path
):
    traffic = SteadyTraffic(stack.url("service"), model_dir, RATE_PER_SECOND, MAX_TRAFFIC_SECONDS)
    traffic.start()
    try:
        # 1. Normal traffic: thousands of predictions in every window, no model quality alert is pending.
        poll(
            lambda: stack.query("job_model_version:model_predictions:increase2m >= 5000"),
            120,
            "5000 predictions in the 2-minute window",
        )
        deviations = stack.query(
            "abs(job_model_version_feature:model_input_feature_value:mean_deviation_ratio2m)"
        )
        assert len(deviations) == 4 and all(float(d["value"][1]) < 0.05 for d in deviations), deviations
        ratio = stack.query("job_model_version:model_outliers:ratio_rate2m")
        assert len(ratio) == 1 and float(ratio[0]["value"][1]) < 0.2, ratio
        assert stack.query('ALERTS{category="model_quality"}') == []
        assert slack_receiver.messages == []
        assert_dashboards_show_no_alert(stack.query)

        # 2. 40% outlier rows (the detector flags ~47%): a Slack message names the alert and the share.
        traffic.switch(Scenario("outliers", outlier_fraction=0.4))
        fired = slack_receiver.wait_for(
            lambda m: "[FIRING" in alert_title(m) and "ModelOutlierRatioHigh" in alert_title(m), timeout=150
        )
        assert re.search(r"\d+(\.\d+)?%", alert_text(fired)), alert_text(fired)
        assert "20%" in alert_text(fired)
        assert_dashboards_show(stack.query, "ModelOutlierRatioHigh", "Outlier ratio over 2m")

        # 3. petal_length +10%: the drift alert fires for petal_length and for no other feature.
        traffic.switch(Scenario("drift", feature="petal_length", factor=1.1))
        drift = slack_receiver.wait_for(
            lambda m: "[FIRING" in alert_title(m) and "ModelInputFeatureMeanDrift" in alert_title(m),
            timeout=180,
        )
        assert "petal_length" in alert_text(drift)
        drifting = {
            a["metric"]["feature"] for a in stack.query('ALERTS{alertname="ModelInputFeatureMeanDrift"}')
        }
        assert drifting == {"petal_length"}
        assert_dashboards_show(
            stack.query, "ModelInputFeatureMeanDrift", "petal_length: mean vs training mean", "petal_length"
        )

        # 4. Back to normal: the drift alert resolves (after its hysteresis) and Slack is told.
        traffic.switch(Scenario("normal"))
        slack_receiver.wait_for(
            lambda m: "[RESOLVED]" in alert_title(m) and "ModelInputFeatureMeanDrift" in alert_title(m),
            timeout=RESOLVE_TIMEOUT_SECONDS,
        )
    finally:
        traffic.stop()
    drift_features = {
        feature
        for message in slack_receiver.messages
        if "ModelInputFeatureMeanDrift" in alert_title(message)
        for feature in re.findall(r"\*Feature:\* `(\w+)`", alert_text(message))
    }
    assert drift_features == {"petal_length"}
    assert traffic.failed == 0
