"""Every link in the Slack message of every alert opens a page that exists, as `make run` runs the stack.

Each alert rule of prometheus/rules/*.yml (whoever added it) fires once, with its own name, labels and
annotations but an expression that holds at once, in the stack's real Prometheus (rendered config: external
URL and external labels), through the real Alertmanager and Slack templates to the Slack stand-in. Then the
expressions are emptied (a config reload keeps the alerts' state) and the alerts resolve. The test follows
every link of both messages; a runbook link's #section must be a heading of the page.
"""

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO_ROOT

from stack.processes import Stack, stack_on_free_ports
from stack.slack_receiver import SlackReceiver

pytestmark = pytest.mark.e2e

RULE_FILES = sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
ALERT_RULES = [
    rule
    for path in RULE_FILES
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
]
# A value for every label an annotation may name; anything else gets "x".
LABEL_VALUES = {
    "job": "prediction-service",  # + the alert's name
    "instance": "127.0.0.1:8000",
    "model_version": "v1",
    "feature": "petal_length",
    "predicted_label": "setosa",
    "handler": "/predict",
}
SLACK_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")


def synthetic_expr(rule: dict) -> str:
    """A one-sample vector carrying the labels the rule's annotations use.

    Each alert gets a job of its own: PredictionServiceDown inhibits the other alerts of its job.
    """
    used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"]))) - {"job"}
    values = {label: LABEL_VALUES.get(label, "x") for label in sorted(used)}
    values["job"] = f"{LABEL_VALUES['job']}-{rule['alert']}"
    expr = "vector(0.5)"
    for label, value in values.items():
        expr = f'label_replace({expr}, "{label}", "{value}", "", "")'
    return expr


def rules_file(firing: bool) -> dict:
    """The alerts with their names, labels and annotations; firing at once, or never."""
    return {
        "groups": [
            {
                "name": "every-alert",
                "rules": [
                    {
                        "alert": rule["alert"],
                        "expr": synthetic_expr(rule) if firing else "vector(1) == 0",
                        # the synthetic job, not a rule's own (an inhibition would hide the alert)
                        "labels": {k: v for k, v in rule.get("labels", {}).items() if k != "job"},
                        "annotations": rule["annotations"],
                    }
                    for rule in ALERT_RULES
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def monitoring(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Stack, SlackReceiver]]:
    """Prometheus with the synthetic rules, Alertmanager and the docs server as `make run` starts them."""
    run_dir = tmp_path_factory.mktemp("alert-links")
    rules = run_dir / "every_alert.yml"
    rules.write_text(yaml.safe_dump(rules_file(firing=True)))
    with SlackReceiver() as receiver:
        stack = stack_on_free_ports(run_dir, model_dir, receiver.url)
        stack.rule_files = [rules]
        try:
            stack.docs.start("127.0.0.1", stack.ports.docs)
            stack.start_alertmanager()
            stack.start_prometheus()
            yield stack, receiver
        finally:
            stack.stop()


def links(message: dict) -> list[str]:
    attachment = message["payload"]["attachments"][0]
    return [attachment["title_link"]] + [url for url, _text in SLACK_LINK.findall(attachment["text"])]


def assert_opens_a_page(url: str) -> None:
    page = httpx.get(url, follow_redirects=True, timeout=10.0)
    assert page.status_code == 200, url
    fragment = httpx.URL(url).fragment
    if fragment:
        assert f'id="{fragment}"' in page.text, f"{url}: no such section"


def test_there_are_alert_rules() -> None:
    assert len(ALERT_RULES) >= 5


def test_every_link_of_every_alerts_firing_and_resolved_message_opens_a_page(
    monitoring: tuple[Stack, SlackReceiver],
) -> None:
    stack, receiver = monitoring
    names = sorted({rule["alert"] for rule in ALERT_RULES})

    def title(message: dict) -> str:
        return message["payload"]["attachments"][0]["title"]

    def message_for(status: str, name: str) -> dict:
        return receiver.wait_for(
            lambda m: title(m).startswith(f"[{status}") and f"] {name} (" in title(m), 90
        )

    firing = {name: message_for("FIRING", name) for name in names}
    (stack.run_dir / "every_alert.yml").write_text(yaml.safe_dump(rules_file(firing=False)))
    stack.processes["prometheus"].send_signal(signal.SIGHUP)  # reload: same rules, state kept, now empty
    resolved = {name: message_for("RESOLVED", name) for name in names}

    for name in names:
        text = firing[name]["payload"]["attachments"][0]["text"]
        labels = [label for _url, label in SLACK_LINK.findall(text)]
        assert labels == ["Runbook", "Prometheus graph"], f"{name}: {text}"  # no Grafana under `make run`
        resolved_text = resolved[name]["payload"]["attachments"][0]["text"]
        assert resolved_text.startswith("*Resolved:* "), resolved_text
    for url in sorted({url for message in [*firing.values(), *resolved.values()] for url in links(message)}):
        assert_opens_a_page(url)


@pytest.mark.parametrize("rule", ALERT_RULES, ids=lambda rule: rule["alert"])
def test_dashboard_link_names_a_dashboard_that_is_provisioned(rule: dict) -> None:
    uids = {
        json.loads(path.read_text())["uid"] for path in (REPO_ROOT / "grafana" / "dashboards").glob("*.json")
    }
    linked = re.findall(r"/d/([\w-]+)/", rule["annotations"].get("dashboard_url", ""))
    assert linked and set(linked) <= uids
