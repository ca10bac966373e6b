"""Generate the Grafana dashboards of the prediction service into grafana/dashboards/.

The JSON files are generated: change this script and rerun it, never edit the JSON (or save the dashboard
in the UI: provisioned dashboards cannot be saved). Every panel is built by `panel()`, so each one has a
title, a description, a unit and the provisioned datasource; tests/test_grafana_dashboards.py holds the
JSON to those rules and to the names in docs/design.md.

Queries use the recording rules where one exists, so the dashboards show the very numbers the alerts
judge; raw counters and histogram buckets appear only inside rate()/increase().

Alerts appear from Prometheus' series ALERTS, chosen by label and never by alert name (docs/design.md), so
a new alert needs no change here: dashboard annotations shade, on the panels of the numbers an alert
watches, the time from when it fired to when it resolved, and a table on each dashboard lists the alerts
firing now.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# The datasource of grafana/provisioning/datasources/prometheus.yml, referenced by its pinned uid.
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# The datasource of grafana/provisioning/datasources/loki.yml (docker compose: the prediction log in Loki).
LOKI = {"type": "loki", "uid": "loki"}
SCHEMA_VERSION = 39
TAGS = ["prediction-monitoring"]
GRID_WIDTH = 24

# The model's features (docs/design.md).
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
QUANTILES = (0.5, 0.9, 0.99)

# Lines drawn on the panels: the thresholds of the alerts in prometheus/rules/ (the tests hold each panel's
# lines to the numbers in its alert's rules). The model-quality ones are prometheus/generate_rules.py's.
ERROR_RATIO_THRESHOLD = 0.05  # PredictionErrorRateHigh
LATENCY_P99_THRESHOLD_SECONDS = 0.25  # PredictionLatencyHigh
WINDOWS = ("2m", "15m", "1h", "6h")  # every model-quality record exists once per window (name suffix)
OUTLIER_RATIO_THRESHOLD = 0.2  # ModelOutlierRatioHigh: the size of a problem worth a page
FEATURE_MEAN_TOLERANCE = 0.05  # ModelInputFeatureMeanDrift
CHI2_DISTANCE_THRESHOLD = 0.1  # ModelInputFeatureDistributionDrift, on the bias-corrected distance
CHI2_SIZE_Z = 2  # ModelInputFeatureDistributionDrift: the margin above that size, in standard errors
CLASS_SHARE_TOLERANCE = 0.1  # ModelPredictedClassShareDrift
EVIDENCE_Z = 5  # every model-quality alert: the evidence, in standard errors
OUTLIER_TRAINING_EVIDENCE_Z = 10  # ModelOutlierRatioHigh: a share above 20% this far from q needs no margin
MIN_PREDICTIONS = 30  # fewest predictions a window's verdict rests on
# the distribution's verdict needs 10 expected values in the feature's smallest training bucket: n >= 300 for
# petal_width (3.3%), about 150 for the others (no line of its own: it differs per feature)

# Model-quality record names (docs/design.md); those of a window end in it.
PREDICTIONS = "job_model_version:model_predictions:increase"
OUTLIER_RATIO = "job_model_version:model_outliers:ratio_rate"
OUTLIER_EXCESS_Z = "job_model_version:model_outliers:ratio_excess_zscore"
OUTLIER_TRAINING_Z = "job_model_version:model_outliers:ratio_training_zscore"
TRAINING_OUTLIER_RATIO = "job_model_version:model_training_outlier_ratio:max"
MEAN = "job_model_version_feature:model_input_feature_value:mean"
TRAINING_MEAN = "job_model_version_feature:model_feature_training_mean:max"
MEAN_DEVIATION = "job_model_version_feature:model_input_feature_value:mean_deviation_ratio"
MEAN_Z = "job_model_version_feature:model_input_feature_value:mean_deviation_zscore"
CHI2_EXCESS = "job_model_version_feature:model_input_feature_value:chisq_distance_excess"
CHI2_Z = "job_model_version_feature:model_input_feature_value:chisq_zscore"
CHI2_EXCESS_Z = "job_model_version_feature:model_input_feature_value:chisq_distance_excess_zscore"
LABEL_RATIO = "job_model_version_predicted_label:model_predictions:ratio_rate"
TRAINING_LABEL_RATIO = "job_model_version_predicted_label:model_training_predicted_label_ratio:max"
LABEL_Z = "job_model_version_predicted_label:model_predictions:ratio_deviation_zscore"
HOST_CPU_THRESHOLD = 0.9  # HostCpuSaturated
HOST_MEMORY_THRESHOLD = 0.9  # HostOutOfMemory
LOG_DISK_FREE_THRESHOLD = 0.25  # PredictionLogDiskFillingUp
YOUNG_WORKER_EXITS_THRESHOLD = 3  # ServiceWorkersCrashLooping (exits within 60 s of the start, in 10m)
IN_FLIGHT_PER_WORKER_THRESHOLD = 1  # ServiceRequestsQueueing

# Alerts by label (the categories of prometheus/rules/): the service's own two, and every other one
# (infrastructure: exporters, host), which the Prediction service dashboard shows whatever its job.
FIRING = 'alertstate="firing"'
SERVICE_HEALTH = 'category="service_health"'
MODEL_QUALITY = 'category="model_quality"'
OTHER_CATEGORIES = 'category!~"model_quality|service_health"'
# Prometheus' rule evaluation interval: the finest step at which ALERTS changes.
EVALUATION_INTERVAL = "10s"

# Label matchers for the template variables. Multi-value and "All" variables need `=~`; recording rules
# are aggregated by job and have no instance label, so they are filtered on job (and model_version) only.
JOB = 'job="$job"'
PROBE_JOB = 'job="$job-probe"'  # the blackbox probes of the service (prometheus/prometheus.yml)
NODE_JOB = 'job="node"'
INSTANCE = 'instance=~"$instance"'
MODEL_VERSION = 'model_version=~"$model_version"'


def selector(metric: str, *matchers: str) -> str:
    return metric + "{" + ", ".join(matchers) + "}"


def thresholds(base_color: str, *steps: tuple[float, str]) -> dict:
    """Absolute thresholds: `base_color` below the first step, then each step's color from its value on."""
    return {
        "mode": "absolute",
        "steps": [{"color": base_color, "value": None}]
        + [{"color": color, "value": value} for value, color in steps],
    }


def target(expr: str, legend: str = "__auto", *, fmt: str = "time_series", instant: bool = False) -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[dict],
    *,
    width: int = 12,
    height: int = 8,
    defaults: dict | None = None,
    overrides: list[dict] | None = None,
    options: dict | None = None,
    transformations: list[dict] | None = None,
    datasource: dict = DATASOURCE,
) -> dict:
    """The one constructor of data panels; `layout()` fills in ids and positions."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource,
        "gridPos": {"h": height, "w": width},
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": overrides or []},
        "options": options or {},
        "targets": [{**query, "refId": chr(ord("A") + index)} for index, query in enumerate(targets)],
        "transformations": transformations or [],
    }


def status_stat(
    title: str, description: str, query: dict, texts: tuple[str, str], no_value: str, *, width: int
) -> dict:
    """A stat panel of a 0/1 series per instance or endpoint: red texts[0] for 0, green texts[1] for 1."""
    return panel(
        "stat",
        title,
        description,
        "none",
        [query],
        width=width,
        defaults={
            "mappings": [
                {
                    "type": "value",
                    "options": {
                        "0": {"text": texts[0], "color": "red", "index": 0},
                        "1": {"text": texts[1], "color": "green", "index": 1},
                    },
                }
            ],
            "thresholds": thresholds("red", (1, "green")),
            "noValue": no_value,
        },
        options={
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        },
    )


def row(title: str) -> dict:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"h": 1, "w": GRID_WIDTH},
    }


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: list[dict],
    *,
    width: int = 12,
    threshold_steps: dict | None = None,
    thresholds_style: str = "off",
    min_value: float | None = None,
    max_value: float | None = None,
    axis_label: str = "",
    log_scale: bool = False,
    overrides: list[dict] | None = None,
) -> dict:
    defaults: dict = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "axisLabel": axis_label,
            "drawStyle": "line",
            "fillOpacity": 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": thresholds_style},
            "scaleDistribution": {"type": "log", "log": 10} if log_scale else {"type": "linear"},
        },
        "thresholds": threshold_steps or thresholds("green"),
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    options = {
        "legend": {
            "calcs": ["lastNotNull", "max"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        unit,
        targets,
        width=width,
        defaults=defaults,
        overrides=overrides,
        options=options,
    )


def bucket_heatmap(title: str, description: str, bucket_selector: str, *, y_unit: str, y_label: str) -> dict:
    """Observations per histogram bucket and time step; the cells count observations, the y axis is `le`."""
    expr = f"sum by (le) (increase({bucket_selector}[$__rate_interval]))"
    options = {
        "calculate": False,
        "cellGap": 1,
        "cellValues": {"unit": "short"},
        "color": {
            "mode": "scheme",
            "scheme": "Oranges",
            "scale": "exponential",
            "exponent": 0.5,
            "steps": 64,
        },
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "show": True, "yHistogram": True},
        "yAxis": {"axisLabel": y_label, "axisPlacement": "left", "unit": y_unit},
    }
    return panel(
        "heatmap", title, description, "short", [target(expr, "{{le}}", fmt="heatmap")], options=options
    )


def dashed(ref_id: str, color: str) -> dict:
    """Field override: draw the series of query `ref_id` as a dashed line of a fixed color."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref_id},
        "properties": [
            {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "color", "value": {"fixedColor": color, "mode": "fixed"}},
        ],
    }


def query_variable(
    name: str,
    label: str,
    description: str,
    query: str,
    *,
    default: str = "",
    include_all: bool = False,
    multi: bool = False,
) -> dict:
    if include_all:
        current = {
            "selected": True,
            "text": ["All"] if multi else "All",
            "value": ["$__all"] if multi else "$__all",
        }
    else:
        current = {"selected": True, "text": default, "value": default}
    variable = {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "current": current,
        "includeAll": include_all,
        "multi": multi,
        "options": [],
        "refresh": 2,  # on time range change: a new instance or model version shows up by itself
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }
    if include_all:
        variable["allValue"] = ".*"  # a regex, so "All" also covers values that appear later
    return variable


VARIABLES = [
    query_variable(
        "job",
        "Job",
        "Prometheus scrape job of the prediction service.",
        "label_values(up, job)",
        default="prediction-service",
    ),
    query_variable(
        "instance",
        "Instance",
        "Scraped instances of the job (the recording rules sum over them).",
        'label_values(up{job="$job"}, instance)',
        include_all=True,
        multi=True,
    ),
    query_variable(
        "model_version",
        "Model version",
        "Version of the loaded model (from model_info).",
        'label_values(model_info{job="$job"}, model_version)',
        include_all=True,
    ),
]


def alert_annotation(
    name: str, matchers: list[str], text: str, color: str, panel_titles: tuple[str, ...]
) -> dict:
    """Shade the firing time of the alerts that `matchers` select on the panels named `panel_titles`.

    Grafana runs the query over the dashboard's range and joins the samples of each series that are at most
    a step apart into one region: from the first evaluation that found the alert firing to the last. The
    titles become panel ids in `dashboard()`. `text` may use only labels every selected alert has (Grafana
    prints the label's name for a missing one)."""
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "target": {
            "expr": selector("ALERTS", FIRING, *matchers),
            "interval": EVALUATION_INTERVAL,
            "range": True,
            "instant": False,
            "refId": "Anno",
        },
        "titleFormat": "{{alertname}}",
        "textFormat": text,
        "tagKeys": "severity,feature,predicted_label",
        "useValueForTime": False,
        "filter": {"exclude": False, "ids": list(panel_titles)},
    }


def firing_alerts_table() -> dict:
    """The alerts firing now for the selected job and model version, and every infrastructure alert, with
    the time each became active (pending) from ALERTS_FOR_STATE, whose value is that Unix time."""
    own = selector("ALERTS", FIRING, 'job=~"$job|"', 'model_version=~"$model_version|"')
    other = selector("ALERTS", FIRING, OTHER_CATEGORIES)
    expr = f"1000 * (ALERTS_FOR_STATE and ignoring (alertstate) ({own} or {other}))"  # milliseconds
    return panel(
        "table",
        "Firing alerts",
        "Alerts firing now in Prometheus (series ALERTS) for the selected job and model version, and "
        "every infrastructure alert; Active since is when the alert's condition first held (the start of "
        "its pending time, series ALERTS_FOR_STATE). Each alert's runbook_url leads to its section of "
        "docs/runbook.md; Alerting → Alert rules in Grafana shows them all.",
        "dateTimeAsIso",
        [target(expr, fmt="table", instant=True)],
        width=GRID_WIDTH,
        height=6,
        defaults={"noValue": "No alert is firing"},
        options={
            "cellHeight": "sm",
            "footer": {"show": False},
            "showHeader": True,
            "sortBy": [{"displayName": "severity", "desc": False}],
        },
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "alertstate": True},
                    "renameByName": {"Value": "Active since"},
                },
            }
        ],
    )


def layout(panels: list[dict]) -> list[dict]:
    """Number the panels in order and place them left to right, wrapping at the grid width."""
    placed = []
    x = y = line_height = 0
    for panel_id, item in enumerate(panels, start=1):
        height, width = item["gridPos"]["h"], item["gridPos"]["w"]
        if x + width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        placed.append({"id": panel_id, **item, "gridPos": {"h": height, "w": width, "x": x, "y": y}})
        x += width
        line_height = max(line_height, height)
    return placed


def with_panel_ids(annotation: dict, placed: list[dict]) -> dict:
    ids_by_title = {item["title"]: item["id"] for item in placed}
    titles = annotation["filter"]["ids"]
    missing = [title for title in titles if title not in ids_by_title]
    if missing:
        raise ValueError(f"annotation {annotation['name']!r} names no panel {missing}")
    return {
        **annotation,
        "filter": {**annotation["filter"], "ids": [ids_by_title[title] for title in titles]},
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict],
    annotations: list[dict],
    variables: list[dict] = VARIABLES,
) -> dict:
    placed = layout(panels)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [
            {
                "title": "Prediction monitoring",
                "type": "dashboards",
                "tags": TAGS,
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {"list": [with_panel_ids(annotation, placed) for annotation in annotations]},
        "templating": {"list": variables},
        "panels": placed,
    }


def prediction_service() -> dict:
    http_buckets = selector("http_request_duration_seconds_bucket", JOB, INSTANCE, 'handler=~"/predict.*"')
    inference_buckets = selector("model_inference_duration_seconds_bucket", JOB, INSTANCE, MODEL_VERSION)
    inference_rate_by_stage = f"sum by (le, stage) (rate({inference_buckets}[$__rate_interval]))"
    panels = [
        row("Alerts"),
        firing_alerts_table(),
        row("Traffic and errors"),
        status_stat(
            "Instances up",
            "Whether Prometheus' last scrape of each instance succeeded (metric up). DOWN for a minute fires "
            "PredictionServiceDown.",
            target(selector("up", JOB, INSTANCE), "{{instance}}"),
            ("DOWN", "UP"),
            "no target",
            width=6,
        ),
        timeseries(
            "Request rate by handler and status",
            "Requests answered per second over 5 minutes, by route template and status code (recording rule "
            'job_handler_status:http_requests:rate5m). Unknown paths are handler="other".',
            "reqps",
            [target(selector("job_handler_status:http_requests:rate5m", JOB), "{{handler}} {{status}}")],
            width=9,
            min_value=0,
        ),
        timeseries(
            "Error ratio",
            "Share of requests answered with a 5xx status over 5 minutes (recording rule "
            f"job:http_requests:error_ratio_rate5m). The line is the {ERROR_RATIO_THRESHOLD:.0%} threshold "
            "of PredictionErrorRateHigh.",
            "percentunit",
            [target(selector("job:http_requests:error_ratio_rate5m", JOB), "5xx share")],
            width=9,
            threshold_steps=thresholds("green", (ERROR_RATIO_THRESHOLD, "red")),
            thresholds_style="line",
            min_value=0,
        ),
        row("Latency"),
        timeseries(
            "Request latency p50 / p90 / p99",
            "Quantiles of the time to answer a request, by route template, over 5 minutes (recording rule "
            "job_handler:http_request_duration_seconds:histogram_quantile_rate5m). The line is the "
            f"{LATENCY_P99_THRESHOLD_SECONDS * 1000:.0f} ms threshold of PredictionLatencyHigh, which judges "
            "the p99 of the /predict* handlers.",
            "s",
            [
                target(
                    selector("job_handler:http_request_duration_seconds:histogram_quantile_rate5m", JOB),
                    "{{handler}} q{{quantile}}",
                )
            ],
            threshold_steps=thresholds("green", (LATENCY_P99_THRESHOLD_SECONDS, "red")),
            thresholds_style="line",
            min_value=0,
        ),
        bucket_heatmap(
            "Prediction request latency distribution",
            "Prediction requests (handlers /predict*) per latency bucket of http_request_duration_seconds: "
            "where the bulk of the requests lies and how long the tail is. Darker cells hold more requests.",
            http_buckets,
            y_unit="s",
            y_label="latency",
        ),
        timeseries(
            "Inference latency by stage",
            "Quantiles of the time spent in each model stage (classifier, outlier detector) per request, "
            "from the model_inference_duration_seconds histogram. The gap to the request latency is the "
            "HTTP, validation and logging overhead.",
            "s",
            [
                target(f"histogram_quantile({q}, {inference_rate_by_stage})", f"{{{{stage}}}} q{q}")
                for q in QUANTILES
            ],
            width=GRID_WIDTH,
            min_value=0,
        ),
    ]
    panels += probe_panels() + machine_and_process_panels()
    graphs = tuple(item["title"] for item in panels if item["type"] in ("timeseries", "heatmap"))
    annotations = [
        alert_annotation(
            "Service health alerts",
            [SERVICE_HEALTH, JOB],
            "{{severity}}: {{alertname}} ({{job}})",
            "red",
            graphs,
        ),
        alert_annotation(
            "Infrastructure alerts",
            [OTHER_CATEGORIES],
            "{{severity}}: {{alertname}}",
            "yellow",
            graphs,
        ),
    ]
    return dashboard(
        "prediction-service",
        "Prediction service",
        "Health of the prediction service: traffic, errors and latency, the service from outside (blackbox "
        "probes), the machine and the worker processes (service_health and infrastructure alerts).",
        panels,
        annotations,
    )


def probe_panels() -> list[dict]:
    return [
        row("Probes from outside"),
        status_stat(
            "Probe results",
            "The last blackbox probe of each endpoint, called as a client would (GET /health, GET /ready, "
            "POST /predict with the sample row, which must answer a prediction). FAIL on /predict for a "
            "minute while up is 1 fires PredictionEndpointProbeFailing; every probe failing fires "
            "PredictionServiceUnreachable.",
            target(selector("probe_success", PROBE_JOB), "{{endpoint}}"),
            ("FAIL", "OK"),
            "no probe",
            width=8,
        ),
        timeseries(
            "Probe duration",
            "Time the blackbox exporter took for each probe, connection to last byte "
            "(probe_duration_seconds); a probe gives up after 5 s.",
            "s",
            [target(selector("probe_duration_seconds", PROBE_JOB), "{{endpoint}}")],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Probe HTTP status",
            "The status code each probe got (probe_http_status_code); 0 is no answer within the timeout.",
            "none",
            [target(selector("probe_http_status_code", PROBE_JOB), "{{endpoint}}")],
            width=8,
            min_value=0,
        ),
    ]


def machine_and_process_panels() -> list[dict]:
    worker = (JOB, INSTANCE)
    young_exits = selector("service_worker_lifetime_seconds_bucket", *worker, 'le="60.0"')
    return [
        row("Machine and processes"),
        timeseries(
            "Host CPU utilisation",
            "Share of the machine's CPU time not idle over 5 minutes (recording rule "
            f"instance:node_cpu_utilisation:rate5m). The line is the {HOST_CPU_THRESHOLD:.0%} threshold of "
            "HostCpuSaturated (for 10 minutes).",
            "percentunit",
            [target(selector("instance:node_cpu_utilisation:rate5m", NODE_JOB), "{{instance}}")],
            width=8,
            threshold_steps=thresholds("green", (HOST_CPU_THRESHOLD, "red")),
            thresholds_style="line",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Host memory utilisation",
            "Share of the machine's memory not available (recording rule instance:node_memory_utilisation:"
            f"ratio). The line is the {HOST_MEMORY_THRESHOLD:.0%} threshold of HostOutOfMemory (5 minutes).",
            "percentunit",
            [target(selector("instance:node_memory_utilisation:ratio", NODE_JOB), "{{instance}}")],
            width=8,
            threshold_steps=thresholds("green", (HOST_MEMORY_THRESHOLD, "red")),
            thresholds_style="line",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Prediction log disk free",
            "Free share of the filesystem holding the prediction log (the service exports its mount point "
            f"in prediction_log_filesystem_info). The line is the {LOG_DISK_FREE_THRESHOLD:.0%} of "
            "PredictionLogDiskFillingUp, which also needs the last hour's trend to reach zero within 4 "
            "hours.",
            "percentunit",
            [
                target(
                    f"{selector('node_filesystem_avail_bytes', NODE_JOB)} / "
                    f"{selector('node_filesystem_size_bytes', NODE_JOB)} "
                    f"and on (mountpoint) {selector('prediction_log_filesystem_info', JOB)}",
                    "{{mountpoint}} ({{device}})",
                )
            ],
            width=8,
            threshold_steps=thresholds("red", (LOG_DISK_FREE_THRESHOLD, "green")),
            thresholds_style="line",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Network traffic",
            "Bytes per second received and sent by the machine's network interfaces, loopback aside.",
            "Bps",
            [
                target(
                    f"rate({selector('node_network_receive_bytes_total', NODE_JOB)}[$__rate_interval])",
                    "{{device}} in",
                ),
                target(
                    f"rate({selector('node_network_transmit_bytes_total', NODE_JOB)}[$__rate_interval])",
                    "{{device}} out",
                ),
            ],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Worker CPU",
            "CPU seconds per second of each gunicorn worker, by slot (service_worker_cpu_seconds_total): "
            "1 is one core. A flat line under load is a stopped or hung worker.",
            "percentunit",
            [
                target(
                    f"rate({selector('service_worker_cpu_seconds_total', *worker)}[$__rate_interval])",
                    "worker {{worker}}",
                )
            ],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Worker resident memory",
            "Resident memory of each worker, by slot (service_worker_resident_memory_bytes): a leak is a "
            "steady climb.",
            "bytes",
            [target(selector("service_worker_resident_memory_bytes", *worker), "worker {{worker}}")],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Worker open file descriptors",
            "Open file descriptors of each worker, by slot (service_worker_open_fds): connections, the "
            "prediction log, metric files.",
            "none",
            [target(selector("service_worker_open_fds", *worker), "worker {{worker}}")],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Worker uptime",
            "Time since each slot's worker started (service_worker_start_time_seconds): a drop to zero is a "
            "restart.",
            "s",
            [
                target(
                    f"time() - {selector('service_worker_start_time_seconds', *worker)}", "worker {{worker}}"
                )
            ],
            width=8,
            min_value=0,
        ),
        timeseries(
            "Worker restarts",
            "Workers that exited in the last 10 minutes, and those of them that had run for less than a "
            f"minute (service_worker_lifetime_seconds). The line is the {YOUNG_WORKER_EXITS_THRESHOLD} young "
            "exits of ServiceWorkersCrashLooping.",
            "none",
            [
                target(
                    f"sum(increase({selector('service_worker_lifetime_seconds_count', *worker)}[10m]))", "all"
                ),
                target(f"sum(increase({young_exits}[10m]))", "within a minute of the start"),
            ],
            width=12,
            threshold_steps=thresholds("green", (YOUNG_WORKER_EXITS_THRESHOLD, "red")),
            thresholds_style="line",
            min_value=0,
        ),
        timeseries(
            "Requests in flight per worker",
            "Requests read and not yet answered, per worker of capacity (http_requests_in_flight / "
            "service_workers; each worker computes one request at a time, and samples its count once a "
            f"second between requests). The line is the {IN_FLIGHT_PER_WORKER_THRESHOLD} of "
            "ServiceRequestsQueueing, which judges the 5-minute average.",
            "none",
            [
                target(
                    f"sum({selector('http_requests_in_flight', *worker)}) / "
                    f"sum({selector('service_workers', *worker)})",
                    "in flight per worker",
                )
            ],
            width=12,
            threshold_steps=thresholds("green", (IN_FLIGHT_PER_WORKER_THRESHOLD, "red")),
            thresholds_style="line",
            min_value=0,
        ),
    ]


def model_selector(record: str, *matchers: str) -> str:
    return selector(record, JOB, MODEL_VERSION, *matchers)


def per_window(record: str, legend: str, *matchers: str) -> list[dict]:
    """One target per window of the record (its name ends in the window), the window in the legend."""
    return [
        target(model_selector(f"{record}{window}", *matchers), f"{legend} {window}") for window in WINDOWS
    ]


def z_lines(*, two_sided: bool) -> dict:
    if two_sided:
        return thresholds("red", (-EVIDENCE_Z, "green"), (EVIDENCE_Z, "red"))
    return thresholds("green", (EVIDENCE_Z, "red"))


EVIDENCE = (
    f"The line is {EVIDENCE_Z} standard errors, the evidence every model-quality alert needs (about one "
    "false page a year, docs/runbook.md); a window pages when both its size and its evidence are past "
    "their lines for 30 s."
)


def feature_panels(feature: str) -> list[dict]:
    """One feature's mean in every window against its training mean and the tolerance band, and its
    values in the training-decile buckets."""
    feature_matcher = f'feature="{feature}"'
    training_mean = model_selector(TRAINING_MEAN, feature_matcher)
    tolerance = f"{FEATURE_MEAN_TOLERANCE:.0%}"
    means = per_window(MEAN, "{{model_version}} mean over", feature_matcher)
    band = len(means) + 1  # the index of the first band target, after the means and the training mean
    return [
        timeseries(
            f"{feature}: mean vs training mean",
            f"Mean input value of {feature} over each window (recording rules "
            f"{MEAN}<window>, window {', '.join(WINDOWS)}) against its mean over the training data. The "
            f"dashed lines are the training mean ±{tolerance}: ModelInputFeatureMeanDrift fires when a "
            "window's mean is outside them with enough evidence (Feature mean evidence). Short windows "
            "move fast and are noisy; long ones are steady and slow.",
            "short",
            [
                *means,
                target(training_mean, "{{model_version}} training mean"),
                target(
                    f"{training_mean} * {1 + FEATURE_MEAN_TOLERANCE:g}",
                    f"{{{{model_version}}}} training mean +{tolerance}",
                ),
                target(
                    f"{training_mean} * {1 - FEATURE_MEAN_TOLERANCE:g}",
                    f"{{{{model_version}}}} training mean -{tolerance}",
                ),
            ],
            axis_label="cm",
            overrides=[dashed(chr(ord("A") + band), "orange"), dashed(chr(ord("A") + band + 1), "orange")],
        ),
        bucket_heatmap(
            f"{feature}: input value distribution",
            f"Input values of {feature} per bucket of model_input_feature_value, whose edges are the "
            "feature's training deciles (metadata.json): without drift every bucket holds about a tenth of "
            "the values. A shifted, widened or split distribution shows drift the mean alone can hide. "
            "Darker cells hold more values.",
            selector("model_input_feature_value_bucket", JOB, INSTANCE, MODEL_VERSION, feature_matcher),
            y_unit="short",
            y_label="cm",
        ),
    ]


def window_panels(title: str, description: str, unit: str, record: str, legend: str, **options) -> list[dict]:
    """One quarter-width panel per window, side by side, so every window reads on its own scale."""
    return [
        timeseries(
            f"{title} over {window}",
            description.replace("WINDOW", window) + f" Recording rule {record}{window}.",
            unit,
            [target(model_selector(f"{record}{window}"), legend)],
            width=GRID_WIDTH // len(WINDOWS),
            **options,
        )
        for window in WINDOWS
    ]


def model_monitoring() -> dict:
    threshold = f"{OUTLIER_RATIO_THRESHOLD:.0%}"
    tolerance = f"{FEATURE_MEAN_TOLERANCE:.0%}"
    panels = [
        row("Alerts"),
        firing_alerts_table(),
        row("Outliers and traffic"),
        *(
            timeseries(
                f"Outlier ratio over {window}",
                f"Share of the last {window}'s predictions that the outlier detector flagged (recording rule "
                f"{OUTLIER_RATIO}{window}) and, dashed, the share it flags in the training data "
                f"({TRAINING_OUTLIER_RATIO}). The line is the {threshold} of ModelOutlierRatioHigh: the size "
                "of a problem worth a page; the alert also needs the evidence (below).",
                "percentunit",
                [
                    target(model_selector(f"{OUTLIER_RATIO}{window}"), "{{model_version}}"),
                    target(model_selector(TRAINING_OUTLIER_RATIO), "{{model_version}} training"),
                ],
                width=GRID_WIDTH // len(WINDOWS),
                threshold_steps=thresholds("green", (OUTLIER_RATIO_THRESHOLD, "red")),
                thresholds_style="line",
                min_value=0,
                overrides=[dashed("B", "text")],
            )
            for window in WINDOWS
        ),
        *window_panels(
            "Outlier evidence",
            f"Standard errors by which the outlier share of the last WINDOW exceeds {threshold}: "
            f"(share - t) / sqrt(t (1 - t) / n) with t = {OUTLIER_RATIO_THRESHOLD:g}, negative while the "
            f"share is below {threshold}. "
            + EVIDENCE
            + " On many predictions the share's distance from training (next panels) can stand in for it.",
            "none",
            OUTLIER_EXCESS_Z,
            "{{model_version}}",
            threshold_steps=z_lines(two_sided=False),
            thresholds_style="line",
        ),
        *window_panels(
            "Outlier share vs training",
            "Standard errors by which the outlier share of the last WINDOW exceeds the training share q: "
            f"(share - q) / sqrt(q (1 - q) / n). The line is {OUTLIER_TRAINING_EVIDENCE_Z}: past it a share "
            f"above {threshold} pages without the margin above (on many predictions, where that margin would "
            f"only delay the page). {OUTLIER_TRAINING_EVIDENCE_Z}, not {EVIDENCE_Z}, because normal traffic "
            "is flagged somewhat more often than the training rows (docs/runbook.md).",
            "none",
            OUTLIER_TRAINING_Z,
            "{{model_version}}",
            threshold_steps=thresholds("green", (OUTLIER_TRAINING_EVIDENCE_Z, "red")),
            thresholds_style="line",
        ),
        timeseries(
            "Predictions per window",
            f"Predictions n in each window (recording rules {PREDICTIONS}<window>; logarithmic axis): what "
            "every verdict rests on. Low traffic gathers its evidence in the long windows. The dashed line "
            f"is the fewest predictions a window's verdict counts with: {MIN_PREDICTIONS} (outliers, mean, "
            "class share); the distribution needs 10 expected values in the feature's smallest training "
            "bucket (about 150-300).",
            "short",
            per_window(PREDICTIONS, "{{model_version}}"),
            threshold_steps=thresholds("red", (MIN_PREDICTIONS, "green")),
            thresholds_style="dashed",
            log_scale=True,
            axis_label="predictions",
        ),
        bucket_heatmap(
            "Outlier score distribution",
            "Outlier detector scores per bucket of model_outlier_score. Rows scoring below the threshold "
            "(0 by default) are outliers; training rows score about -0.4 to 0.6.",
            selector("model_outlier_score_bucket", JOB, INSTANCE, MODEL_VERSION),
            y_unit="short",
            y_label="score",
        ),
        row("Predicted classes"),
        *(
            timeseries(
                f"Predicted class share over {window}",
                f"Share of each predicted class among the last {window}'s predictions (recording rule "
                f"{LABEL_RATIO}{window}) and, dashed, its share in the training data "
                f"({TRAINING_LABEL_RATIO}). ModelPredictedClassShareDrift fires when a class is more than "
                f"{CLASS_SHARE_TOLERANCE:g} (10 percentage points) off its training share with enough "
                "evidence (below).",
                "percentunit",
                [
                    target(model_selector(f"{LABEL_RATIO}{window}"), "{{model_version}} {{predicted_label}}"),
                    target(
                        model_selector(TRAINING_LABEL_RATIO), "{{model_version}} {{predicted_label}} training"
                    ),
                ],
                width=GRID_WIDTH // len(WINDOWS),
                min_value=0,
                max_value=1,
                overrides=[dashed("B", "text")],
            )
            for window in WINDOWS
        ),
        *window_panels(
            "Predicted class share evidence",
            "Standard errors of each class's share in the last WINDOW from its training share q: "
            "(share - q) / sqrt(q (1 - q) / n). " + EVIDENCE,
            "none",
            LABEL_Z,
            "{{model_version}} {{predicted_label}}",
            threshold_steps=z_lines(two_sided=True),
            thresholds_style="line",
        ),
        row("Input drift: means"),
        *window_panels(
            "Feature mean deviation",
            "(mean over the last WINDOW − training mean) / training mean, per feature, signed. The lines are "
            f"the ±{tolerance} of ModelInputFeatureMeanDrift: the size of a drift worth a page.",
            "percentunit",
            MEAN_DEVIATION,
            "{{model_version}} {{feature}}",
            threshold_steps=thresholds(
                "red", (-FEATURE_MEAN_TOLERANCE, "green"), (FEATURE_MEAN_TOLERANCE, "red")
            ),
            thresholds_style="line",
        ),
        *window_panels(
            "Feature mean evidence",
            "Standard errors of each feature's mean over the last WINDOW from its training mean: "
            "(mean - training mean) × sqrt(n) / s, s the larger of the training and the served standard "
            "deviation (wider inputs make the mean noisier). " + EVIDENCE,
            "none",
            MEAN_Z,
            "{{model_version}} {{feature}}",
            threshold_steps=z_lines(two_sided=True),
            thresholds_style="line",
        ),
        row("Input drift: distributions"),
        *window_panels(
            "Feature distribution distance",
            "Chi-square distance of each feature's values over the last WINDOW from its training shares "
            "in the training-decile buckets, sum of (share - training share)² / training share, less the "
            "value it has without drift on so few values, (buckets - 1)(1/n + 1/N). The line is the "
            f"{CHI2_DISTANCE_THRESHOLD:g} of ModelInputFeatureDistributionDrift (PSI's moderate shift).",
            "none",
            CHI2_EXCESS,
            "{{model_version}} {{feature}}",
            threshold_steps=thresholds("green", (CHI2_DISTANCE_THRESHOLD, "red")),
            thresholds_style="line",
        ),
        *window_panels(
            "Feature distribution evidence",
            "Pearson's chi-square statistic n × distance of each feature over the last WINDOW as standard "
            "errors from no drift (Wilson-Hilferty transform). " + EVIDENCE,
            "none",
            CHI2_Z,
            "{{model_version}} {{feature}}",
            threshold_steps=z_lines(two_sided=False),
            thresholds_style="line",
        ),
        *window_panels(
            "Feature distribution excess",
            "Standard errors by which each feature's distribution distance over the last WINDOW (less its "
            f"no-drift bias) exceeds the {CHI2_DISTANCE_THRESHOLD:g} of ModelInputFeatureDistributionDrift. "
            f"The line is the {CHI2_SIZE_Z} standard errors the alert needs besides its evidence: the margin "
            "that keeps a distance below the size from paging on one noisy window (docs/runbook.md).",
            "none",
            CHI2_EXCESS_Z,
            "{{model_version}} {{feature}}",
            threshold_steps=thresholds("green", (CHI2_SIZE_Z, "red")),
            thresholds_style="line",
        ),
        row("Input values by feature"),
        *(item for feature in FEATURES for item in feature_panels(feature)),
    ]
    graphs = [item["title"] for item in panels if item["type"] in ("timeseries", "heatmap")]
    model_scope = [MODEL_QUALITY, JOB, MODEL_VERSION]
    annotations = [
        alert_annotation(
            "Model quality alerts",
            [*model_scope, 'feature=""', 'predicted_label=""'],
            "{{severity}}: {{alertname}}, model {{model_version}} ({{job}})",
            "orange",
            tuple(title for title in graphs if title.startswith(("Outlier ", "Predictions "))),
        ),
        alert_annotation(
            "Class share alerts",
            [*model_scope, 'predicted_label=~".+"'],
            "{{severity}}: {{alertname}} of {{predicted_label}}, model {{model_version}} ({{job}})",
            "blue",
            tuple(title for title in graphs if title.startswith("Predicted class share")),
        ),
        *(
            alert_annotation(
                f"Drift alerts: {feature}",
                [*model_scope, f'feature="{feature}"'],
                "{{severity}}: {{alertname}} of {{feature}}, model {{model_version}} ({{job}})",
                "purple",
                tuple(title for title in graphs if title.startswith(("Feature ", f"{feature}: "))),
            )
            for feature in FEATURES
        ),
    ]
    return dashboard(
        "model-monitoring",
        "Model monitoring",
        "Quality of the model's predictions and drift of its inputs in every window of the model-quality "
        "alerts (2m, 15m, 1h, 6h): the size of each problem, the evidence for it, and the predictions it "
        "rests on.",
        panels,
        annotations,
    )


# -- the prediction log in Loki (docker compose: Grafana Alloy ships it, alloy/config.alloy) --------------

# Alloy's stream labels: low-cardinality only. The job id is structured metadata, filtered after the `|`.
LOG_STREAM = '{job="prediction-service", model_version=~"$model_version"'
LOG_VARIABLES = [
    {
        **query_variable(
            "model_version",
            "Model version",
            "Model version label of the prediction log's streams.",
            'label_values({job="prediction-service"}, model_version)',
            include_all=True,
        ),
        "datasource": LOKI,
    },
    {
        "type": "textbox",
        "name": "job_id",
        "label": "Job id",
        "description": "A job id (the API's job_id, X-Request-ID), for the panel Request by job id.",
        "query": "",
        "current": {"selected": False, "text": "", "value": ""},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    },
]


def loki_target(expr: str, legend: str = "") -> dict:
    return {
        "datasource": LOKI,
        "editorMode": "code",
        "expr": expr,
        "queryType": "range",
        "legendFormat": legend,
    }


def log_lines(title: str, description: str, expr: str, *, width: int = 24) -> dict:
    return panel(
        "logs",
        title,
        description,
        "none",
        [loki_target(expr)],
        width=width,
        height=10,
        options={
            "showTime": True,
            "wrapLogMessage": True,
            "sortOrder": "Descending",
            "enableLogDetails": True,
        },
        datasource=LOKI,
    )


def log_counts(title: str, description: str, expr: str, legend: str) -> dict:
    return panel(
        "timeseries",
        title,
        description,
        "short",
        [loki_target(expr, legend)],
        defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}}},
        datasource=LOKI,
    )


def prediction_log() -> dict:
    panels = [
        log_lines(
            "Request by job id",
            "The log line of the request whose job id is typed in the Job id box (the job_id of the API's "
            "answer, or the X-Request-ID the client sent): its input, prediction, outlier verdict, or the "
            "reason it was rejected. Matched on structured metadata: no stream per request.",
            '{job="prediction-service"} | job_id = "$job_id"',
        ),
        log_lines(
            "Outlier rows",
            "Answered requests with at least one row the outlier detector flagged (is_outlier true): what "
            "ModelOutlierRatioHigh counts. The same rows from the files: python -m service logs outliers.",
            LOG_STREAM + ', status="200"} |~ `"is_outlier":\\[[^\\]]*true`',
            width=12,
        ),
        log_lines(
            "Rejected requests",
            "Requests refused because of their input (status 413, 415 or 422), with the reason and the body "
            "as received (cut to 2,048 characters).",
            LOG_STREAM + ', status!="200"}',
            width=12,
        ),
        log_counts(
            "Rejections by reason",
            "Rejected requests per interval by reason (error.reason of the line); the metric "
            "model_invalid_requests_total counts the same.",
            "sum by (reason) (count_over_time("
            + LOG_STREAM
            + ', status!="200"} | json reason="error.reason" '
            "[$__interval]))",
            "{{reason}}",
        ),
        log_counts(
            "Log lines by status",
            "Log lines per interval by HTTP status: 200 answered, 413/415/422 rejected. Every prediction "
            "request writes one line, answered or not.",
            "sum by (status) (count_over_time(" + LOG_STREAM + "}[$__interval]))",
            "{{status}}",
        ),
    ]
    return dashboard(
        "prediction-log",
        "Prediction log",
        "The prediction log in Loki (docker compose, shipped by Grafana Alloy): a request by its job id, the "
        "outlier rows, rejections by reason.",
        panels,
        [],
        LOG_VARIABLES,
    )


DASHBOARDS = {
    "prediction-service.json": prediction_service,
    "model-monitoring.json": model_monitoring,
    "prediction-log.json": prediction_log,
}


def render(build: Callable[[], dict]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a dashboard file is out of date"
    )
    args = parser.parse_args(argv)

    stale = []
    for file_name, build in DASHBOARDS.items():
        path = DASHBOARD_DIR / file_name
        text = render(build)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        for path in stale:
            print(f"{path} is out of date: run python grafana/generate_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
