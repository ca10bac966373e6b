"""A gunicorn server as a child process: start it on a port, find its workers, wait for them, stop it.

By default the production command `python -m service serve` (gunicorn master and uvicorn workers), for the
fault tests, the gunicorn tests and the load test, which need its worker pids to kill them or read their
memory. The benchmark also starts its bare app with it (`python -m bench.bare_app`, the same server
around another app factory).
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVE_COMMAND = ("service", "serve")
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
    """A gunicorn master (`process`, in a session of its own) and its workers, on 127.0.0.1:`port`."""

    process: subprocess.Popen[bytes]
    port: int
    multiproc_dir: Path
    output: Path  # stdout and stderr of the master and its workers
    name: str = "the service"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_pid(self) -> int:
        return self.process.pid  # the command runs the gunicorn master itself

    def worker_pids(self) -> set[int]:
        return child_pids(self.master_pid)

    def worker_cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def worker_rss_bytes(self) -> list[int]:
        """Each worker's resident memory, in the order of their pids."""
        pids = sorted(self.worker_pids())
        sizes = [rss_bytes(pid) for pid in pids]
        if 0 in sizes:
            raise RuntimeError(f"a worker of {self.name} exited while its memory was read: {pids}")
        return sizes

    def wait_for_workers(
        self,
        count: int,
        timeout: float,
        exclude: Set[int] = frozenset(),
        ready_path: str = "/ready",
        metric_files: bool = True,
    ) -> set[int]:
        """Wait until `count` workers not in `exclude` run, each has loaded the app and `ready_path` answers
        200; return their pids.

        `ready_path` answers as soon as one worker is up. Where workers write metric files (`metric_files`:
        the service with metrics on), a worker has loaded the app once its live gauge file exists, as it
        binds the model metrics at startup; other apps are taken as loaded once `count` workers run.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.output_tail()}"
                )
            workers = self.worker_pids() - exclude
            loaded = {pid for pid in workers if not metric_files or self._has_live_gauges(pid)}
            if len(loaded) >= count and len(self.worker_pids()) == count:
                try:
                    if httpx.get(self.url + ready_path, timeout=1.0).status_code == 200:
                        return loaded
                except httpx.TransportError:
                    pass
            time.sleep(POLL_SECONDS)
        raise TimeoutError(
            f"{self.name}: not {count} loaded workers within {timeout} s (workers: {self.worker_pids()}):\n"
            + self.output_tail()
        )

    def _has_live_gauges(self, pid: int) -> bool:
        return (self.multiproc_dir / f"gauge_livemax_{pid}.db").exists()

    def output_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: workers finish their requests and flush the log); SIGKILL the group if stuck.

        Returns the master's exit code, None if it had to be killed. Stopping a stopped server does nothing.
        """
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


def start_service(
    env: dict[str, str],
    output: Path,
    command: Sequence[str] = SERVE_COMMAND,
    name: str = "the service",
    cwd: Path | None = None,
) -> ServiceProcess:
    """Start `python -m <command>` with `env` (see `service_env`) in a session of its own, so that the
    whole group can be killed; `output` gets its stdout and stderr."""
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    return ServiceProcess(process, int(env["SERVICE_PORT"]), Path(env["SERVICE_MULTIPROC_DIR"]), output, name)
