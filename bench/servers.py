"""Start the production serving command (or the bare app) on a free loopback port, and stop it."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # `python -m bench.bare_app` runs from here
STARTUP_SECONDS = 60
STOP_SECONDS = 15


class ServerError(RuntimeError):
    """A server did not come up (the message ends with its log)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: every process whose parent is the master."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # the command name in parentheses may hold spaces: the fields after it are fixed
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == master_pid:
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/status (VmRSS, in kB there)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"process {pid} has no VmRSS")


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
        return worker_pids(self.process.pid)

    def worker_cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def worker_rss_bytes(self) -> list[int]:
        return [rss_bytes(pid) for pid in self.worker_pids()]

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
