"""The Prometheus configuration, rules and runbook: promtool validates them and runs their unit tests, and
the rules are held to the contract of docs/design.md (names, labels, annotations, runbook sections, tests).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
PROMETHEUS_DIR = ROOT / "prometheus"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
RULES_GENERATOR = PROMETHEUS_DIR / "generate_rules.py"
# Prometheus loads rules/*.yml (prometheus.yml); in this order the groups are listed in group_eval_order.
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DESIGN = ROOT / "docs" / "design.md"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Links are built from prometheus.yml's external labels (see the comment in alert_rules.yml).
DASHBOARD_PATH_BY_CATEGORY = {
    "model_quality": "/d/model-monitoring/model-monitoring",
    "service_health": "/d/prediction-service/prediction-service",
    "infrastructure": "/d/prediction-service/prediction-service",
}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


ALL_RULES = [rule for path in RULE_FILES for rule in rules(path)]
ALERTS = {rule["alert"]: rule for rule in ALL_RULES if "alert" in rule}
RECORDS = {rule["record"] for rule in ALL_RULES if "record" in rule}
WINDOWS = ("2m", "15m", "1h", "6h")  # prometheus/generate_rules.py's WINDOWS


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package (it ships promtool)")
    return path


def run(args: list[str]) -> subprocess.CompletedProcess:
    # the model-quality alert tests replay hours of 10 s samples: ~1 min of CPU, more on a loaded machine
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------------------------------------- promtool


def test_config_is_valid(promtool: str):
    result = run([promtool, "check", "config", rel(CONFIG_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_valid_and_lint_free(promtool: str, rule_file: Path):
    result = run([promtool, "check", "rules", "--lint-fatal", rel(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_rule_unit_tests():
    assert RULE_TEST_FILES, "no promtool test files in prometheus/tests/"


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path):
    result = run([promtool, "test", "rules", rel(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------ prometheus.yml


def test_config_scrapes_the_service_its_probes_the_machine_and_the_monitoring():
    config = load_yaml(CONFIG_FILE)
    assert config["global"]["scrape_interval"] == "10s"
    assert config["global"]["evaluation_interval"] == "10s"
    targets = {
        job["job_name"]: [target for entry in job["static_configs"] for target in entry["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "prediction-service": ["localhost:8000"],
        "prediction-service-probe": [
            "http://localhost:8000/health",
            "http://localhost:8000/ready",
            "http://localhost:8000/predict",
        ],
        "node": ["localhost:9100"],
        "prometheus": ["localhost:9090"],
        "alertmanager": ["localhost:9093"],
    }
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["localhost:9093"]}]}]


def test_probes_go_through_the_blackbox_exporter_with_one_module_per_endpoint():
    probes = next(
        job for job in load_yaml(CONFIG_FILE)["scrape_configs"] if job["job_name"].endswith("-probe")
    )
    modules = {
        target: static["labels"]["__param_module"]
        for static in probes["static_configs"]
        for target in static["targets"]
    }
    assert modules == {
        "http://localhost:8000/health": "http_get_ok",
        "http://localhost:8000/ready": "http_get_ok",
        "http://localhost:8000/predict": "http_predict",
    }
    assert probes["metrics_path"] == "/probe"
    assert {"target_label": "__address__", "replacement": "localhost:9115"} in probes["relabel_configs"]


# ----------------------------------------------------------------------------------- design contract


def test_recording_rules_are_exactly_those_of_the_design():
    """The table names each record once; `<window>` stands for every window of the model-quality rules."""
    rows = re.findall(r"^\| `([a-z_]+:[a-z_]+:[a-z0-9_<>]+)` \|", DESIGN.read_text(), re.M)
    assert rows, "no recording rule table found in docs/design.md"
    table_names = {
        row.replace("<window>", window)
        for row in rows
        for window in (WINDOWS if "<window>" in row else ("",))
    }
    assert RECORDS == table_names


def test_generated_model_quality_rules_are_up_to_date():
    result = run([sys.executable, str(RULES_GENERATOR), "--check"])
    assert result.returncode == 0, result.stderr + "\nrun: python prometheus/generate_rules.py"


def test_model_quality_verdicts_carry_their_window_and_alerts_do_not():
    verdicts = [rule for rule in ALL_RULES if "record" in rule and "window" in rule.get("labels", {})]
    assert {rule["labels"]["window"] for rule in verdicts} == set(WINDOWS)
    for name, alert in ALERTS.items():
        if alert["labels"]["category"] == "model_quality":
            assert alert["expr"].startswith("max without (window) ("), name
            assert alert.get("keep_firing_for"), f"{name} has no hysteresis (keep_firing_for)"


def test_alerts_are_exactly_those_of_the_design():
    bullet = re.search(r"^- Alerts:(.*?)^- ", DESIGN.read_text(), re.M | re.S)
    assert bullet, "no '- Alerts:' bullet in docs/design.md"
    assert set(ALERTS) == set(re.findall(r"`([A-Z][A-Za-z]+)`", bullet.group(1)))


# ------------------------------------------------------------------------------------------- alerts


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_for_severity_category_and_annotations(name: str):
    alert = ALERTS[name]
    assert alert.get("for"), f"{name} has no `for`"
    assert alert["labels"]["severity"] in {"critical", "warning"}
    assert alert["labels"]["category"] in DASHBOARD_PATH_BY_CATEGORY
    missing = REQUIRED_ANNOTATIONS - {key for key, value in alert["annotations"].items() if value}
    assert not missing, f"{name} lacks annotations {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_description_shows_the_current_value(name: str):
    # model-quality alerts show each window's own value (`.Value` of its verdict)
    description = ALERTS[name]["annotations"]["description"]
    assert "$value" in description or ".Value" in description


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_dashboard_url_is_grafanas_url_and_the_dashboard_of_its_category(name: str):
    alert = ALERTS[name]
    path = DASHBOARD_PATH_BY_CATEGORY[alert["labels"]["category"]]
    start, end = "{{ with $externalLabels.grafana_url }}{{ . }}", "{{ end }}"
    pattern = re.escape(start + path) + r"(\?.*)?" + re.escape(end)
    assert re.fullmatch(pattern, alert["annotations"]["dashboard_url"])


def test_config_external_labels_give_the_links_their_addresses():
    labels = load_yaml(CONFIG_FILE)["global"]["external_labels"]
    assert labels == {
        "runbook_page": "http://localhost:9098/docs/runbook.md",  # compose's `docs` service
        "grafana_url": "http://localhost:3000",  # compose's `grafana` service
    }


ALL_ALERT_RULES = [
    rule
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
    for rule in rules(path)
    if "alert" in rule
]


@pytest.mark.parametrize("rule", ALL_ALERT_RULES, ids=lambda rule: rule["alert"])
def test_no_alert_annotation_names_a_host(rule: dict):
    # A host written in a rule is wrong wherever the stack runs elsewhere: links come from external labels.
    assert [value for value in rule["annotations"].values() if re.search(r"https?://|localhost", value)] == []


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


RUNBOOK_ANCHORS = {
    github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")
}


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_runbook_url_points_at_its_runbook_section(name: str):
    url = ALERTS[name]["annotations"]["runbook_url"]
    assert url == f"{{{{ with $externalLabels.runbook_page }}}}{{{{ . }}}}#{name.lower()}{{{{ end }}}}"
    assert name.lower() in RUNBOOK_ANCHORS, f"docs/runbook.md has no section headed {name}"


# ----------------------------------------------------------------------------- coverage of the tests

RULE_TESTS = {path.name: load_yaml(path) for path in RULE_TEST_FILES}


def promql_exprs() -> list[str]:
    return [
        case["expr"]
        for test_file in RULE_TESTS.values()
        for group in test_file["tests"]
        for case in group.get("promql_expr_test", [])
    ]


def alert_cases(name: str) -> list[dict]:
    return [
        case
        for test_file in RULE_TESTS.values()
        for group in test_file["tests"]
        for case in group.get("alert_rule_test", [])
        if case["alertname"] == name
    ]


@pytest.mark.parametrize("record", sorted(RECORDS))
def test_recording_rule_has_an_exact_value_test(record: str):
    pattern = re.compile(rf"(?<![\w:]){re.escape(record)}(?![\w:])")
    assert any(pattern.search(expr) for expr in promql_exprs()), f"no promql_expr_test queries {record}"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_tested_firing_and_quiet(name: str):
    cases = alert_cases(name)
    assert any(case.get("exp_alerts") for case in cases), f"no test shows {name} firing"
    assert any(not case.get("exp_alerts") for case in cases), f"no test shows {name} quiet"


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda p: p.name)
def test_rule_test_file_is_deterministic_and_uses_the_shipped_rules(test_file: Path):
    spec = RULE_TESTS[test_file.name]
    rule_files = [(test_file.parent / name).resolve() for name in spec["rule_files"]]
    assert all(not Path(name).is_absolute() for name in spec["rule_files"])
    assert set(rule_files) <= set(RULE_FILES)
    # Without `interval` promtool 2.42 fires no alert at all; without evaluation_interval it evaluates
    # every minute, not every 10s like prometheus.yml.
    assert spec.get("evaluation_interval") == "10s"
    assert all(group.get("interval") for group in spec["tests"])
    groups = [group for path in RULE_FILES if path in rule_files for group in load_yaml(path)["groups"]]
    # recording groups first, so an alert sees the records of the same instant
    is_alerts = [any("alert" in rule for rule in group["rules"]) for group in groups]
    expected = [g["name"] for g, alerts in zip(groups, is_alerts, strict=True) if not alerts]
    expected += [g["name"] for g, alerts in zip(groups, is_alerts, strict=True) if alerts]
    if len(expected) > 1:
        # Otherwise promtool evaluates groups in random order and `for` timings flip between runs.
        assert spec.get("group_eval_order") == expected
