"""The Kubernetes deployment (deploy/kubernetes/), checked without a cluster: generated and up to date, every
object valid for the targeted Kubernetes version, and the operator's objects (which no bundled schema
covers) held to the project's own files: rules, dashboards, routes, ports and paths of the service."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.metrics import ServiceMetrics
from service.server import GunicornServer
from service.settings import Settings
from stack.processes import SERVICE_JOB

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
GENERATOR = DEPLOY / "generate.py"
OVERLAYS = {"dev": 1, "production": 3}
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_kubernetes", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def rendered(overlay: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "rendered" / f"{overlay}.yaml").read_text(encoding="utf-8")))


def alertmanager_secret() -> dict:
    return yaml.safe_load((DEPLOY / "alertmanager" / "secret.yaml").read_text(encoding="utf-8"))


def every_object() -> list[dict]:
    return [obj for overlay in OVERLAYS for obj in rendered(overlay)] + [alertmanager_secret()]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def service_container(objects: list[dict]) -> dict:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "service"]
    return container


def settings_data(objects: list[dict]) -> dict[str, str]:
    config_map_name = service_container(objects)["envFrom"][0]["configMapRef"]["name"]
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config_map_name
    ]
    return config_map["data"]


def pod_settings(objects: list[dict], **overrides: object) -> Settings:
    values = {key.removeprefix("SERVICE_").lower(): value for key, value in settings_data(objects).items()}
    return Settings(**{**values, **overrides})


def container_port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.fixture(params=list(OVERLAYS))
def objects(request) -> list[dict]:
    return rendered(request.param)


def test_committed_files_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_generator_prints_help():
    result = subprocess.run([sys.executable, str(GENERATOR), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--check" in result.stdout


@pytest.mark.parametrize("obj", every_object(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_object_validates_strictly_against_the_targeted_kubernetes_version(obj):
    if obj["kind"] in OPERATOR_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # checked by the tests below instead
            kubernetes_validate.validate(obj, generator.KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, generator.KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field():
    deployment = one(rendered("dev"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, generator.KUBERNETES_VERSION, strict=True)


def test_overlays_set_replicas_and_production_autoscales_the_deployment_on_the_service_cpu():
    for overlay, replicas in OVERLAYS.items():
        assert one(rendered(overlay), "Deployment")["spec"]["replicas"] == replicas
    assert not [obj for obj in rendered("dev") if obj["kind"] == "HorizontalPodAutoscaler"]
    production = rendered("production")
    autoscaler = one(production, "HorizontalPodAutoscaler")["spec"]
    deployment = one(production, "Deployment")
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "prediction-service",
    }
    assert deployment["metadata"]["name"] == "prediction-service"
    assert autoscaler["minReplicas"] == 3 < autoscaler["maxReplicas"]
    (metric,) = autoscaler["metrics"]
    assert metric["containerResource"]["name"] == "cpu"
    assert metric["containerResource"]["container"] == service_container(production)["name"]


def test_rendered_overlays_are_what_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed here (CI has none): the other tests check the generator's build"
        )
    for overlay in OVERLAYS:
        built = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

        def by_identity(documents):
            return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in documents}

        assert by_identity(yaml.safe_load_all(built)) == by_identity(rendered(overlay)), overlay


def test_prometheus_rules_are_the_rule_files_unchanged_and_pass_promtool(objects, tmp_path):
    rule_files = sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
    assert rule_files
    rules = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    assert [obj["spec"]["groups"] for obj in rules] == [
        yaml.safe_load(path.read_text())["groups"] for path in rule_files
    ]
    for obj in rules:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        path = tmp_path / f"{obj['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(obj["spec"]))
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_the_metrics_port_of_every_pod_of_the_service(objects):
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    deployment = one(objects, "Deployment")
    container = service_container(objects)
    assert service["metadata"]["name"] == SERVICE_JOB  # the ServiceMonitor's job label: the rules' job
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert container_port(container, port["targetPort"]) == pod_settings(objects).metrics_port
    assert endpoint["path"] == "/metrics"
    scrape_interval = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())["global"]
    assert endpoint["interval"] == scrape_interval["scrape_interval"]


def test_probes_ask_routes_the_service_serves_on_its_api_port(objects, model_dir):
    container = service_container(objects)
    settings = pod_settings(objects, model_dir=model_dir)
    get_routes = {
        route.path
        for route in create_app(settings, ServiceMetrics(CollectorRegistry())).routes
        if "GET" in getattr(route, "methods", ())
    }
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["path"] in get_routes
        assert container_port(container, probe["port"]) == settings.port
    assert container_port(container, "http") == settings.port


def test_every_container_has_requests_limits_and_runs_unprivileged_on_a_read_only_root(objects):
    pod = pod_spec(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["initContainers"] + pod["containers"]:
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] and resources["limits"][kind], (container["name"], kind)
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]


def test_service_memory_limit_holds_every_process_at_the_benchmarks_largest_rss(objects):
    settings = pod_settings(objects)
    results = (REPO_ROOT / "bench" / "results" / "latest.md").read_text(encoding="utf-8")
    largest_rss_mib = max(
        generator.numbers(generator.bench_row(results, "6. RSS per worker after the batch run"))
    )
    limit = service_container(objects)["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert int(limit[:-2]) >= (settings.workers + 1) * largest_rss_mib  # the workers and the master


def test_no_image_is_untagged_or_latest_and_the_service_runs_the_compose_image(objects):
    pod = pod_spec(objects)
    for container in pod["initContainers"] + pod["containers"]:
        name, _, tag = container["image"].rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), container["image"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    compose_image = compose["services"]["api"]["image"].rpartition(":")[0]
    assert service_container(objects)["image"].rpartition(":")[0] == compose_image
    assert "command" not in service_container(objects)  # the image's own CMD, as in compose


def test_settings_come_from_a_config_map_of_service_settings(objects):
    data = settings_data(objects)
    assert all(key.startswith("SERVICE_") for key in data)
    assert {key.removeprefix("SERVICE_").lower() for key in data} <= set(Settings.model_fields)
    settings = pod_settings(objects)
    assert settings.metrics_port not in (None, settings.port)
    assert str(settings.model_dir) == "/app/models"  # the models are in the image (Dockerfile)
    assert "SERVICE_MODEL_DIR=/app/models" in (REPO_ROOT / "Dockerfile").read_text()


def test_the_service_writes_only_to_empty_dirs_and_the_sidecar_reads_the_prediction_log(objects):
    pod = pod_spec(objects)
    settings = pod_settings(objects)
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {m["mountPath"]: m["name"] for m in service_container(objects)["volumeMounts"]}
    assert set(mounts.values()) <= empty_dirs
    for written in (settings.multiproc_dir, settings.log_file.parent):
        assert any(written.is_relative_to(path) for path in mounts), written
    (shipper,) = pod["initContainers"]
    assert shipper["restartPolicy"] == "Always"  # a native sidecar
    log_mount = next(path for path in mounts if settings.log_file.is_relative_to(path))
    shipper_mounts = {m["name"]: m for m in shipper["volumeMounts"]}
    assert shipper_mounts[mounts[log_mount]]["mountPath"] == log_mount
    assert shipper_mounts[mounts[log_mount]]["readOnly"] is True
    for mount in shipper["volumeMounts"]:
        assert mount.get("readOnly") or mount["name"] in empty_dirs
    config_volume = next(v for v in pod["volumes"] if v["name"] == "log-shipper-config")
    config_map = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config_volume["configMap"]["name"]
    )
    assert f'"__path__" = "{settings.log_file}"' in config_map["data"]["config.alloy"]


def test_termination_grace_outlasts_the_pre_stop_sleep_and_the_workers_graceful_shutdown(objects):
    pod = pod_spec(objects)
    pre_stop = service_container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful_timeout = GunicornServer(pod_settings(objects)).cfg.graceful_timeout
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful_timeout


def test_disruption_budget_and_network_policy_select_the_pods(objects):
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert matches(budget["selector"]["matchLabels"], labels)
    assert budget["maxUnavailable"] == 1  # a one-replica dev can still be drained
    policy = one(objects, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], labels)
    assert policy["policyTypes"] == ["Ingress"]


def test_only_prometheus_may_reach_the_metrics_port(objects):
    rules = one(objects, "NetworkPolicy")["spec"]["ingress"]
    by_port = {port["port"]: rule.get("from") for rule in rules for port in rule["ports"]}
    assert set(by_port) == {"http", "metrics"}
    assert by_port["http"] is None  # the API: from anywhere
    assert by_port["metrics"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]


def test_dashboard_config_maps_hold_the_dashboard_files_for_grafanas_sidecar(objects):
    files = sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))
    assert files
    config_maps = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert [config_map["data"] for config_map in config_maps] == [
        {path.name: path.read_text(encoding="utf-8")} for path in files
    ]
    assert all(config_map["metadata"]["labels"]["grafana_dashboard"] == "1" for config_map in config_maps)


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["amtool", *args], capture_output=True, text=True)


@pytest.fixture
def alertmanager_dir(tmp_path) -> Path:
    """The operator's Alertmanager mounts, in a folder: the config Secret's keys, the Slack secret's file."""
    secret = alertmanager_secret()
    config_dir = tmp_path / "etc" / "alertmanager" / "config"
    config_dir.mkdir(parents=True)
    for key, text in secret["stringData"].items():
        (config_dir / key).write_text(text.replace("/etc/alertmanager/", f"{tmp_path}/etc/alertmanager/"))
    config = yaml.safe_load(secret["stringData"]["alertmanager.yaml"])
    url_file = Path(config["global"]["slack_api_url_file"].replace("/etc/", f"{tmp_path}/etc/"))
    url_file.parent.mkdir(parents=True)
    url_file.write_text("http://127.0.0.1:9/")
    return config_dir


def test_alertmanager_secret_is_the_shipped_routing_reading_the_slack_url_from_a_secret_file(
    alertmanager_dir,
):
    config_file = alertmanager_dir / "alertmanager.yaml"
    result = amtool("check-config", str(config_file))
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    inhibit_rules = len(shipped["inhibit_rules"])
    found = f" - route\n - {inhibit_rules} inhibit rules\n - 4 receivers\n - 1 templates"
    assert f"Found:\n - global config\n{found}" in result.stdout
    config = yaml.safe_load(config_file.read_text())
    assert config["global"] == {"slack_api_url_file": config["global"]["slack_api_url_file"]}
    assert "slack.com" not in (DEPLOY / "alertmanager" / "secret.yaml").read_text()
    assert config["route"]["routes"][1:] == shipped["route"]["routes"]
    assert config["receivers"][:-1] == shipped["receivers"]
    assert config["inhibit_rules"] == shipped["inhibit_rules"]
    templates = sorted(path.name for path in (REPO_ROOT / "alertmanager" / "templates").glob("*.tmpl"))
    assert sorted(path.name for path in alertmanager_dir.glob("*.tmpl")) == templates


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=Watchdog"], "null"),
        (["alertname=ModelOutlierRatioHigh", "category=model_quality"], "slack-model-quality"),
        (["alertname=PredictionServiceDown", "category=service_health"], "slack-service-health"),
        (["alertname=KubePodCrashLooping"], "slack-default"),
    ],
)
def test_alertmanager_secret_routes(alertmanager_dir, labels, receiver):
    config_file = str(alertmanager_dir / "alertmanager.yaml")
    result = amtool(
        "config", "routes", "test", f"--config.file={config_file}", f"--verify.receivers={receiver}", *labels
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_states_the_generated_resources_and_grace_period():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## On Kubernetes") :].split("\n## ")[0]
    objects = rendered("production")
    resources = service_container(objects)["resources"]
    assert f"memory request {resources['requests']['memory']}" in section
    assert f"limit {resources['limits']['memory']}" in section
    assert f"CPU request {resources['requests']['cpu']}" in section
    assert f"limit {resources['limits']['cpu']}" in section
    assert f"terminationGracePeriodSeconds: {pod_spec(objects)['terminationGracePeriodSeconds']}" in section


def test_log_shipper_is_composes_alloy_with_lokis_address_and_the_pods_labels_from_the_environment(objects):
    (shipper,) = pod_spec(objects)["initContainers"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["alloy"]
    assert shipper["image"] == compose["image"]
    config_map = next(o for o in objects if o["metadata"]["name"] == "prediction-log-shipper")
    config = config_map["data"]["config.alloy"]
    environment = {variable["name"] for variable in shipper["env"]}
    assert (
        set(re.findall(r'sys\.env\("(\w+)"\)', config))
        == environment
        == {"LOKI_PUSH_URL", "POD_NAME", "POD_NAMESPACE"}
    )
    compose_config = (REPO_ROOT / "alloy" / "config.alloy").read_text(encoding="utf-8")
    (compose_url,) = re.findall(r'url = ("[^"]+")', compose_config)
    undone = config.split("\n", 2)[2].replace('sys.env("LOKI_PUSH_URL")', compose_url)
    undone = re.sub(r"\n\n  external_labels = \{\n[^}]*\n  \}", "", undone)
    assert undone == compose_config
