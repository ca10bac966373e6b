"""`make run`'s command starts the whole stack, prints where it is, and Ctrl-C stops all of it."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import poll

from stack.processes import free_port

pytestmark = pytest.mark.e2e


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_stack_run_serves_all_parts_prints_urls_and_stops_on_ctrl_c(tmp_path: Path, model_dir: Path) -> None:
    ports = {name: free_port() for name in ("service", "prometheus", "alertmanager", "slack")}
    urls = {
        "service": f"http://127.0.0.1:{ports['service']}/ready",
        "prometheus": f"http://127.0.0.1:{ports['prometheus']}/-/ready",
        "alertmanager": f"http://127.0.0.1:{ports['alertmanager']}/-/ready",
    }
    output = tmp_path / "console.txt"
    with output.open("wb") as console:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "stack", "run",
                f"--run-dir={tmp_path / 'run'}",
                f"--model-dir={model_dir}",
                f"--slack-webhook-url-file={tmp_path / 'no-such-secret'}",
                f"--service-port={ports['service']}",
                f"--prometheus-port={ports['prometheus']}",
                f"--alertmanager-port={ports['alertmanager']}",
                f"--slack-port={ports['slack']}",
            ],
            stdout=console,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        poll(lambda: "logs and data" in output.read_text(), 60, "the stack to print its URLs", 0.2)
        assert all(answers(url) for url in urls.values())
        printed = output.read_text()
        for name in ("service", "prometheus", "alertmanager"):
            assert f"http://127.0.0.1:{ports[name]}" in printed
        assert "messages print here" in printed  # no webhook file: the local Slack stand-in is used
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not any(answers(url) for url in urls.values())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
