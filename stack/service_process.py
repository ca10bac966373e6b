"""`python -m service serve` as a child process: start it on a port, find its gunicorn workers, stop it.

For the fault tests and the load test, which need the production command itself (gunicorn master and
uvicorn workers) and the process ids of its workers, to kill them or to read their memory.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

import httpx

POLL_SECONDS = 0.05


def child_pids(parent: int) -> set[int]:
    """Live child processes of `parent`, found by scanning /proc (no /proc/<pid>/task/*/children here)."""
    children = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != b"Z":
            children.add(int(entry.name))
    return children


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), 0 if it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, 0 if it has exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def service_env(model_dir: Path, run_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The parent's environment without SERVICE_* variables, plus `settings` (names in lower case)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SERVICE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        SERVICE_HOST="127.0.0.1",
        SERVICE_PORT=str(port),
        SERVICE_MODEL_DIR=str(model_dir),
        SERVICE_MULTIPROC_DIR=str(run_dir / "multiproc"),
    )
    env.update({f"SERVICE_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    port: int
    multiproc_dir: Path
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_pid(self) -> int:
        return self.process.pid  # `python -m service serve` runs the gunicorn master itself

    def worker_pids(self) -> set[int]:
        return child_pids(self.master_pid)

    def wait_for_workers(self, count: int, timeout: float, exclude: Set[int] = frozenset()) -> set[int]:
        """Wait until `count` workers not in `exclude` run and each has loaded the app; return their pids.

        A worker has loaded the app once its live gauge file exists: it binds the model metrics at startup.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.process.returncode}:\n{self.output_tail()}"
                )
            workers = self.worker_pids() - exclude
            loaded = {pid for pid in workers if (self.multiproc_dir / f"gauge_livemax_{pid}.db").exists()}
            if len(loaded) >= count and len(self.worker_pids()) == count:
                try:
                    if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                        return loaded
                except httpx.TransportError:
                    pass
            time.sleep(POLL_SECONDS)
        raise TimeoutError(
            f"not {count} loaded workers within {timeout} s (workers: {self.worker_pids()}):\n"
            + self.output_tail()
        )

    def output_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: workers finish their requests and flush the log); SIGKILL the group if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
            return None
        return self.process.returncode


def start_service(env: dict[str, str], output: Path) -> ServiceProcess:
    """Start `python -m service serve` in a session of its own (so the whole group can be killed)."""
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServiceProcess(process, int(env["SERVICE_PORT"]), Path(env["SERVICE_MULTIPROC_DIR"]), output)
