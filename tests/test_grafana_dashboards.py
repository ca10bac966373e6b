"""The provisioned Grafana dashboards, checked without Grafana: generated, consistent, and wired to the names
of docs/design.md, the provisioned datasource and the recording rules."""

import re
import subprocess
import sys

import pytest
import yaml
from dashboard_queries import (
    REPO_ROOT,
    SUBSTITUTIONS,
    all_dashboards,
    annotations,
    dashboard_files,
    dashboard_queries,
    data_panels,
    is_log_dashboard,
    load_dashboards,
    raw_dashboard_queries,
    variable_query,
)

GENERATOR = REPO_ROOT / "grafana" / "generate_dashboards.py"
DATASOURCE_PROVISIONING = REPO_ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ALERTMANAGER_PROVISIONING = REPO_ROOT / "grafana" / "provisioning" / "datasources" / "alertmanager.yml"
LOKI_PROVISIONING = REPO_ROOT / "grafana" / "provisioning" / "datasources" / "loki.yml"
DASHBOARD_PROVISIONING = REPO_ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DESIGN = (REPO_ROOT / "docs" / "design.md").read_text(encoding="utf-8")
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
PROMETHEUS_EVALUATION_INTERVAL = "10s"
GRAPH_TYPES = {"timeseries", "heatmap"}  # the panel types that draw annotations
# Where each category's alerts are shaded (docs/design.md); any other category is infrastructure.
DASHBOARD_BY_CATEGORY = {"service_health": "prediction-service", "model_quality": "model-monitoring"}
INFRASTRUCTURE_DASHBOARD = "prediction-service"
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))  # what prometheus.yml loads

MODEL_QUALITY_ALERTS = [
    "ModelOutlierRatioHigh",
    "ModelInputFeatureMeanDrift",
    "ModelInputFeatureDistributionDrift",
    "ModelPredictedClassShareDrift",
]
WINDOWS = ("2m", "15m", "1h", "6h")  # the model-quality windows (held to the rules' below)


def per_window(title: str, alerts: list[str]) -> dict[tuple[str, str], list[str]]:
    return {("model-monitoring", f"{title} over {window}"): alerts for window in WINDOWS}


# Panels that draw threshold lines, and the alerts whose thresholds they are.
PANEL_ALERTS = {
    ("prediction-service", "Error ratio"): ["PredictionErrorRateHigh"],
    ("prediction-service", "Request latency p50 / p90 / p99"): ["PredictionLatencyHigh"],
    **per_window("Outlier ratio", ["ModelOutlierRatioHigh"]),
    **per_window("Outlier evidence", ["ModelOutlierRatioHigh"]),
    **per_window("Outlier share vs training", ["ModelOutlierRatioHigh"]),
    ("model-monitoring", "Predictions per window"): MODEL_QUALITY_ALERTS,
    **per_window("Predicted class share evidence", ["ModelPredictedClassShareDrift"]),
    **per_window("Feature mean deviation", ["ModelInputFeatureMeanDrift"]),
    **per_window("Feature mean evidence", ["ModelInputFeatureMeanDrift"]),
    **per_window("Feature distribution distance", ["ModelInputFeatureDistributionDrift"]),
    **per_window("Feature distribution evidence", ["ModelInputFeatureDistributionDrift"]),
    **per_window("Feature distribution excess", ["ModelInputFeatureDistributionDrift"]),
    ("prediction-service", "Host CPU utilisation"): ["HostCpuSaturated"],
    ("prediction-service", "Host memory utilisation"): ["HostOutOfMemory"],
    ("prediction-service", "Prediction log disk free"): ["PredictionLogDiskFillingUp"],
    ("prediction-service", "Worker restarts"): ["ServiceWorkersCrashLooping"],
    ("prediction-service", "Requests in flight per worker"): ["ServiceRequestsQueueing"],
}

# Series Prometheus makes itself, not part of the service's metric contract.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
RANGE_FUNCTIONS = {"rate", "increase", "irate"}
COUNTER_SERIES = re.compile(r"_(total|bucket|count|sum)$")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
TOKEN = re.compile(
    r"(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<open>\()|(?P<close>\))|(?P<skip>\{[^}]*\}|\[[^\]]*\])"
)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
VARIABLE_USE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def design_datasource_uid() -> str:
    return re.search(r"Prometheus datasource uid `([^`]+)`", DESIGN)[1]


def design_alertmanager_datasource_uid() -> str:
    return re.search(r"Alertmanager datasource uid `([^`]+)`", DESIGN)[1]


def design_dashboards() -> dict[str, str]:
    """uid → title, from the design note's "Dashboards: uid `x` ("Title")" line."""
    return dict(re.findall(r'uid `([^`]+)`\s+\("([^"]+)"\)', DESIGN))


def design_recording_rules() -> set[str]:
    """The records of the design note's table; a name with `<window>` stands for one per window."""
    rows = re.findall(r"^\| `([a-z_]+:[a-z0-9_:<>]+)` \|", DESIGN, re.MULTILINE)
    return {
        row.replace("<window>", window)
        for row in rows
        for window in (WINDOWS if "<window>" in row else ("",))
    }


def design_metric_series() -> set[str]:
    """Every series name the metric contract allows: `_total` of counters, `_bucket/_sum/_count` of
    histograms, gauges as named."""
    series = set()
    for name, kind in re.findall(r"^\| `([a-z_]+)` \| (counter|histogram|gauge)", DESIGN, re.MULTILINE):
        if kind == "counter":
            series.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            series.add(name)
    return series


def design_features() -> list[str]:
    return re.findall(r"`(\w+)`", re.search(r"Features: ([^.]+)\.", DESIGN)[1])


def all_rules() -> list[dict]:
    assert RULE_FILES, "no rule files in prometheus/rules/"
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def record_exprs() -> dict[str, list[str]]:
    """record name → its expressions (a record may have several rules, told apart by labels)."""
    exprs: dict[str, list[str]] = {}
    for rule in all_rules():
        if "record" in rule:
            exprs.setdefault(rule["record"], []).append(rule["expr"])
    return exprs


def alert_numbers(alert_names: list[str]) -> set[float]:
    """Every number in the expressions of the named alerts and of the records they read, transitively
    (the model-quality alerts read per-window verdicts, whose records hold the thresholds); label values
    aside."""
    records = record_exprs()
    alerts = {rule["alert"]: rule["expr"] for rule in all_rules() if "alert" in rule}
    pending = [alerts[name] for name in alert_names]
    seen: set[str] = set()
    numbers: set[float] = set()
    while pending:
        expr = pending.pop()
        numbers |= {float(number) for number in NUMBER.findall(STRING.sub('""', expr))}
        for series, _ in promql_series(expr):
            if series in records and series not in seen:
                seen.add(series)
                pending.extend(records[series])
    return numbers


def provisioned_datasource(path=DATASOURCE_PROVISIONING) -> dict:
    (datasource,) = yaml.safe_load(path.read_text())["datasources"]
    return datasource


def promql_series(expr: str) -> list[tuple[str, str]]:
    """(series name, name of the function whose parentheses directly enclose it) for each selector."""
    code = GROUPING.sub(" ", STRING.sub('""', expr))
    found = []
    enclosing: list[str] = []
    tokens = list(TOKEN.finditer(code))
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token["open"]:
            previous = tokens[index - 1] if index else None
            enclosing.append(previous["name"] if previous is not None and previous["name"] else "")
        elif token["close"]:
            enclosing.pop()
        elif token["name"]:
            is_function = following is not None and following["open"] is not None
            if not is_function and token["name"].lower() not in PROMQL_KEYWORDS:
                found.append((token["name"], enclosing[-1] if enclosing else ""))
    return found


def panel_cases() -> list[pytest.param]:
    return [
        pytest.param(dashboard, panel, id=f"{dashboard['uid']}/{panel['title']}")
        for dashboard in all_dashboards()
        for panel in data_panels(dashboard)
    ]


def query_cases() -> list[pytest.param]:
    return [pytest.param(expr, id=f"{uid}/{title}/{expr}") for uid, title, expr in raw_dashboard_queries()]


def test_committed_dashboards_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_generator_prints_help():
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "--check" in result.stdout


def test_dashboards_are_the_ones_in_the_design_note_with_unique_uids_and_titles():
    dashboards = all_dashboards()
    uids = [dashboard["uid"] for dashboard in dashboards]
    titles = [dashboard["title"] for dashboard in dashboards]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    assert dict(zip(uids, titles, strict=True)) == design_dashboards()
    assert {path.stem for path in dashboard_files()} == set(uids)


def test_datasource_is_provisioned_with_the_uid_of_the_design_note():
    datasource = provisioned_datasource()
    assert datasource["uid"] == design_datasource_uid()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_alertmanager_datasource_is_provisioned_with_the_uid_of_the_design_note():
    datasource = provisioned_datasource(ALERTMANAGER_PROVISIONING)
    assert datasource["uid"] == design_alertmanager_datasource_uid()
    assert datasource["type"] == "alertmanager"
    assert datasource["url"] == "http://alertmanager:9093"
    assert datasource["access"] == "proxy"  # Grafana's server talks to Alertmanager, not the browser
    assert datasource["jsonData"]["implementation"] == "prometheus"
    assert datasource["jsonData"]["handleGrafanaManagedAlerts"] is False
    assert not datasource.get("isDefault", False)


def test_prometheus_datasource_shows_its_rules_in_grafana_alerting_with_the_alertmanager_they_send_to():
    json_data = provisioned_datasource()["jsonData"]
    assert json_data["manageAlerts"] is True
    assert json_data["prometheusType"] == "Prometheus"
    assert json_data["alertmanagerUid"] == provisioned_datasource(ALERTMANAGER_PROVISIONING)["uid"]


def test_every_provisioned_datasource_pins_a_unique_uid():
    files = sorted(DATASOURCE_PROVISIONING.parent.glob("*.yml"))
    assert set(files) == {DATASOURCE_PROVISIONING, ALERTMANAGER_PROVISIONING, LOKI_PROVISIONING}
    datasources = [item for path in files for item in yaml.safe_load(path.read_text())["datasources"]]
    uids = [datasource["uid"] for datasource in datasources]
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", uid) for uid in uids), uids
    assert len(set(uids)) == len(uids)
    assert [datasource.get("isDefault", False) for datasource in datasources].count(True) == 1
    for path in files:
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path


def test_dashboard_provider_loads_the_folder_the_dashboards_are_mounted_in():
    (provider,) = yaml.safe_load(DASHBOARD_PROVISIONING.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_datasource_time_interval_is_the_prometheus_scrape_interval():
    """Grafana derives $__rate_interval (at least 4 scrapes) from it; dashboard_queries() substitutes 1m for
    $__rate_interval, which must then hold at least 4 scrapes as well."""
    assert PROMETHEUS_CONFIG.exists(), f"{PROMETHEUS_CONFIG} is missing"
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert provisioned_datasource()["jsonData"]["timeInterval"] == scrape_interval
    assert SUBSTITUTIONS["__rate_interval"] == "1m"
    assert re.fullmatch(r"\d+s", scrape_interval) and 4 * int(scrape_interval[:-1]) <= 60


def test_dashboards_share_settings():
    for dashboard in load_dashboards():
        assert dashboard["editable"] is True
        assert 39 <= dashboard["schemaVersion"] < 40
        assert dashboard["time"] == {"from": "now-30m", "to": "now"}
        assert dashboard["refresh"] == "10s"
        assert [variable["name"] for variable in dashboard["templating"]["list"]] == [
            "job",
            "instance",
            "model_version",
        ]


@pytest.mark.parametrize(("dashboard", "panel"), panel_cases())
def test_panel_has_title_description_unit_and_the_provisioned_datasource(dashboard, panel):
    source = provisioned_datasource(
        LOKI_PROVISIONING if is_log_dashboard(dashboard) else DATASOURCE_PROVISIONING
    )
    assert panel["title"].strip()
    assert panel["description"].strip()
    assert panel["fieldConfig"]["defaults"]["unit"].strip()
    assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}
    assert panel["targets"]
    for target in panel["targets"]:
        assert target["datasource"] == {"type": source["type"], "uid": source["uid"]}


def test_template_variables_use_the_provisioned_datasource():
    uid = provisioned_datasource()["uid"]
    for dashboard in load_dashboards():
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"] == {"type": "prometheus", "uid": uid}


def test_dashboards_do_not_use_exported_datasource_inputs():
    for path in dashboard_files():
        text = path.read_text(encoding="utf-8")
        assert "${DS_" not in text, path
        assert "__inputs" not in text, path


@pytest.mark.parametrize("expr", query_cases())
def test_counters_and_buckets_appear_only_inside_rate_or_increase(expr):
    for series, function in promql_series(expr):
        if COUNTER_SERIES.search(series):
            assert function in RANGE_FUNCTIONS, f"{series} outside rate()/increase() in {expr}"


def queries_of(dashboard: dict) -> list[str]:
    """Every annotation, panel target and variable query of one dashboard, variables unreplaced."""
    queries = [annotation["target"]["expr"] for annotation in annotations(dashboard)]
    queries += [target["expr"] for panel in data_panels(dashboard) for target in panel["targets"]]
    return queries + [variable_query(variable) for variable in dashboard["templating"]["list"]]


def test_every_variable_in_a_query_is_a_template_variable_of_its_dashboard():
    for dashboard in load_dashboards():
        defined = {variable["name"] for variable in dashboard["templating"]["list"]}
        for expr in queries_of(dashboard):
            used = {a or b for a, b in VARIABLE_USE.findall(expr)}
            builtin = {name for name in used if name.startswith("__")}  # $__rate_interval and friends
            assert used - builtin <= defined, expr


def test_multi_value_and_all_variables_are_matched_as_regex():
    """Grafana expands them to `a|b` or the allValue `.*`: only `=~` matches those."""
    for dashboard in load_dashboards():
        regex_variables = [
            variable["name"]
            for variable in dashboard["templating"]["list"]
            if variable.get("multi") or variable.get("includeAll")
        ]
        for name in regex_variables:
            for expr in queries_of(dashboard):
                for matcher in re.findall(r'\w+\s*(=~|!~|!=|=)\s*"[^"]*\$\{?' + name + r"\b", expr):
                    assert matcher in ("=~", "!~"), f"${name} needs a regex matcher in {expr}"


def test_dashboards_use_only_recording_rules_of_the_design_note():
    used = {
        series for _, _, expr in raw_dashboard_queries() for series, _ in promql_series(expr) if ":" in series
    }
    assert used, "the dashboards should read the recording rules"
    assert used <= design_recording_rules()


def test_dashboards_use_only_recording_rules_that_exist():
    recorded = set(record_exprs())
    used = {
        series for _, _, expr in raw_dashboard_queries() for series, _ in promql_series(expr) if ":" in series
    }
    assert used - recorded == set()


def test_raw_series_in_dashboards_are_in_the_metric_contract():
    allowed = design_metric_series() | PROMETHEUS_SERIES
    for _, _, expr in raw_dashboard_queries():
        for series, _ in promql_series(expr):
            assert ":" in series or series in allowed, f"{series} is not in docs/design.md's metric contract"


def test_threshold_lines_are_the_thresholds_of_the_alerts():
    drawn = {}
    for dashboard in load_dashboards():
        for panel in data_panels(dashboard):
            defaults = panel["fieldConfig"]["defaults"]
            if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") != "off":
                steps = defaults["thresholds"]["steps"]
                drawn[(dashboard["uid"], panel["title"])] = {step["value"] for step in steps[1:]}
    assert drawn.keys() == PANEL_ALERTS.keys()
    for panel, values in drawn.items():
        assert values <= alert_numbers(PANEL_ALERTS[panel]), panel


def test_feature_mean_bands_are_the_drift_tolerance():
    (tolerance,) = {
        abs(number) for number in alert_numbers(["ModelInputFeatureMeanDrift"]) if 0 < abs(number) < 1
    }
    band_factors = {
        float(factor)
        for _, title, expr in raw_dashboard_queries()
        if title.endswith("mean vs training mean")
        for factor in re.findall(r"\* ([\d.]+)$", expr)
    }
    assert sorted(band_factors) == pytest.approx([1 - tolerance, 1 + tolerance])


def test_every_feature_of_the_design_note_has_its_panels():
    queries = [expr for _, _, expr in raw_dashboard_queries()]
    for feature in design_features():
        feature_queries = [expr for expr in queries if f'feature="{feature}"' in expr]
        for window in WINDOWS:
            assert any(f"model_input_feature_value:mean{window}{{" in expr for expr in feature_queries), (
                feature,
                window,
            )
        assert any("model_input_feature_value_bucket" in expr for expr in feature_queries), feature


def test_windows_are_those_of_the_model_quality_rules():
    verdict_windows = {rule["labels"]["window"] for rule in all_rules() if "window" in rule.get("labels", {})}
    assert verdict_windows == set(WINDOWS)


def test_model_quality_records_are_shown_in_every_window_or_none():
    """A per-window record on the dashboards is there for each window: no window is left out."""
    records = set(record_exprs())
    used = {
        series for _, _, expr in raw_dashboard_queries() for series, _ in promql_series(expr) if ":" in series
    }
    for name in used:
        for window in WINDOWS:
            base = name.removesuffix(window)
            if base != name and all(base + other in records for other in WINDOWS):
                missing = {base + other for other in WINDOWS} - used
                assert not missing, f"the dashboards show {name} but not {sorted(missing)}"


def test_dashboard_queries_returns_every_target_and_variable_with_variables_substituted():
    dashboards = load_dashboards()
    expected = sum(len(queries_of(dashboard)) for dashboard in dashboards)
    queries = dashboard_queries()
    assert len(queries) == expected
    assert {uid for uid, _, _ in queries} == {dashboard["uid"] for dashboard in dashboards}
    for uid, title, expr in queries:
        assert "$" not in expr, (uid, title, expr)
        assert "label_values" not in expr, (uid, title, expr)
    assert ("prediction-service", "variable job", "up") in queries
    assert ("prediction-service", "variable instance", 'up{job="prediction-service"}') in queries
    heatmap = [expr for uid, title, expr in queries if title == "Prediction request latency distribution"]
    assert heatmap == [
        "sum by (le) (increase(http_request_duration_seconds_bucket"
        '{job="prediction-service", instance=~".*", handler=~"/predict.*"}[1m]))'
    ]
    assert SUBSTITUTIONS["instance"] == ".*"


def alert_rules() -> list[dict]:
    """Every alerting rule of every file in prometheus/rules/ (generated ones and other teams' included)."""
    return [
        rule
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def selects(expr: str, labels: dict[str, str]) -> bool:
    """Whether the selector's matchers on the labels in `labels` hold (PromQL regexes are anchored);
    matchers on other labels, which only the firing alert has (job, feature...), are not judged here."""
    for name, operator, value in MATCHER.findall(expr):
        if name not in labels or "$" in value:  # a dashboard variable (the probe alerts set job themselves)
            continue
        if operator == "=" and labels[name] != value or operator == "!=" and labels[name] == value:
            return False
        if operator in ("=~", "!~") and (re.fullmatch(value, labels[name]) is None) == (operator == "=~"):
            return False
    return True


def graph_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in data_panels(dashboard) if panel["type"] in GRAPH_TYPES]


def annotations_by_panel(dashboard: dict) -> dict[str, list[dict]]:
    """Panel title → the annotations Grafana draws on it."""
    titles = {panel["id"]: panel["title"] for panel in data_panels(dashboard)}
    drawn: dict[str, list[dict]] = {}
    for annotation in annotations(dashboard):
        for panel_id in annotation["filter"]["ids"]:
            drawn.setdefault(titles[panel_id], []).append(annotation)
    return drawn


def test_annotations_shade_firing_alerts_chosen_by_label_from_the_provisioned_datasource():
    uid = provisioned_datasource()["uid"]
    for dashboard in load_dashboards():
        assert annotations(dashboard), dashboard["uid"]
        for annotation in annotations(dashboard):
            expr = annotation["target"]["expr"]
            assert annotation["datasource"] == {"type": "prometheus", "uid": uid}
            assert annotation["enable"] is True and annotation["hide"] is False
            assert re.fullmatch(r"ALERTS\{[^{}]*\}", expr), expr
            assert 'alertstate="firing"' in expr
            assert "alertname" not in expr, f"{annotation['name']}: choose alerts by label, not by name"
            assert annotation["target"]["interval"] == PROMETHEUS_EVALUATION_INTERVAL
            assert annotation["target"]["range"] is True  # over the dashboard's time range
            assert annotation["useValueForTime"] is False  # ALERTS is 1 while firing: shade the samples
            assert annotation["titleFormat"] == "{{alertname}}"


def test_annotation_names_are_unique_and_their_panels_exist_and_draw_annotations():
    for dashboard in load_dashboards():
        names = [annotation["name"] for annotation in annotations(dashboard)]
        assert len(set(names)) == len(names)
        graphs = {panel["id"] for panel in graph_panels(dashboard)}
        for annotation in annotations(dashboard):
            assert annotation["filter"]["exclude"] is False
            ids = annotation["filter"]["ids"]
            assert ids and set(ids) <= graphs and len(set(ids)) == len(ids), annotation["name"]


def test_annotation_text_uses_only_labels_every_selected_alert_has():
    """Grafana prints the label's name where a label is missing: only labels the query pins or that every
    alert carries (alertname, severity; job and model_version where the query matches on them)."""
    for dashboard in load_dashboards():
        for annotation in annotations(dashboard):
            pinned = {
                name
                for name, operator, value in MATCHER.findall(annotation["target"]["expr"])
                if operator in ("=", "=~") and value
            }
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", annotation["textFormat"]))
            assert used <= {"alertname", "severity"} | pinned, annotation["name"]


def test_every_graph_of_the_dashboards_shows_the_alerts_of_its_numbers():
    for dashboard in load_dashboards():
        drawn = annotations_by_panel(dashboard)
        for panel in graph_panels(dashboard):
            assert drawn.get(panel["title"]), f"{dashboard['uid']}/{panel['title']} shows no alert"


def test_alerts_of_a_job_follow_the_job_and_model_version_variables():
    for dashboard in load_dashboards():
        for annotation in annotations(dashboard):
            expr = annotation["target"]["expr"]
            if 'category="service_health"' in expr or 'category="model_quality"' in expr:
                assert 'job="$job"' in expr, annotation["name"]
            if 'category="model_quality"' in expr:
                assert 'model_version=~"$model_version"' in expr, annotation["name"]


def test_drift_alerts_shade_their_feature_s_panels_only():
    (dashboard,) = [item for item in load_dashboards() if item["uid"] == "model-monitoring"]
    drawn = annotations_by_panel(dashboard)
    for feature in design_features():
        for panel in graph_panels(dashboard):
            if panel["title"].startswith(f"{feature}: "):
                features = {
                    value
                    for annotation in drawn[panel["title"]]
                    for name, _, value in MATCHER.findall(annotation["target"]["expr"])
                    if name == "feature"
                }
                assert features == {feature}, panel["title"]
    overviews = [panel["title"] for panel in graph_panels(dashboard) if panel["title"].startswith("Feature ")]
    assert overviews
    for title in overviews:  # the per-window panels of every feature at once
        every_feature = {
            value
            for annotation in drawn[title]
            for name, _, value in MATCHER.findall(annotation["target"]["expr"])
            if name == "feature"
        }
        assert every_feature == set(design_features()), title


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_rule_is_shaded_on_the_dashboard_of_its_category(rule):
    labels = {"alertname": rule["alert"], "alertstate": "firing", **rule.get("labels", {})}
    category = labels.get("category", "")
    expected = DASHBOARD_BY_CATEGORY.get(category, INFRASTRUCTURE_DASHBOARD)
    if category in DASHBOARD_BY_CATEGORY:  # the dashboard its message links to is the one that shades it
        assert f"/d/{expected}/" in rule["annotations"]["dashboard_url"], rule["alert"]
    (dashboard,) = [item for item in load_dashboards() if item["uid"] == expected]
    shading = [item["name"] for item in annotations(dashboard) if selects(item["target"]["expr"], labels)]
    assert shading, f"no annotation of {expected} shows {rule['alert']} ({category=})"


def test_firing_alerts_table_on_both_dashboards_lists_the_job_s_alerts_and_every_infrastructure_alert():
    for dashboard in load_dashboards():
        (table,) = [panel for panel in data_panels(dashboard) if panel["title"] == "Firing alerts"]
        (query,) = table["targets"]
        assert table["type"] == "table" and query["instant"] is True and query["format"] == "table"
        assert 'job=~"$job|"' in query["expr"] and 'model_version=~"$model_version|"' in query["expr"]
        assert 'category!~"model_quality|service_health"' in query["expr"]
        assert query["expr"].count('alertstate="firing"') == 2
        assert table["fieldConfig"]["defaults"]["unit"] == "dateTimeAsIso"  # ALERTS_FOR_STATE in ms
        assert dashboard["panels"][1] == table  # first under the Alerts row


def test_infrastructure_alerts_are_every_category_without_an_annotation_of_its_own():
    own = "|".join(sorted(DASHBOARD_BY_CATEGORY))
    for dashboard in load_dashboards():
        for annotation in annotations(dashboard):
            for name, operator, value in MATCHER.findall(annotation["target"]["expr"]):
                if name == "category" and operator == "!~":
                    assert value == own
