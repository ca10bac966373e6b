"""The prediction log at scale (docker compose): Grafana Alloy's config, Loki's config, the Loki datasource
and the Prediction log dashboard, checked without either binary (neither installs here): the files parse,
the labels stay bounded on the service's real log lines, the wiring between the files holds."""

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import MemorySink
from dashboard_queries import REPO_ROOT, data_panels, log_dashboards
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.metrics import ServiceMetrics
from service.prediction_log import PredictionLog
from service.settings import Settings

ALLOY_CONFIG = REPO_ROOT / "alloy" / "config.alloy"
LOKI_CONFIG = REPO_ROOT / "loki" / "loki.yml"
LOKI_DATASOURCE = REPO_ROOT / "grafana" / "provisioning" / "datasources" / "loki.yml"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
STREAM_LABELS = {"model_version", "endpoint", "status"}  # and the static job
ALLOY_TOKEN = re.compile(
    r'\s+|//[^\n]*|"(?:[^"\\]|\\.)*"|`[^`]*`|[A-Za-z_][\w.]*|-?\d+(?:\.\d+)?|[{}\[\](),=]'
)


# -- a small reader of Alloy's configuration syntax --------------------------------------------------------


def alloy_tokens(text: str) -> list[str]:
    """The file's tokens without blanks and comments; anything else is a syntax error."""
    tokens = []
    position = 0
    while position < len(text):
        match = ALLOY_TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"{ALLOY_CONFIG}: unexpected {text[position : position + 20]!r}")
        token = match.group()
        if token.strip() and not token.startswith("//"):
            tokens.append(token)
        position = match.end()
    return tokens


def alloy_blocks(tokens: list[str]) -> dict[str, list[str]]:
    """Top-level blocks `name "label" { ... }` → their tokens; brackets must balance."""
    blocks: dict[str, list[str]] = {}
    index = 0
    while index < len(tokens):
        name, label = tokens[index], tokens[index + 1]
        assert label.startswith('"') and tokens[index + 2] == "{", (name, label)
        depth, start = 0, index + 2
        for end in range(start, len(tokens)):
            depth += {"{": 1, "[": 1, "(": 1, "}": -1, "]": -1, ")": -1}.get(tokens[end], 0)
            if depth == 0:
                break
        assert depth == 0, f"{name} {label}: brackets do not balance"
        blocks[f"{name} {label.strip(chr(34))}"] = tokens[start + 1 : end]
        index = end + 1
    return blocks


def stage_keys(process: list[str], stage: str) -> set[str]:
    """The keys of `stage.NAME { values = { key = ... } }` in a loki.process block."""
    start = process.index(stage)
    body = process[start + 1 :]
    end = body.index("}")  # the inner object closes first
    inner = body[: end + 1]
    # `key = value` pairs; `values = {` / `expressions = {` open the object and are not keys
    return {inner[i - 1].strip('"') for i, token in enumerate(inner) if token == "=" and inner[i + 1] != "{"}


@pytest.fixture(scope="module")
def blocks() -> dict[str, list[str]]:
    return alloy_blocks(alloy_tokens(ALLOY_CONFIG.read_text()))


def test_alloy_config_has_the_pipeline_from_file_to_loki(blocks: dict[str, list[str]]) -> None:
    assert set(blocks) == {
        "local.file_match prediction_log",
        "loki.source.file prediction_log",
        "loki.process prediction_log",
        "loki.write loki",
    }
    assert "local.file_match.prediction_log.targets" in blocks["loki.source.file prediction_log"]
    assert "loki.process.prediction_log.receiver" in blocks["loki.source.file prediction_log"]
    assert "loki.write.loki.receiver" in blocks["loki.process prediction_log"]


def test_stream_labels_are_the_low_cardinality_fields_and_the_job_id_is_structured_metadata(
    blocks: dict[str, list[str]],
) -> None:
    process = blocks["loki.process prediction_log"]
    assert stage_keys(process, "stage.labels") == STREAM_LABELS
    assert stage_keys(process, "stage.structured_metadata") == {"job_id"}
    assert stage_keys(process, "stage.json") == STREAM_LABELS | {"job_id", "timestamp"}
    drop = process[process.index("stage.label_drop") :]
    assert drop[: drop.index("]") + 1] == ["stage.label_drop", "{", "values", "=", "[", '"filename"', "]"]


def test_label_values_stay_bounded_on_the_service_s_real_log_lines(model_dir: Path) -> None:
    """Every kind of request the API takes, good and bad, through the real app: the stream labels Alloy
    would set take a handful of values, and the job id (one per request) is not among them."""
    sink = MemorySink()
    app = create_app(
        Settings(model_dir=model_dir),
        metrics=ServiceMetrics(CollectorRegistry()),
        prediction_log=PredictionLog(sink),
    )
    row = [5.1, 3.5, 1.4, 0.2]
    bodies = [
        {"data": [row]},
        {"data": [row] * 3},
        {"data": [[1, 2, 3]]},
        {"data": "x"},
        {},
        {"data": [[1e308] * 4]},
    ]
    with TestClient(app) as client:
        for endpoint in ("/predict", "/predict/label", "/predict/batch", "/predict/nothing-here"):
            for body in bodies:
                client.post(endpoint, json=body)
            client.post(endpoint, content=b"not json", headers={"content-type": "application/json"})
            client.post(endpoint, content=b"{}", headers={"content-type": "text/plain"})
            client.post(endpoint, content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    records = [json.loads(line) for line in sink.lines()]
    streams = {tuple(str(record[label]) for label in sorted(STREAM_LABELS)) for record in records}
    endpoints = {record["endpoint"] for record in records}
    statuses = {record["status"] for record in records}
    assert endpoints == {"/predict", "/predict/label", "/predict/batch"}  # unknown paths write no line
    assert statuses <= {200, 413, 415, 422}
    assert len(streams) <= len(endpoints) * 4  # one model version
    assert len({record["job_id"] for record in records}) == len(records)  # hence metadata, not a label


def test_loki_keeps_structured_metadata_and_refuses_more_labels_than_the_streams_have() -> None:
    config = yaml.safe_load(LOKI_CONFIG.read_text())
    (schema,) = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")  # structured metadata needs both
    limits = config["limits_config"]
    assert limits["allow_structured_metadata"] is True
    # job, service_name (Loki adds it from job) and Alloy's stream labels, and one to spare
    assert limits["max_label_names_per_series"] == len(STREAM_LABELS) + 2 + 1


def test_alloy_pushes_to_the_loki_of_compose_and_reads_the_file_the_api_writes(blocks) -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    port = yaml.safe_load(LOKI_CONFIG.read_text())["server"]["http_listen_port"]
    write = blocks["loki.write loki"]
    assert write[write.index("url") + 2] == f'"http://loki:{port}/loki/api/v1/push"'
    match = blocks["local.file_match prediction_log"]
    path = match[match.index('"__path__"') + 2].strip('"')
    assert services["api"]["environment"]["SERVICE_LOG_FILE"] == path
    log_volume = next(
        volume for volume in services["api"]["volumes"] if volume.endswith(str(Path(path).parent))
    )
    assert f"{log_volume}:ro" in services["alloy"]["volumes"]
    assert services["loki"]["volumes"][0].startswith("./loki/loki.yml:")


def test_loki_and_alloy_images_are_pinned() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name in ("loki", "alloy"):
        image, tag = services[name]["image"].rsplit(":", 1)
        assert image == f"grafana/{name}" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), services[name]["image"]


def test_loki_datasource_is_provisioned_with_a_pinned_uid() -> None:
    (datasource,) = yaml.safe_load(LOKI_DATASOURCE.read_text())["datasources"]
    assert (datasource["type"], datasource["uid"], datasource["url"]) == ("loki", "loki", "http://loki:3100")
    assert not datasource.get("isDefault", False)


# -- the Prediction log dashboard --------------------------------------------------------------------------


def log_queries() -> dict[str, str]:
    (dashboard,) = log_dashboards()
    return {panel["title"]: target["expr"] for panel in data_panels(dashboard) for target in panel["targets"]}


def test_prediction_log_dashboard_searches_by_job_id_outliers_and_rejections_by_reason() -> None:
    (dashboard,) = log_dashboards()
    assert (dashboard["uid"], dashboard["title"]) == ("prediction-log", "Prediction log")
    queries = log_queries()
    assert queries["Request by job id"] == '{job="prediction-service"} | job_id = "$job_id"'
    assert "sum by (reason)" in queries["Rejections by reason"]
    assert '| json reason="error.reason"' in queries["Rejections by reason"]
    assert [variable["name"] for variable in dashboard["templating"]["list"]] == ["model_version", "job_id"]
    assert dashboard["templating"]["list"][0]["datasource"] == {"type": "loki", "uid": "loki"}


def test_log_queries_select_streams_by_alloy_s_labels_only() -> None:
    for title, expr in log_queries().items():
        for selector in re.findall(
            r"\{([^}]*)\}", expr.split("|")[0] if "count_over_time" not in expr else expr
        ):
            if "{{" in selector:
                continue
            labels = {
                match.split("=")[0].rstrip("!~ ") for match in re.findall(r'(\w+\s*[!=]~?)\s*"', selector)
            }
            assert labels <= STREAM_LABELS | {"job"}, (title, labels)


def test_outlier_line_filter_matches_exactly_the_lines_with_a_flagged_row() -> None:
    expr = log_queries()["Outlier rows"]
    pattern = re.compile(re.search(r"\|~ `([^`]*)`", expr)[1])  # LogQL regexes are RE2; this one is plain
    flagged = (
        '{"status":200,"label":["setosa","virginica"],"is_outlier":[false,true],"outlier_score":[0.1,-1.2]}'
    )
    normal = '{"status":200,"label":["setosa"],"is_outlier":[false],"outlier_score":[0.2],"note":"true"}'
    assert pattern.search(flagged) and not pattern.search(normal)
