"""docker-compose.yml and the Dockerfile, checked without a Docker engine: `docker-compose config` validates
the file, the rest reads it (pinned images, health checks, secrets, one Prometheus config for all)."""

import ast
import fnmatch
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stack.processes import NODE_EXPORTER_COLLECTORS

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
DATASOURCE_PROVISIONING_DIR = REPO_ROOT / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVISIONING = REPO_ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
MAKEFILE = REPO_ROOT / "Makefile"
README = REPO_ROOT / "README.md"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1"}
# Modules that run only in the Dockerfile's builder stage, which installs the train extra.
BUILD_TIME_MODULES = {"training.py"}
# Modules of the logs extra (DuckDB, matplotlib), which the image does not install: `python -m service logs`
# there says how to install it (tests/test_logs_command.py).
LOGS_EXTRA_MODULES = {"log_queries.py", "logs_report.py"}
# Grafana release lines and the day their security fixes end (grafana.com/docs/grafana/latest/upgrade-guide/
# when-to-upgrade/; 10.4's ended on 2025-06-05). Moving the pin to another line means adding it here.
GRAFANA_SUPPORT_ENDS = {"12.4": date(2027, 5, 24), "13.2": date(2027, 5, 18)}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def run_compose_config(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """`docker-compose config -q` with only `env` set: no .env file or shell variable can leak in."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (`make test` installs the Debian package)")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    environment = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), "config", "-q"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def pod_of(service: dict) -> str | None:
    """The service whose network namespace `service` joins (network_mode: service:NAME)."""
    mode = service.get("network_mode", "")
    return mode.removeprefix("service:") if mode.startswith("service:") else None


def published_container_ports(service: dict) -> set[int]:
    return {int(str(port).rsplit(":", 1)[-1].split("/")[0]) for port in service.get("ports", [])}


def network_aliases(service: dict) -> set[str]:
    networks = service.get("networks") or {}
    if isinstance(networks, list):
        return set()
    return {alias for network in networks.values() for alias in (network or {}).get("aliases", [])}


def healthcheck_command(service: dict) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return " ".join(test) if isinstance(test, list) else test


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), one list per stage (the first holds the
    global ARGs); continuation lines joined, comments dropped."""
    logical_lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical_lines.append(current.strip())
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical_lines:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def stage(name: str) -> list[tuple[str, str]]:
    for instructions in dockerfile_stages()[1:]:
        if re.search(rf"\bAS\s+{name}$", instructions[0][1], re.IGNORECASE):
            return instructions
    raise AssertionError(f"no stage {name!r} in the Dockerfile")


def run_commands(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """Each shell command of the RUN instructions, split into words."""
    commands = []
    for instruction, arguments in instructions:
        if instruction == "RUN":
            commands += [shlex.split(command) for command in re.split(r"&&|;", arguments)]
    return commands


def dockerignored(path: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents decides."""
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_compose_file_is_valid(tmp_path):
    result = run_compose_config(tmp_path, GRAFANA_ADMIN_PASSWORD="test-only")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_a_grafana_admin_password(tmp_path):
    result = run_compose_config(tmp_path)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_grafana_admin_password_comes_from_the_environment_only():
    grafana = services()["grafana"]
    assert re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]*\}", grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    )
    assert "env_file" not in grafana
    assert "GF_SECURITY_ADMIN_PASSWORD" not in COMPOSE_FILE.read_text().replace(
        "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?", "", 1
    )


def test_every_image_is_pinned_to_a_tag():
    images = [service["image"] for service in services().values() if "image" in service]
    for stage_instructions in dockerfile_stages()[1:]:
        base = stage_instructions[0][1].split()[0]
        if base.startswith("${"):
            (default,) = [
                arguments.split("=", 1)[1]
                for instruction, arguments in dockerfile_stages()[0]
                if instruction == "ARG" and arguments.startswith(base.strip("${}") + "=")
            ]
            base = default
        images.append(base)
    for name, service in services().items():
        assert "image" in service, f"{name}: name the image (and pin it) even when it is built"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest", image


def test_api_health_check_gets_ready_without_curl():
    check = healthcheck_command(services()["api"])
    assert "/ready" in check
    assert "urllib" in check
    assert "curl" not in check


@pytest.mark.parametrize(("name", "port"), [("prometheus", 9090), ("alertmanager", 9093)])
def test_prometheus_and_alertmanager_health_checks_ask_ready(name, port):
    assert healthcheck_command(services()[name]) == f"CMD wget -qO- http://localhost:{port}/-/ready"


def test_depends_on_waits_for_health_wherever_there_is_a_health_check():
    all_services = services()
    for name, service in all_services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            healthcheck = all_services[dependency].get("healthcheck", {})
            if healthcheck and not healthcheck.get("disable"):
                assert condition == {"condition": "service_healthy"}, f"{name} → {dependency}"


def test_prometheus_does_not_wait_for_the_service_it_must_alert_about():
    assert "api" not in services()["prometheus"].get("depends_on", {})


def test_service_exporters_prometheus_and_alertmanager_share_the_pod_network_namespace():
    all_services = services()
    members = ("api", "prometheus", "alertmanager", "blackbox-exporter", "node-exporter")
    pods = {pod_of(all_services[name]) for name in members}
    assert len(pods) == 1 and None not in pods
    pod = all_services[pods.pop()]
    assert published_container_ports(pod) == {8000, 9090, 9093, 9100, 9115}
    assert network_aliases(pod) >= {"api", "prometheus", "alertmanager"}
    for name in members:
        assert "ports" not in all_services[name], f"{name}: publish its port on the pod"


def test_prometheus_config_targets_reach_the_same_processes_in_compose():
    """prometheus.yml is shared with the local stack: each localhost target must be a port of the pod that
    Prometheus runs in, and any other host a name that compose resolves."""
    assert PROMETHEUS_CONFIG.exists(), f"{PROMETHEUS_CONFIG} is missing"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    all_services = services()
    pod = all_services[pod_of(all_services["prometheus"])]
    resolvable = set(all_services) | network_aliases(pod)
    static_configs = [
        static for scrape in config.get("scrape_configs", []) for static in scrape["static_configs"]
    ]
    static_configs += [
        static
        for alertmanager in config.get("alerting", {}).get("alertmanagers", [])
        for static in alertmanager.get("static_configs", [])
    ]
    targets = [target for static in static_configs for target in static["targets"]]
    # The probes' URLs name the service's address; the relabelling sends the scrape to the exporter.
    targets = [urlsplit(target).netloc if "://" in target else target for target in targets]
    targets += [
        relabel["replacement"]
        for scrape in config.get("scrape_configs", [])
        for relabel in scrape.get("relabel_configs", [])
        if relabel.get("target_label") == "__address__"
    ]
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        if host in LOOPBACK_HOSTS:
            assert int(port) in published_container_ports(pod), f"{target}: nothing listens there in compose"
        else:
            assert host in resolvable, f"{target}: {host} does not resolve in compose"


def test_make_run_installs_the_binaries_the_stack_runs_and_not_docker_compose():
    run_packages = re.search(r"^RUN_PACKAGES := (.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert run_packages, "no RUN_PACKAGES line in the Makefile"
    required = set(
        re.findall(r'require_binary\("([\w-]+)"\)', (REPO_ROOT / "stack" / "processes.py").read_text())
    )
    # prometheus and prometheus-alertmanager: ensure-debian-packages always checks them
    assert required - {"prometheus", "prometheus-alertmanager"} == set(run_packages[1].split())
    assert "docker-compose" not in run_packages[1]


def test_node_exporter_runs_the_collectors_of_the_local_stack():
    command = services()["node-exporter"]["command"]
    assert "--collector.disable-defaults" in command
    assert [flag.removeprefix("--collector.") for flag in command if flag.startswith("--collector.")][1:] == (
        NODE_EXPORTER_COLLECTORS
    )


def test_blackbox_exporter_reads_the_shipped_modules():
    blackbox = services()["blackbox-exporter"]
    assert "./blackbox/blackbox.yml:/etc/blackbox_exporter/blackbox.yml:ro" in blackbox["volumes"]
    assert "--config.file=/etc/blackbox_exporter/blackbox.yml" in blackbox["command"]


def provisioned_datasources() -> list[dict]:
    files = sorted(DATASOURCE_PROVISIONING_DIR.glob("*.yml"))
    return [datasource for path in files for datasource in yaml.safe_load(path.read_text())["datasources"]]


@pytest.mark.parametrize(
    ("datasource_type", "service"), [("prometheus", "prometheus"), ("alertmanager", "alertmanager")]
)
def test_grafana_datasource_url_resolves_to_its_service_in_compose(datasource_type, service):
    (datasource,) = [item for item in provisioned_datasources() if item["type"] == datasource_type]
    url = urlsplit(datasource["url"])
    all_services = services()
    pod = all_services[pod_of(all_services[service])]
    assert url.hostname == service and service in network_aliases(pod)
    assert url.port in published_container_ports(pod)
    assert healthcheck_command(all_services[service]).endswith(f"localhost:{url.port}/-/ready")


def test_grafana_image_is_a_pinned_release_of_a_supported_line():
    """Fails once the pinned line's security support has ended: then move the pin."""
    name, _, tag = services()["grafana"]["image"].rpartition(":")
    assert name == "grafana/grafana"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin an exact release, not {tag}"
    line = tag.rsplit(".", 1)[0]
    assert line in GRAFANA_SUPPORT_ENDS, f"Grafana {line} is not a supported line"
    assert date.today() <= GRAFANA_SUPPORT_ENDS[line], f"Grafana {line} is out of support"


def test_readme_names_the_pinned_monitoring_images():
    readme = README.read_text()
    for name in ("prometheus", "alertmanager", "grafana"):
        tag = services()[name]["image"].rpartition(":")[2]
        assert tag in readme, f"README does not name {name}'s pinned image {tag}"


def test_grafana_mounts_its_provisioning_and_the_dashboards_where_the_provider_reads():
    (provider,) = yaml.safe_load(DASHBOARD_PROVISIONING.read_text())["providers"]
    volumes = services()["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in volumes


def test_alertmanager_reads_the_slack_webhook_from_a_compose_secret_at_the_configured_path():
    configured_path = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["global"]["slack_api_url_file"]
    (secret,) = services()["alertmanager"]["secrets"]
    assert secret["target"] == configured_path
    secret_file = compose()["secrets"][secret["source"]]["file"]
    assert secret_file == "./secrets/slack_webhook_url"
    assert "/secrets/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert dockerignored("secrets/slack_webhook_url")


def test_traffic_runs_from_the_api_image_only_under_its_profile():
    all_services = services()
    traffic = all_services["traffic"]
    assert traffic["profiles"] == ["traffic"]
    assert traffic["image"] == all_services["api"]["image"]
    assert traffic["command"][:4] == ["python", "-m", "service", "traffic"]
    assert "http://api:8000" in traffic["command"]
    assert traffic["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_dockerfile_runs_the_service_as_a_non_root_user():
    runtime = dockerfile_stages()[-1]
    (user,) = [arguments for instruction, arguments in runtime if instruction == "USER"][-1:]
    assert user.split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", "8000") in runtime
    assert ("CMD", '["python", "-m", "service", "serve"]') in runtime
    healthchecks = [arguments for instruction, arguments in runtime if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/ready" in healthchecks[0] and "urllib" in healthchecks[0]


def test_dockerfile_trains_at_build_time_with_the_command_of_make_train():
    builder_commands = run_commands(stage("builder"))
    assert ["pip", "install", ".[train]"] in builder_commands
    train_commands = [
        command for command in builder_commands if command[:4] == ["python", "-m", "service", "train"]
    ]
    assert train_commands == [["python", "-m", "service", "train", "--output", "/app/models"]]
    # The Makefile (and so CI) trains with the same command line.
    assert re.search(r"^\t\$\(PY\) -m service train --output \S+$", MAKEFILE.read_text(), re.MULTILINE)


def test_dockerfile_runtime_installs_only_runtime_dependencies_and_the_trained_models():
    runtime = dockerfile_stages()[-1]
    assert ["pip", "install", "."] in run_commands(runtime)
    assert not any("train" in word for command in run_commands(runtime) for word in command)
    assert ("COPY", "--from=builder /app/models /app/models") in runtime
    env = " ".join(arguments for instruction, arguments in runtime if instruction == "ENV")
    assert "SERVICE_MODEL_DIR=/app/models" in env.split()
    assert "SERVICE_HOST=0.0.0.0" in env.split()


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context():
    for instructions in dockerfile_stages()[1:]:
        for instruction, arguments in instructions:
            if instruction != "COPY" or arguments.startswith("--from"):
                continue
            *sources, _destination = arguments.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def runtime_distributions() -> set[str]:
    """The project's runtime dependencies and everything they require, as installed here."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pending = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    found: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            extras = [""] + sorted(requirement.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return found


def test_modules_the_image_runs_import_only_runtime_dependencies():
    """The runtime stage installs `pip install .` only, and `traffic` runs from the same image."""
    provided_by = importlib.metadata.packages_distributions()
    allowed = runtime_distributions()
    for path in sorted((REPO_ROOT / "service").glob("*.py")):
        if path.name in BUILD_TIME_MODULES | LOGS_EXTRA_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in (name.split(".")[0] for name in modules):
                if module in sys.stdlib_module_names or module == "service":
                    continue
                distributions = {canonicalize_name(name) for name in provided_by.get(module, [])}
                assert distributions & allowed, (
                    f"service/{path.name} imports {module}: not a runtime dependency"
                )
