"""No secret in the repository, secrets only from files or the environment, safe limits, safe request ids.

The scan covers every file git tracks or would add (`git ls-files --cached --others --exclude-standard`),
so a secret is caught before its first commit. Each scanner is also shown to catch a planted secret.
"""

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.metrics import ServiceMetrics
from service.prediction_log import PredictionLog
from service.settings import Settings
from stack.processes import free_port
from stack.service_process import service_env, start_service

REPO_ROOT = Path(__file__).resolve().parents[1]

# Literal secrets, wherever they appear.
SECRET_PATTERNS = {
    "Slack webhook URL": re.compile(
        r"hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]+/[A-Za-z0-9/]+"
    ),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@[\w.-]+"),
}
# In configuration files, a key that names a secret must hold a file path (key ending in _file) or an
# environment interpolation, never the value itself.
SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|api_url|webhook", re.IGNORECASE)
ENVIRONMENT_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")
CONFIG_SUFFIXES = {".yml", ".yaml", ".json"}
# Dockerfile and shell: NAME=value where NAME names a secret and value is not a $reference.
# Placeholders in documentation (`...`, `…`, `<password>`) are not values.
ASSIGNED_SECRET = re.compile(
    r"\b[A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|WEBHOOK_URL)[A-Z0-9_]*=(?![\"']?(?:\$|\.\.\.|…|<))"
    r"[\"']?[^\s\"'$]+"
)


def repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO_ROOT / name for name in listed.split("\0") if name and (REPO_ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def literal_secrets(text: str) -> list[str]:
    return [
        f"{name}: {match.group(0)[:40]}"
        for name, pattern in SECRET_PATTERNS.items()
        for match in pattern.finditer(text)
    ]


def secret_values_in_config(document: Any, where: str = "") -> Iterator[str]:
    """Paths of keys that name a secret and hold a literal string value."""
    if isinstance(document, dict):
        for key, value in document.items():
            path = f"{where}.{key}"
            if (
                isinstance(key, str)
                and isinstance(value, str)
                and SECRET_KEY.search(key)
                and not key.lower().endswith("_file")
                and value.strip()
                and not ENVIRONMENT_INTERPOLATION.fullmatch(value.strip())
            ):
                yield path
            yield from secret_values_in_config(value, path)
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from secret_values_in_config(item, f"{where}[{index}]")


def load_config(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    return list(yaml.safe_load_all(text))


def assigned_secrets(text: str) -> list[str]:
    return [match.group(0) for match in ASSIGNED_SECRET.finditer(text)]


# --- the scanners catch what they are for ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "url: https://hooks.slack.com/services/T0123ABCD/B0123ABCD/abcdefghijklmnopqrstuvwx",
        "token = 'xoxb-1234567890-abcdefghij'",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "url: https://admin:hunter2@grafana.example.com/api",
    ],
)
def test_literal_secret_scanner_catches_a_planted_secret(text: str) -> None:
    assert literal_secrets(text)


@pytest.mark.parametrize(
    "config",
    [
        {"global": {"slack_api_url": "https://hooks.slack.com/services/T0/B0/X"}},
        {"receivers": [{"slack_configs": [{"api_url": "https://example.com/hook"}]}]},
        {"services": {"grafana": {"environment": {"GF_SECURITY_ADMIN_PASSWORD": "admin"}}}},
        {"datasources": [{"secureJsonData": {"basicAuthPassword": "s3cret"}}]},
        {"datasources": [{"basic_auth": {"password": "s3cret"}}]},
    ],
)
def test_config_scanner_catches_a_literal_secret_value(config: dict) -> None:
    assert list(secret_values_in_config(config))


@pytest.mark.parametrize(
    "config",
    [
        {"global": {"slack_api_url_file": "/etc/alertmanager/secrets/slack_webhook_url"}},
        {
            "environment": {
                "GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"
            }
        },
        {"secrets": {"slack_webhook_url": {"file": "./secrets/slack_webhook_url"}}},
    ],
)
def test_config_scanner_accepts_files_and_environment_interpolation(config: dict) -> None:
    assert list(secret_values_in_config(config)) == []


def test_assignment_scanner_catches_a_literal_and_accepts_a_reference() -> None:
    assert assigned_secrets("ENV GF_SECURITY_ADMIN_PASSWORD=admin")
    assert assigned_secrets("export SLACK_WEBHOOK_URL=https://example.com/x")
    assert assigned_secrets('GRAFANA_ADMIN_PASSWORD="$PASSWORD" docker compose up') == []
    assert assigned_secrets("GRAFANA_ADMIN_PASSWORD=... docker compose up") == []
    assert assigned_secrets("GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set it}") == []


# --- the repository -------------------------------------------------------------------------------------


def test_the_scan_covers_configs_compose_dockerfile_and_code() -> None:
    names = {path.relative_to(REPO_ROOT).as_posix() for path in repository_files()}
    expected = {
        "docker-compose.yml",
        "Dockerfile",
        "alertmanager/alertmanager.yml",
        "prometheus/prometheus.yml",
    }
    assert expected <= names
    assert "tests/test_security.py" in names


def test_no_file_holds_a_literal_secret() -> None:
    found = {}
    for path in repository_files():
        if path == Path(__file__).resolve():
            continue  # the planted examples above
        text = text_of(path)
        if text is not None and (secrets := literal_secrets(text)):
            found[path.relative_to(REPO_ROOT).as_posix()] = secrets
    assert found == {}


def test_no_config_file_holds_a_secret_value() -> None:
    found = {}
    for path in repository_files():
        if path.suffix in CONFIG_SUFFIXES:
            for document in load_config(path):
                if paths := list(secret_values_in_config(document)):
                    found[path.relative_to(REPO_ROOT).as_posix()] = paths
    assert found == {}


def test_no_dockerfile_makefile_or_script_assigns_a_literal_secret() -> None:
    found = {}
    for path in repository_files():
        shell_like = path.name in {"Dockerfile", "Makefile"} or path.suffix in {".sh", ".env", ""}
        text = text_of(path) if shell_like else None
        if text is not None and (secrets := assigned_secrets(text)):
            found[path.relative_to(REPO_ROOT).as_posix()] = secrets
    assert found == {}


def test_alertmanager_reads_every_slack_url_from_a_file() -> None:
    config = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    url_keys = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if "api_url" in key:
                    url_keys.append(key)
                collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(config)
    assert url_keys and all(key.endswith("_file") for key in url_keys), url_keys


def test_secret_folder_is_ignored_by_git_and_docker() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "secrets/slack_webhook_url"], cwd=REPO_ROOT, check=False
    )
    assert ignored.returncode == 0
    # .dockerignore is an allowlist: everything is excluded, and secrets/ is not let back in
    dockerignore = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in dockerignore
    assert [line for line in dockerignore if line.startswith("!") and "secret" in line] == []


# --- containers -----------------------------------------------------------------------------------------


def test_no_compose_service_runs_privileged_or_as_root() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    risky = {
        name: {key: service[key] for key in ("privileged", "user", "cap_add", "pid") if key in service}
        for name, service in compose["services"].items()
    }
    assert all(
        not settings.get("privileged")
        and str(settings.get("user", "")).split(":")[0] not in {"root", "0"}
        and not settings.get("cap_add")
        and settings.get("pid") != "host"
        for settings in risky.values()
    ), risky


# --- limits ---------------------------------------------------------------------------------------------


def test_request_limits_are_settings_with_safe_defaults() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["host"] == "127.0.0.1"  # not every interface unless asked (the image sets 0.0.0.0)
    assert 0 < defaults["max_body_bytes"] <= 1024 * 1024
    assert 0 < defaults["max_batch_rows"] <= 1000


# --- X-Request-ID ---------------------------------------------------------------------------------------


class MemorySink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


UNSAFE_REQUEST_IDS = {
    "CR LF header injection": b"abc\r\nX-Injected: 1",
    "LF log line injection": b'abc\n{"job_id": "forged"}',
    "trailing newline": b"abc\n",
    "NUL": b"a\x00b",
    "UTF-8 letter": "é".encode(),
    "latin-1 letter": "é".encode("latin-1"),
    "Arabic-Indic digit": "٣".encode(),
    "fullwidth letters": "ＡＢＣ".encode(),
    "65 characters": b"a" * 65,
    "10 kB": b"a" * 10_000,
    "trailing space": b"abc ",
    "empty": b"",
}


@pytest.mark.parametrize("path", ["/predict", "/predict/test"])
@pytest.mark.parametrize("request_id", UNSAFE_REQUEST_IDS.values(), ids=UNSAFE_REQUEST_IDS.keys())
def test_unsafe_raw_request_id_is_replaced_by_a_uuid_in_answer_header_and_log(
    model_dir: Path, path: str, request_id: bytes
) -> None:
    sink = MemorySink()
    app = create_app(
        Settings(model_dir=model_dir),
        metrics=ServiceMetrics(CollectorRegistry()),
        prediction_log=PredictionLog(sink),
    )
    # Raw header bytes, as a server that did not reject them would pass them on.
    headers = [(b"x-request-id", request_id)]
    with TestClient(app) as client:
        if path == "/predict":
            response = client.post(path, json={"data": [[5.1, 3.5, 1.4, 0.2]]}, headers=headers)
        else:
            response = client.get(path, headers=headers)
    job_id = response.json()["job_id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert response.headers.get_list("x-request-id") == [job_id]
    assert "x-injected" not in response.headers
    (line,) = sink.data.splitlines()
    assert json.loads(line)["job_id"] == job_id


@pytest.mark.serving
def test_metrics_can_be_served_on_a_separate_port_and_not_with_the_api(
    tmp_path: Path, model_dir: Path
) -> None:
    api_port, metrics_port = free_port(), free_port()
    env = service_env(model_dir, tmp_path, api_port, metrics_port=str(metrics_port), workers="2")
    service = start_service(env, tmp_path / "service.log")
    try:
        service.wait_for_workers(2, timeout=60)
        for _ in range(10):
            assert (
                httpx.post(service.url + "/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
            )
        assert httpx.get(service.url + "/metrics").status_code == 404
        exposition = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        predictions = [
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "model_predictions_total"
        ]
        assert sum(predictions) == 10
    finally:
        service.stop()
