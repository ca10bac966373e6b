"""Alertmanager routing, inhibition and Slack templates, checked with amtool; the local Slack stand-in;
and, marked e2e, the real Alertmanager delivering a firing and a resolved message to that stand-in."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import poll

from stack.processes import free_port, require_binary, wait_until_ready
from stack.slack_receiver import SlackReceiver

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "alertmanager" / "alertmanager.yml"
TEMPLATES_DIR = REPO / "alertmanager" / "templates"
TEMPLATES_GLOB = str(TEMPLATES_DIR / "*.tmpl")
# The one line of the config a harness rewrites; the webhook URL itself is never committed.
SECRET_PATH = "/etc/alertmanager/secrets/slack_webhook_url"
# Slack attachment fields, each rendered by the template "slack.<field>".
SLACK_FIELDS = ["title", "title_link", "text", "color", "fallback"]


RUNBOOK_URL = "http://localhost:9098/docs/runbook.md#modelinputfeaturemeandrift"
DASHBOARD_URL = "http://localhost:3000/d/model-monitoring/model-monitoring"
GRAPH_URL = "http://localhost:9090/graph?g0.expr=up&g0.tab=1"
DRIFT_DESCRIPTION = (
    "Mean of petal_length over the last 2m is 5.49, 46% above the training mean 3.76 (threshold 30%)."
)


def load_config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def config_with_webhook_file(directory: Path, webhook_file: Path) -> Path:
    """A copy of the config in `directory` whose only change is the path of the webhook URL file.

    The templates directory is linked beside it, since the config names its templates relative to itself.
    """
    original = CONFIG_PATH.read_text()
    assert original.count(SECRET_PATH) == 1, "the secret path must appear exactly once to be rewritten"
    copy = directory / "alertmanager.yml"
    copy.write_text(original.replace(SECRET_PATH, str(webhook_file)))
    (directory / "templates").symlink_to(TEMPLATES_DIR, target_is_directory=True)
    return copy


# -- the config file -----------------------------------------------------------------------------------


def test_config_passes_amtool_check_config() -> None:
    # The secret file does not need to exist for the check: 0.25 reads it only when it sends.
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(CONFIG_PATH)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_webhook_url_is_read_from_the_secret_file_only() -> None:
    config = load_config()
    slack_configs = [slack for receiver in config["receivers"] for slack in receiver.get("slack_configs", [])]
    assert config["global"] == {"slack_api_url_file": SECRET_PATH}
    assert [slack for slack in slack_configs if "api_url" in slack or "api_url_file" in slack] == []


def test_route_groups_by_alert_and_job_and_notifies_within_a_minute() -> None:
    route = load_config()["route"]
    timing = {key: route[key] for key in ("group_by", "group_wait", "group_interval", "repeat_interval")}
    assert timing == {
        "group_by": ["alertname", "job"],
        "group_wait": "10s",
        "group_interval": "30s",
        "repeat_interval": "4h",
    }


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {"alertname": "ModelOutlierRatioHigh", "severity": "critical", "category": "model_quality"},
            "slack-model-quality",
        ),
        (
            {"alertname": "ModelInputFeatureMeanDrift", "severity": "warning", "category": "model_quality"},
            "slack-model-quality",
        ),
        (
            {"alertname": "PredictionServiceDown", "severity": "critical", "category": "service_health"},
            "slack-service-health",
        ),
        (
            {"alertname": "PredictionErrorRateHigh", "severity": "critical", "category": "service_health"},
            "slack-service-health",
        ),
        (
            {"alertname": "PredictionLatencyHigh", "severity": "warning", "category": "service_health"},
            "slack-service-health",
        ),
        *(
            (
                {"alertname": name, "severity": "critical", "category": "service_health"},
                "slack-service-health",
            )
            for name in (
                "PredictionEndpointProbeFailing",
                "PredictionServiceUnreachable",
                "ServiceWorkersCrashLooping",
                "ServiceRequestsQueueing",
            )
        ),
        *(
            (
                {"alertname": name, "severity": "critical", "category": "infrastructure"},
                "slack-service-health",
            )
            for name in ("HostOutOfMemory", "HostCpuSaturated", "PredictionLogDiskFillingUp")
        ),
        ({"alertname": "SomethingElse", "severity": "warning"}, "slack-default"),
    ],
    ids=lambda value: value.get("alertname") if isinstance(value, dict) else value,
)
def test_alert_is_routed_to_its_receiver(labels: dict[str, str], receiver: str) -> None:
    label_args = [f"{name}={value}" for name, value in {**labels, "job": "prediction-service"}.items()]
    result = subprocess.run(
        [
            require_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG_PATH}",
            f"--verify.receivers={receiver}",
        ]
        + label_args,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"routed to {result.stdout.strip()!r}, expected {receiver!r}"


def test_each_receiver_posts_to_its_channel() -> None:
    channels = {
        receiver["name"]: [slack["channel"] for slack in receiver["slack_configs"]]
        for receiver in load_config()["receivers"]
    }
    assert channels == {
        "slack-model-quality": ["#ml-model-quality"],
        "slack-service-health": ["#ml-oncall"],
        "slack-default": ["#ml-alerts"],
    }


def test_every_slack_config_sends_resolved() -> None:
    # Alertmanager 0.25 defaults send_resolved to false for Slack.
    send_resolved = {
        receiver["name"]: [slack.get("send_resolved") for slack in receiver["slack_configs"]]
        for receiver in load_config()["receivers"]
    }
    assert send_resolved == {name: [True] for name in send_resolved}


def test_every_slack_config_uses_the_named_templates() -> None:
    expected = {field: f'{{{{ template "slack.{field}" . }}}}' for field in SLACK_FIELDS}
    fields = [
        {field: slack.get(field) for field in expected}
        for receiver in load_config()["receivers"]
        for slack in receiver["slack_configs"]
    ]
    assert fields == [expected] * len(fields)


def test_templates_are_named_relative_to_the_config_file() -> None:
    assert load_config()["templates"] == ["templates/*.tmpl"]


# -- inhibition ----------------------------------------------------------------------------------------


def inhibit_rules() -> list[dict[str, Any]]:
    return load_config()["inhibit_rules"]


def test_inhibit_rules_use_the_matchers_syntax() -> None:
    deprecated = {"source_match", "source_match_re", "target_match", "target_match_re"}
    assert [sorted(deprecated & rule.keys()) for rule in inhibit_rules()] == [[]] * len(inhibit_rules())


def test_service_down_inhibits_model_quality_alerts_of_the_same_job() -> None:
    assert {
        "source_matchers": ['alertname="PredictionServiceDown"'],
        "target_matchers": ['category="model_quality"'],
        "equal": ["job"],
    } in inhibit_rules()


def test_service_down_inhibits_the_other_service_health_alerts_of_the_same_job() -> None:
    assert {
        "source_matchers": ['alertname="PredictionServiceDown"'],
        "target_matchers": ['category="service_health"', 'alertname!="PredictionServiceDown"'],
        "equal": ["job"],
    } in inhibit_rules()


def test_service_unreachable_inhibits_the_predict_probe_alert_of_the_same_job() -> None:
    assert {
        "source_matchers": ['alertname="PredictionServiceUnreachable"'],
        "target_matchers": ['alertname="PredictionEndpointProbeFailing"'],
        "equal": ["job"],
    } in inhibit_rules()


def test_no_host_alert_inhibits_anything() -> None:
    sources = [rule["source_matchers"] for rule in inhibit_rules()]
    assert [
        matchers for matchers in sources if any("infrastructure" in m or "Host" in m for m in matchers)
    ] == []


def test_critical_inhibits_the_warning_of_the_same_alert_and_job() -> None:
    assert {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["alertname", "job"],
    } in inhibit_rules()


# -- templates -----------------------------------------------------------------------------------------


def alert_data(status: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    starts_at = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    ends_at = starts_at + timedelta(minutes=5) if status == "resolved" else datetime(1, 1, 1, tzinfo=UTC)
    return {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
        "endsAt": ends_at.isoformat().replace("+00:00", "Z"),
        "generatorURL": GRAPH_URL,
    }


def drift_alert(
    status: str = "firing",
    feature: str = "petal_length",
    description: str = DRIFT_DESCRIPTION,
    **annotations: str,
) -> dict[str, Any]:
    return alert_data(
        status,
        {
            "alertname": "ModelInputFeatureMeanDrift",
            "severity": "warning",
            "category": "model_quality",
            "job": "prediction-service",
            "model_version": "v1",
            "feature": feature,
        },
        {
            "summary": f"Input feature {feature} drifted from its training mean",
            "description": description,
            "runbook_url": RUNBOOK_URL,
            "dashboard_url": DASHBOARD_URL,
            **annotations,
        },
    )


def service_down_alert(status: str = "firing") -> dict[str, Any]:
    return alert_data(
        status,
        {
            "alertname": "PredictionServiceDown",
            "severity": "critical",
            "category": "service_health",
            "job": "prediction-service",
            "instance": "127.0.0.1:8000",
        },
        {
            "summary": "Prediction service 127.0.0.1:8000 is down",
            "description": "Prometheus could not scrape 127.0.0.1:8000 for 1m (up == 0).",
            "runbook_url": "http://localhost:9098/docs/runbook.md#predictionservicedown",
            "dashboard_url": "http://localhost:3000/d/prediction-service/prediction-service",
        },
    )


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's template data (template.Data) for one group of alerts."""
    common_labels = dict(set.intersection(*(set(alert["labels"].items()) for alert in alerts)))
    common_annotations = dict(set.intersection(*(set(alert["annotations"].items()) for alert in alerts)))
    return {
        "receiver": "slack-model-quality",
        "status": "firing" if any(alert["status"] == "firing" for alert in alerts) else "resolved",
        "alerts": list(alerts),
        "groupLabels": {name: alerts[0]["labels"][name] for name in ("alertname", "job")},
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": "http://localhost:9093",
    }


def render(template_name: str, data: dict[str, Any], tmp_path: Path) -> str:
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    result = subprocess.run(
        [
            require_binary("amtool"),
            "template",
            "render",
            f"--template.glob={TEMPLATES_GLOB}",
            f"--template.data={data_file}",
            f'--template.text={{{{ template "{template_name}" . }}}}',
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("field", SLACK_FIELDS)
def test_named_template_renders(field: str, tmp_path: Path) -> None:
    # amtool check-config does not notice a reference to an undefined template; rendering does.
    assert render(f"slack.{field}", notification(drift_alert()), tmp_path).strip() != ""


def test_title_counts_firing_alerts_and_names_the_alert(tmp_path: Path) -> None:
    data = notification(drift_alert(), drift_alert("resolved", feature="sepal_width"))
    assert (
        render("slack.title", data, tmp_path) == "[FIRING:1] ModelInputFeatureMeanDrift (prediction-service)"
    )


def test_title_of_a_resolved_group_says_resolved(tmp_path: Path) -> None:
    title = render("slack.title", notification(drift_alert("resolved")), tmp_path)
    assert title == "[RESOLVED] ModelInputFeatureMeanDrift (prediction-service)"


def test_title_links_to_the_dashboard(tmp_path: Path) -> None:
    assert render("slack.title_link", notification(drift_alert()), tmp_path) == DASHBOARD_URL


def test_text_names_severity_job_model_and_feature(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert()), tmp_path)
    assert (
        "*Severity:* `warning`  *Job:* `prediction-service`  *Model:* `v1`  *Feature:* `petal_length`" in text
    )


def test_text_leaves_out_labels_the_alert_does_not_have(tmp_path: Path) -> None:
    text = render("slack.text", notification(service_down_alert()), tmp_path)
    assert ("*Feature:*" in text, "*Instance:* `127.0.0.1:8000`" in text) == (False, True)


def test_text_carries_the_description_with_value_and_threshold(tmp_path: Path) -> None:
    assert DRIFT_DESCRIPTION in render("slack.text", notification(drift_alert()), tmp_path)


def test_title_links_to_the_prometheus_graph_where_there_is_no_dashboard(tmp_path: Path) -> None:
    data = notification(drift_alert(dashboard_url=""))
    assert render("slack.title_link", data, tmp_path) == GRAPH_URL


def test_text_links_runbook_dashboard_and_prometheus_graph(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert()), tmp_path)
    assert text.endswith(
        f"\n<{RUNBOOK_URL}|Runbook> | <{DASHBOARD_URL}|Dashboard> | <{GRAPH_URL}|Prometheus graph>"
    )


def test_text_leaves_out_an_empty_dashboard_link(tmp_path: Path) -> None:
    # `make run` runs no Grafana: the rules' dashboard_url is then empty.
    text = render("slack.text", notification(drift_alert(dashboard_url="")), tmp_path)
    assert text.endswith(f"\n<{RUNBOOK_URL}|Runbook> | <{GRAPH_URL}|Prometheus graph>")


def test_text_escapes_characters_slack_reserves(tmp_path: Path) -> None:
    text = render(
        "slack.text", notification(drift_alert(description="ratio 0.4 > 0.3 & rising <fast>")), tmp_path
    )
    assert "ratio 0.4 &gt; 0.3 &amp; rising &lt;fast&gt;" in text


def test_text_marks_resolved_alerts(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert("resolved")), tmp_path)
    assert text.startswith("*Resolved:* Input feature petal_length drifted from its training mean\n")


def test_resolved_text_says_what_the_rule_says_about_being_back_not_the_last_firing_value(
    tmp_path: Path,
) -> None:
    back = "The mean of petal_length is back within 5% of its training mean."
    text = render("slack.text", notification(drift_alert("resolved", resolved_description=back)), tmp_path)
    assert (back in text, DRIFT_DESCRIPTION in text) == (True, False)


def test_resolved_text_without_a_resolved_description_says_back_within_its_threshold(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert("resolved")), tmp_path)
    assert ("\nBack within its threshold.\n" in text, DRIFT_DESCRIPTION in text) == (True, False)


def test_text_has_one_paragraph_per_alert(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert(), drift_alert(feature="sepal_width")), tmp_path)
    assert (text.count("|Runbook>"), "`petal_length`" in text, "`sepal_width`" in text) == (2, True, True)


@pytest.mark.parametrize(
    ("alerts", "color"),
    [
        ([service_down_alert()], "danger"),
        ([drift_alert()], "warning"),
        ([drift_alert(), service_down_alert()], "danger"),
        ([service_down_alert("resolved")], "good"),
    ],
    ids=["critical-firing-red", "warning-firing-orange", "mixed-firing-red", "resolved-green"],
)
def test_color_follows_severity_and_status(alerts: list[dict[str, Any]], color: str, tmp_path: Path) -> None:
    assert render("slack.color", notification(*alerts), tmp_path) == color


def test_fallback_is_title_and_summaries(tmp_path: Path) -> None:
    fallback = render("slack.fallback", notification(drift_alert()), tmp_path)
    assert fallback == (
        "[FIRING:1] ModelInputFeatureMeanDrift (prediction-service): "
        "Input feature petal_length drifted from its training mean"
    )


def log_commands(text: str) -> list[str]:
    return re.findall(r"`(\.venv/bin/python -m service logs [^`]+)`", text)


def test_model_quality_alert_gives_the_log_commands_for_its_window_and_version(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert()), tmp_path)
    assert "*Log lines* (job `prediction-service`):" in text
    assert log_commands(text) == [
        ".venv/bin/python -m service logs summary --since 2025-01-01T12:00:00Z-10m --model-version v1"
        " --every 1m",
        ".venv/bin/python -m service logs outliers --since 2025-01-01T12:00:00Z-10m --model-version v1",
    ]


def test_resolved_model_quality_alert_gives_the_log_commands_up_to_its_end(tmp_path: Path) -> None:
    text = render("slack.text", notification(drift_alert("resolved")), tmp_path)
    assert [command.split(" --model-version")[0].split("--since ")[1] for command in log_commands(text)] == [
        "2025-01-01T12:00:00Z-10m --until 2025-01-01T12:05:00Z"
    ] * 2


def test_service_health_alert_has_no_log_commands(tmp_path: Path) -> None:
    text = render("slack.text", notification(service_down_alert()), tmp_path)
    assert "*Log lines*" not in text and log_commands(text) == []


def test_the_log_commands_of_a_message_run_and_find_the_alerts_rows(tmp_path: Path, model_dir: Path) -> None:
    from bench.log_data import START, write_log

    log = tmp_path / "log" / "predictions.jsonl"
    write_log(model_dir, log, 2000, max_bytes=256 * 1024, backup_count=10, rate=10.0)  # 3m20s from START
    version = json.loads((model_dir / "metadata.json").read_text())["model_version"]
    alert = drift_alert()
    alert["labels"]["model_version"] = version
    alert["startsAt"] = (START + timedelta(minutes=12)).isoformat().replace("+00:00", "Z")  # since: START+2m
    commands = log_commands(render("slack.text", notification(alert), tmp_path))
    assert len(commands) == 2
    for command in commands:
        arguments = command.split()[3:] + [
            "--logs",
            f"{log}*",
            "--model-dir",
            str(model_dir),
            "--format",
            "json",
        ]
        result = subprocess.run(
            [sys.executable, "-m", "service", *arguments],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert rows and all(row["model_version"] == version for row in rows)
        if arguments[1] == "summary":  # windows from START + 2m on, one a minute
            assert rows[0]["window_start"] == "2026-01-01T00:02:00Z" and len(rows) == 2


# -- the local Slack stand-in --------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[SlackReceiver]:
    with SlackReceiver() as started:
        yield started


SLACK_MESSAGE = {"channel": "#ml-alerts", "attachments": [{"title": "[FIRING:1] X", "text": "details"}]}


def test_receiver_records_a_json_message_and_answers_ok(receiver: SlackReceiver) -> None:
    response = httpx.post(receiver.url, json=SLACK_MESSAGE)
    assert (response.status_code, response.text, response.headers["content-type"].split(";")[0]) == (
        200,
        "ok",
        "text/plain",
    )
    assert receiver.messages == [{"path": "/services/T000/B000/XXX", "payload": SLACK_MESSAGE}]


@pytest.mark.parametrize(
    "body", [b"payload=not-json", b"", b"[1, 2]"], ids=["form", "empty", "not-an-object"]
)
def test_receiver_rejects_a_body_that_is_not_a_json_object(receiver: SlackReceiver, body: bytes) -> None:
    response = httpx.post(receiver.url, content=body)
    assert (response.status_code, response.text, receiver.messages) == (400, "invalid_payload", [])


def test_receiver_fails_the_next_requests_then_recovers(receiver: SlackReceiver) -> None:
    receiver.fail_next(2)
    statuses = [httpx.post(receiver.url, json={"text": str(attempt)}).status_code for attempt in range(3)]
    assert (statuses, [message["payload"] for message in receiver.messages]) == (
        [500, 500, 200],
        [{"text": "2"}],
    )


def test_receiver_fails_while_the_flag_is_set(receiver: SlackReceiver) -> None:
    receiver.failing = True
    while_failing = [httpx.post(receiver.url, json={"text": "lost"}).status_code for _ in range(3)]
    receiver.failing = False
    after = httpx.post(receiver.url, json={"text": "delivered"}).status_code
    assert (while_failing, after, len(receiver.messages)) == ([500, 500, 500], 200, 1)


def test_wait_for_returns_a_message_that_arrives_later(receiver: SlackReceiver) -> None:
    poster = threading.Timer(0.1, lambda: httpx.post(receiver.url + "/later", json={"text": "late"}))
    poster.start()
    try:
        message = receiver.wait_for(lambda message: message["payload"].get("text") == "late", timeout=5)
    finally:
        poster.join()
    assert message["path"] == "/services/T000/B000/XXX/later"


def test_wait_for_times_out_when_nothing_matches(receiver: SlackReceiver) -> None:
    httpx.post(receiver.url, json={"text": "other"})
    with pytest.raises(TimeoutError, match=r"(?s)within 0\.2s; received: .*\"other\""):
        receiver.wait_for(lambda message: message["payload"].get("text") == "never", timeout=0.2)


def test_receiver_command_has_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stack.slack_receiver", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert (result.returncode, "--port" in result.stdout, "--host" in result.stdout) == (0, True, True)


def lines_of(stream: Any) -> queue.Queue[str]:
    """Lines of a subprocess stream, read in a thread so the test can wait for them with a timeout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_receiver_command_prints_title_and_text_of_each_message() -> None:
    port = free_port()
    command = [sys.executable, "-m", "stack.slack_receiver", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in process.stderr.readline()
        stdout = lines_of(process.stdout)
        httpx.post(f"http://127.0.0.1:{port}/services/T000/B000/XXX", json=SLACK_MESSAGE).raise_for_status()
        printed = [stdout.get(timeout=5) for _ in range(3)]
    finally:
        process.terminate()
        process.wait(timeout=5)
    assert [line.strip() for line in printed] == [
        "--- #ml-alerts (/services/T000/B000/XXX)",
        "[FIRING:1] X",
        "details",
    ]


# -- end to end: the real Alertmanager -----------------------------------------------------------------


@dataclass
class RunningAlertmanager:
    url: str
    slack: SlackReceiver
    log_path: Path

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()

    def wait_for_title(self, title_start: str, timeout: float) -> dict[str, Any]:
        try:
            message = self.slack.wait_for(
                lambda message: message["payload"]["attachments"][0]["title"].startswith(title_start), timeout
            )
        except TimeoutError as error:
            log_tail = "\n".join(self.log_path.read_text().splitlines()[-20:])
            raise AssertionError(f"{error}\nAlertmanager log:\n{log_tail}") from error
        return message["payload"]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[RunningAlertmanager]:
    with SlackReceiver() as slack:
        webhook_file = tmp_path / "slack_webhook_url"
        webhook_file.write_text(slack.url + "\n")
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        config = config_with_webhook_file(config_dir, webhook_file)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "alertmanager.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    require_binary("prometheus-alertmanager"),
                    f"--config.file={config}",
                    f"--storage.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=os.sep,  # templates must resolve relative to the config file, not the working directory
            )
        try:
            wait_until_ready(f"{url}/-/ready", process, log_path, timeout=15)
            yield RunningAlertmanager(url=url, slack=slack, log_path=log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api_alert(starts_at: datetime, ends_at: datetime | None = None) -> dict[str, Any]:
    alert = drift_alert()
    posted = {
        "labels": alert["labels"],
        "annotations": alert["annotations"],
        "startsAt": starts_at.isoformat(),
    }
    if ends_at is not None:
        posted["endsAt"] = ends_at.isoformat()
    return posted


@pytest.mark.e2e
def test_alertmanager_sends_firing_then_resolved_message_to_slack(alertmanager: RunningAlertmanager) -> None:
    starts_at = datetime.now(UTC)
    alertmanager.post_alerts([api_alert(starts_at)])
    # group_wait is 10s.
    firing = alertmanager.wait_for_title("[FIRING:1] ModelInputFeatureMeanDrift", timeout=20)
    attachment = firing["attachments"][0]
    assert (firing["channel"], attachment["color"], attachment["title_link"]) == (
        "#ml-model-quality",
        "warning",
        DASHBOARD_URL,
    )
    assert DRIFT_DESCRIPTION in attachment["text"] and "`petal_length`" in attachment["text"]

    alertmanager.post_alerts([api_alert(starts_at, ends_at=datetime.now(UTC) - timedelta(seconds=1))])
    # The resolved message leaves at the group's next flush, group_interval (30s) after the first.
    resolved = alertmanager.wait_for_title("[RESOLVED] ModelInputFeatureMeanDrift", timeout=40)
    attachment = resolved["attachments"][0]
    assert (resolved["channel"], attachment["color"]) == ("#ml-model-quality", "good")
    assert attachment["text"].startswith("*Resolved:* ") and DRIFT_DESCRIPTION not in attachment["text"]


def posted_alert(labels: dict[str, str]) -> dict[str, Any]:
    return {
        "labels": labels,
        "annotations": {"summary": labels["alertname"], "description": "d", "runbook_url": RUNBOOK_URL},
        "startsAt": datetime.now(UTC).isoformat(),
    }


def alert_states(alertmanager: RunningAlertmanager) -> dict[str, str]:
    alerts = httpx.get(f"{alertmanager.url}/api/v2/alerts", timeout=5).json()
    return {alert["labels"]["alertname"]: alert["status"]["state"] for alert in alerts}


SERVICE = {"job": "prediction-service", "category": "service_health", "severity": "critical"}
HOST = {"job": "node", "instance": "127.0.0.1:9100", "category": "infrastructure", "severity": "critical"}
MODEL = {
    "job": "prediction-service",
    "model_version": "v1",
    "category": "model_quality",
    "severity": "critical",
}


def wait_for_states(alertmanager: RunningAlertmanager, expected: dict[str, str]) -> None:
    # Alertmanager marks an alert suppressed when its group is flushed (after group_wait, 10s).
    try:
        poll(lambda: alert_states(alertmanager) == expected, 30, f"alert states {expected}", 0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; they are {alert_states(alertmanager)}") from error


SILENCED_BY_DOWN = [
    "PredictionEndpointProbeFailing",
    "PredictionServiceUnreachable",
    "ServiceWorkersCrashLooping",
    "ServiceRequestsQueueing",
    "ModelOutlierRatioHigh",
]


@pytest.mark.e2e
def test_a_down_service_silences_its_probe_process_and_model_alerts(
    alertmanager: RunningAlertmanager,
) -> None:
    alertmanager.post_alerts(
        [
            posted_alert({"alertname": "PredictionServiceDown", "instance": "127.0.0.1:8000", **SERVICE}),
            *(posted_alert({"alertname": name, **SERVICE}) for name in SILENCED_BY_DOWN[:-1]),
            posted_alert({"alertname": "ModelOutlierRatioHigh", **MODEL}),
        ]
    )
    wait_for_states(
        alertmanager, {"PredictionServiceDown": "active", **dict.fromkeys(SILENCED_BY_DOWN, "suppressed")}
    )
    alertmanager.wait_for_title("[FIRING:1] PredictionServiceDown", timeout=20)
    titles = [message["payload"]["attachments"][0]["title"] for message in alertmanager.slack.messages]
    assert [title for title in titles if any(name in title for name in SILENCED_BY_DOWN)] == []


@pytest.mark.e2e
def test_a_host_alert_hides_no_model_alert(alertmanager: RunningAlertmanager) -> None:
    alertmanager.post_alerts(
        [
            posted_alert({"alertname": "HostOutOfMemory", **HOST}),
            posted_alert({"alertname": "HostCpuSaturated", **HOST, "severity": "warning"}),
            posted_alert({"alertname": "ModelOutlierRatioHigh", **MODEL}),
        ]
    )
    for title in ("[FIRING:1] HostOutOfMemory", "[FIRING:1] ModelOutlierRatioHigh"):
        alertmanager.wait_for_title(title, timeout=20)
    wait_for_states(
        alertmanager,
        {"HostOutOfMemory": "active", "HostCpuSaturated": "active", "ModelOutlierRatioHigh": "active"},
    )
