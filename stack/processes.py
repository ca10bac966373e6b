"""Start the service, its two exporters, Prometheus and Alertmanager as child processes on 127.0.0.1, and
stop them.

Beside them, in this process, the docs server that the alerts' runbook links lead to.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stack.configs import BLACKBOX_CONFIG, render_alertmanager_config, render_prometheus_config
from stack.docs_server import RUNBOOK_PATH, DocsServer

# The node exporter's collectors (docker-compose.yml runs the same): the machine's CPU, memory, filesystems
# and network, and nothing the dashboards and alerts do not read.
NODE_EXPORTER_COLLECTORS = ["cpu", "meminfo", "filesystem", "netdev", "loadavg"]
SERVICE_JOB = "prediction-service"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StartError(RuntimeError):
    pass


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(
                f"the server of {url} exited with {process.returncode}; see {log}:\n{_tail(log)}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise StartError(f"{url} not ready after {timeout}s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def prometheus_page(base_url: str, page: str) -> str:
    """The URL of a Prometheus UI page (alerts, graph, targets, ...) that answers 200 on this binary.

    Debian's Prometheus 2.42 is built without the React UI: its pages live under /classic/ only.
    """
    for url in (f"{base_url}/{page}", f"{base_url}/classic/{page}"):
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
    raise StartError(f"Prometheus at {base_url} serves no {page} page")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StartError(f"{name} not found: run ./scripts/ensure-debian-packages as root")
    return path


@dataclass
class Ports:
    """The ports on 127.0.0.1; the defaults are the shipped configs' (`localhost:8000`, ...)."""

    service: int = 8000
    prometheus: int = 9090
    alertmanager: int = 9093
    docs: int = 9098
    blackbox: int = 9115
    node: int = 9100

    def addresses(self) -> dict[str, str]:
        """Each shipped address of prometheus.yml, and where this stack's process listens instead."""
        defaults = Ports()
        return {
            f"localhost:{getattr(defaults, name)}": f"127.0.0.1:{getattr(self, name)}"
            for name in ("service", "prometheus", "alertmanager", "blackbox", "node")
        }


@dataclass
class Stack:
    """The processes of the product, their data in `run_dir`, all on 127.0.0.1, and the docs server.

    No Grafana runs here, so the alerts carry no dashboard link (prometheus.yml's `grafana_url` is left out).
    """

    run_dir: Path
    model_dir: Path
    slack_webhook_url_file: Path
    ports: Ports = field(default_factory=Ports)
    service_env: dict[str, str] = field(default_factory=dict)
    rule_files: list[Path] | None = None  # None: the shipped prometheus/rules/
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    docs: DocsServer = field(default_factory=DocsServer)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, name)}"

    @property
    def runbook_page(self) -> str:
        return self.url("docs") + RUNBOOK_PATH

    def query(self, promql: str) -> list[dict]:
        """The result vector of an instant query against this stack's Prometheus."""
        response = httpx.get(self.url("prometheus") + "/api/v1/query", params={"query": promql}, timeout=5.0)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen, Path]:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                args, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes[name] = process
        return process, log

    def start_service(self) -> None:
        env = {
            **os.environ,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(self.ports.service),
            "SERVICE_MODEL_DIR": str(self.model_dir),
            "SERVICE_MULTIPROC_DIR": str(self.run_dir / "prometheus-multiproc"),
            "SERVICE_LOG_FILE": str(self.run_dir / "predictions.jsonl"),
            **self.service_env,
        }
        process, log = self._spawn("service", [sys.executable, "-m", "service", "serve"], env)
        wait_until_ready(self.url("service") + "/ready", process, log)

    def start_blackbox_exporter(self) -> None:
        process, log = self._spawn(
            "blackbox-exporter",
            [
                require_binary("prometheus-blackbox-exporter"),
                f"--config.file={BLACKBOX_CONFIG}",
                f"--web.listen-address=127.0.0.1:{self.ports.blackbox}",
            ],
        )
        wait_until_ready(self.url("blackbox") + "/-/healthy", process, log)

    def start_node_exporter(self) -> None:
        process, log = self._spawn(
            "node-exporter",
            [
                require_binary("prometheus-node-exporter"),
                f"--web.listen-address=127.0.0.1:{self.ports.node}",
                "--collector.disable-defaults",
                *(f"--collector.{name}" for name in NODE_EXPORTER_COLLECTORS),
            ],
        )
        wait_until_ready(self.url("node") + "/metrics", process, log)

    def start_prometheus(self) -> None:
        metrics_port = self.service_env.get("SERVICE_METRICS_PORT")
        config = render_prometheus_config(
            self.ports.addresses(),
            self.run_dir / "prometheus.yml",
            external_labels={"runbook_page": self.runbook_page},
            scrape_targets={SERVICE_JOB: f"127.0.0.1:{metrics_port}"} if metrics_port else None,
            rule_files=self.rule_files,
        )
        process, log = self._spawn(
            "prometheus",
            [
                require_binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
                f"--web.external-url={self.url('prometheus')}",
            ],
        )
        wait_until_ready(self.url("prometheus") + "/-/ready", process, log)

    def start_alertmanager(self) -> None:
        config = render_alertmanager_config(self.slack_webhook_url_file, self.run_dir / "alertmanager.yml")
        process, log = self._spawn(
            "alertmanager",
            [
                require_binary("prometheus-alertmanager"),
                f"--config.file={config}",
                f"--storage.path={self.run_dir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.alertmanager}",
                f"--web.external-url={self.url('alertmanager')}",
                "--cluster.listen-address=",  # a single instance: no gossip port
            ],
        )
        wait_until_ready(self.url("alertmanager") + "/-/ready", process, log)

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.docs.start("127.0.0.1", self.ports.docs)
            self.start_alertmanager()
            self.start_service()
            self.start_blackbox_exporter()
            self.start_node_exporter()
            self.start_prometheus()
        except BaseException:
            self.stop()
            raise

    def stop_process(self, name: str, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`; then whatever is left of its process group."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        try:  # e.g. a gunicorn worker that outlived its master
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_process(name)
        self.docs.stop()


def stack_on_free_ports(
    run_dir: Path, model_dir: Path, slack_webhook_url: str, service_env: dict[str, str] | None = None
) -> Stack:
    """A Stack (not started) on free 127.0.0.1 ports whose Alertmanager posts to `slack_webhook_url`."""
    webhook_file = run_dir / "slack_webhook_url"
    webhook_file.write_text(slack_webhook_url)
    return Stack(
        run_dir=run_dir,
        model_dir=model_dir,
        slack_webhook_url_file=webhook_file,
        ports=Ports(*(free_port() for _ in range(6))),
        service_env=service_env or {},
    )
