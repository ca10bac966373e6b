"""`make run`'s command starts the whole stack, prints where everything is (every printed link opens a page
that exists), and SIGINT or SIGTERM stops all of it, however it was started."""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import poll

from stack.processes import free_port
from stack.service_process import child_pids

pytestmark = pytest.mark.e2e

PRINTED_URL = re.compile(r"(?<!--url )https?://[^\s)]+")  # links, not a command's --url argument


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class StackRun:
    process: subprocess.Popen
    console: Path
    ports: dict[str, int]
    children: set[int]  # the service, the two exporters, Prometheus, Alertmanager: each leads its group

    def printed(self) -> str:
        return self.console.read_text()

    def ready_urls(self) -> list[str]:
        return [
            f"http://127.0.0.1:{self.ports['service']}/ready",
            f"http://127.0.0.1:{self.ports['prometheus']}/-/ready",
            f"http://127.0.0.1:{self.ports['alertmanager']}/-/ready",
            f"http://127.0.0.1:{self.ports['docs']}/docs/runbook.md",
            f"http://127.0.0.1:{self.ports['blackbox']}/-/healthy",
            f"http://127.0.0.1:{self.ports['node']}/metrics",
        ]


@pytest.fixture
def start_stack_run(tmp_path: Path, model_dir: Path) -> Iterator[Callable[[bool], StackRun]]:
    """Starts `python -m stack run` (SIGINT ignored at start if asked); whatever happens to the test, stops
    it afterwards and kills what is left of the process groups of everything it started."""
    started: list[StackRun] = []

    def start(sigint_ignored: bool) -> StackRun:
        names = ("service", "prometheus", "alertmanager", "slack", "docs", "blackbox", "node")
        ports = {name: free_port() for name in names}
        console = tmp_path / "console.txt"
        with console.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "stack", "run",
                    f"--run-dir={tmp_path / 'run'}",
                    f"--model-dir={model_dir}",
                    f"--slack-webhook-url-file={tmp_path / 'no-such-secret'}",
                    *(f"--{name}-port={port}" for name, port in ports.items()),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                # as a shell's `&`, nohup-like wrappers and some CI runners start it
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
            )  # fmt: skip
        run = StackRun(process, console, ports, set())
        started.append(run)
        poll(lambda: "Ctrl-C" in run.printed() or process.poll() is not None, 90, "the stack's URLs", 0.2)
        assert process.poll() is None, run.printed()
        run.children = child_pids(process.pid)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
        for pgid in run.children:
            if group_exists(pgid):
                os.killpg(pgid, signal.SIGKILL)


def follow(url: str) -> httpx.Response:
    return httpx.get(url, follow_redirects=True, timeout=10.0)


def anchor_target_exists(url: str, page: httpx.Response) -> bool:
    fragment = httpx.URL(url).fragment
    return not fragment or f'id="{fragment}"' in page.text


def assert_every_printed_link_opens_a_page(printed: str) -> None:
    urls = PRINTED_URL.findall(printed)
    assert len(urls) >= 5, printed  # the API docs, Prometheus' alerts and graph, Alertmanager, the runbook
    pages = {url: follow(url) for url in urls}
    assert {url: page.status_code for url, page in pages.items()} == dict.fromkeys(urls, 200)
    assert [url for url, page in pages.items() if not anchor_target_exists(url, page)] == []


@pytest.mark.parametrize(
    ("stop_signal", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "ctrl-c-when-started-with-sigint-ignored", "sigterm"],
)
def test_stack_run_serves_all_parts_prints_links_that_exist_and_stops_everything_on_a_signal(
    start_stack_run: Callable[[bool], StackRun], stop_signal: signal.Signals, sigint_ignored: bool
) -> None:
    run = start_stack_run(sigint_ignored)
    assert all(answers(url) for url in run.ready_urls())
    printed = run.printed()
    for name in ("service", "prometheus", "alertmanager", "docs", "blackbox", "node"):
        assert f"http://127.0.0.1:{run.ports[name]}" in printed
    assert "messages print here" in printed  # no webhook file: the local Slack stand-in is used
    assert re.search(r"^prediction log +\S*run/predictions\.jsonl", printed, re.M), printed
    assert_every_printed_link_opens_a_page(printed)
    assert len(run.children) == 5 and all(group_exists(pgid) for pgid in run.children)

    run.process.send_signal(stop_signal)
    assert run.process.wait(timeout=60) == 0, run.printed()
    assert [url for url in run.ready_urls() if answers(url)] == []
    assert [pgid for pgid in run.children if group_exists(pgid)] == []  # gunicorn workers included
