"""Start the production serving command (or the bare app) on a free loopback port, and stop it."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from stack.processes import free_port
from stack.service_process import child_pids, cpu_seconds, rss_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]  # `python -m bench.bare_app` runs from here
STARTUP_SECONDS = 60
STOP_SECONDS = 15


class ServerError(RuntimeError):
    """A server did not come up (the message ends with its log)."""


class Server:
    """One gunicorn master with its workers, started in its own session and stopped by its pid."""

    def __init__(self, name: str, module: str, env: dict[str, str], workdir: Path, workers: int) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self._log_path = workdir / f"{name}.log"
        self._env = {
            **os.environ,
            **env,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(self.port),
            "SERVICE_WORKERS": str(workers),
            "SERVICE_MULTIPROC_DIR": str(workdir / f"{name}-multiproc"),
        }
        self._module = module
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", *self._module.split()],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

    def wait_ready(self, path: str) -> None:
        """Wait until every worker is up and `path` answers 200."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}")
            if len(self.worker_pids()) == self.workers and self._answers(path):
                return
            time.sleep(0.2)
        raise ServerError(f"{self.name} not ready after {STARTUP_SECONDS} s\n{self.log_tail()}")

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError(f"{self.name} was not started")
        return self._process

    def worker_pids(self) -> list[int]:
        return sorted(child_pids(self.process.pid))

    def worker_cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def worker_rss_bytes(self) -> list[int]:
        sizes = [rss_bytes(pid) for pid in self.worker_pids()]
        if 0 in sizes:
            raise ServerError(f"a worker exited while its memory was read: {self.worker_pids()}")
        return sizes

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the master (gunicorn stops its workers gracefully); SIGKILL to its group if stuck."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(STOP_SECONDS)
