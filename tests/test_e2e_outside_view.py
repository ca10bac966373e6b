"""End to end, the service seen from outside: the real service (2 workers, /metrics served by the gunicorn
master on SERVICE_METRICS_PORT), the real blackbox and node exporters, Prometheus with the shipped rules,
Alertmanager with the shipped routing, and the local Slack stand-in.

When no worker can answer while the master still answers scrapes, `up` stays 1 and only the probes see it.
gunicorn kills a worker silent for its timeout (30 s) and starts another, so the test stops every worker,
and every new one as soon as it is forked, as a service whose workers keep hanging would; a finalizer
continues them all whatever happens.
"""

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import poll

from stack.drill import alert_title
from stack.processes import Stack, free_port, stack_on_free_ports
from stack.service_process import child_pids
from stack.slack_receiver import SlackReceiver

pytestmark = pytest.mark.e2e

PROBES = 'probe_success{job="prediction-service-probe"}'
STOP_POLL_SECONDS = 0.05  # a new worker takes far longer than this to import and load the models


class WorkerStopper(threading.Thread):
    """SIGSTOPs every child of the gunicorn master, new ones too, until `release()` continues them all."""

    def __init__(self, master_pid: int) -> None:
        super().__init__(name="worker-stopper", daemon=True)
        self._master_pid = master_pid
        self._released = threading.Event()
        self.stopped: set[int] = set()

    def run(self) -> None:
        while not self._released.wait(STOP_POLL_SECONDS):
            for pid in child_pids(self._master_pid) - self.stopped:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.add(pid)

    def release(self) -> None:
        self._released.set()
        if self.is_alive():
            self.join(timeout=5)
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # killed meanwhile by gunicorn's worker timeout
                pass


@pytest.fixture(scope="module")
def outside_stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, slack_receiver: SlackReceiver
) -> Iterator[Stack]:
    env = {"SERVICE_WORKERS": "2", "SERVICE_METRICS_PORT": str(free_port())}
    running = stack_on_free_ports(tmp_path_factory.mktemp("outside"), model_dir, slack_receiver.url, env)
    running.start()
    yield running
    running.stop()


def firing(name: str):
    return lambda message: "[FIRING" in alert_title(message) and name in alert_title(message)


def test_probes_succeed_and_workers_report_by_slot_on_a_healthy_service(outside_stack: Stack) -> None:
    poll(lambda: len(outside_stack.query(f"{PROBES} == 1")) == 3, 90, "3 successful probes", 2.0)
    statuses = outside_stack.query('probe_http_status_code{job="prediction-service-probe"}')
    assert {series["metric"]["endpoint"]: series["value"][1] for series in statuses} == {
        "/health": "200",
        "/ready": "200",
        "/predict": "200",
    }

    # The probes can succeed before the first service scrape after its workers took their slots (10 s apart).
    def worker_slots() -> list[str]:
        slots = outside_stack.query('service_worker_resident_memory_bytes{job="prediction-service"}')
        return sorted(series["metric"]["worker"] for series in slots)

    poll(lambda: worker_slots() == ["0", "1"], 60, "worker slots 0 and 1 in Prometheus", 2.0)
    assert outside_stack.query('up{job="node"} == 1')


def test_stopped_workers_page_from_outside_while_up_stays_1_and_resolve_when_continued(
    outside_stack: Stack, slack_receiver: SlackReceiver, request: pytest.FixtureRequest
) -> None:
    poll(lambda: len(outside_stack.query(f"{PROBES} == 1")) == 3, 90, "3 successful probes", 2.0)
    slack_receiver.clear()
    stopper = WorkerStopper(outside_stack.processes["service"].pid)
    request.addfinalizer(stopper.release)  # continue the workers even if an assertion fails
    stopper.start()

    # Probes fail within a probe interval and a timeout (~15 s), the alert fires 1 minute later and leaves
    # Alertmanager after group_wait (10 s).
    slack_receiver.wait_for(firing("PredictionServiceUnreachable"), timeout=240)
    assert outside_stack.query(f"{PROBES} == 0"), "the probes should fail"
    assert [series["value"][1] for series in outside_stack.query('up{job="prediction-service"}')] == ["1"]
    assert outside_stack.query('min_over_time(up{job="prediction-service"}[3m]) == 1')
    assert outside_stack.query('ALERTS{alertname="PredictionServiceDown"}') == []

    stopper.release()
    slack_receiver.wait_for(
        lambda message: (
            "[RESOLVED]" in alert_title(message) and "PredictionServiceUnreachable" in alert_title(message)
        ),
        timeout=240,
    )
    assert len(outside_stack.query(f"{PROBES} == 1")) == 3
