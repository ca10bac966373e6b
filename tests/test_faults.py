"""Faults with real processes: a worker killed mid-load, recycling; Alertmanager, Slack, Prometheus down.

Each scenario runs once (module fixtures) and its tests check one property each. Every wait is bounded
polling; every process is stopped in a `finally`.
"""

import asyncio
import fcntl
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import poll
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from service.app import create_app
from service.metrics import ServiceMetrics
from service.multiproc_compaction import fold_dead_worker, folding_lock, multiprocess_registry
from service.settings import Settings
from service.traffic import Scenario
from stack.drill import SteadyTraffic
from stack.processes import Stack, free_port, stack_on_free_ports
from stack.service_process import cpu_seconds, service_env, start_service
from stack.slack_receiver import SlackReceiver

CONNECTIONS = 8
STARTUP_SECONDS = 60.0
POLL_SECONDS = 0.1
SAMPLE_SECONDS = 0.2  # how often a scenario scrapes /metrics while its load runs
FAR_AWAY_ROW = [100.0, 100.0, 100.0, 100.0]


def request_rows(count: int) -> list[list[float]]:
    rows = load_iris().data.tolist()
    return [FAR_AWAY_ROW if index % 10 == 9 else rows[index % len(rows)] for index in range(count)]


# --- load with several connections --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    status: int | None  # None: the connection failed
    job_id: str | None
    error: str | None


class Load(threading.Thread):
    """POST /predict for each row from `connections` concurrent clients, a new connection per request.

    Without keep-alive the kernel hands each connection to whichever worker accepts first, so every worker
    gets a share, and a request in flight on a killed worker fails alone rather than its whole connection.
    """

    def __init__(self, url: str, rows: list[list[float]], connections: int = CONNECTIONS) -> None:
        super().__init__(name="load", daemon=True)
        self._url = url
        self._rows = rows
        self._connections = connections
        self._next = 0
        self.outcomes: list[Outcome] = []  # appended by the load thread only

    def run(self) -> None:
        asyncio.run(self._send_all())

    async def _send_all(self) -> None:
        limits = httpx.Limits(max_connections=self._connections, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self._url, limits=limits, timeout=30.0) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self._connections)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while self._next < len(self._rows):
            row = self._rows[self._next]
            self._next += 1
            started = time.monotonic()
            try:
                response = await client.post("/predict", json={"data": [row]})
            except httpx.TransportError as error:
                self.outcomes.append(Outcome(started, None, None, repr(error)))
            else:
                self.outcomes.append(
                    Outcome(started, response.status_code, response.json().get("job_id"), None)
                )

    def answered(self) -> int:
        return sum(outcome.status == 200 for outcome in list(self.outcomes))

    @property
    def ok(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == 200]

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status != 200]


# --- scraping -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    predictions: float  # sum of model_predictions_total over labels
    answered: float  # http_requests_total{handler="/predict", method="POST", status="200"}


def scrape(url: str, attempts: int = 5) -> Totals:
    """The service's totals; a scrape whose connection lands on a dying worker is retried."""
    for attempt in range(attempts):
        try:
            response = httpx.get(url + "/metrics", timeout=10.0)
            response.raise_for_status()
            break
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
    predictions = answered = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "model_predictions_total":
                predictions += sample.value
            elif sample.name == "http_requests_total" and sample.labels == {
                "handler": "/predict",
                "method": "POST",
                "status": "200",
            }:
                answered += sample.value
    return Totals(predictions, answered)


def never_decrease(samples: list[Totals]) -> bool:
    return all(
        later.predictions >= earlier.predictions and later.answered >= earlier.answered
        for earlier, later in zip(samples, samples[1:], strict=False)
    )


def logged_job_ids(log_file: Path) -> list[str]:
    return [json.loads(line)["job_id"] for line in log_file.read_bytes().splitlines()]


# --- a worker killed with SIGKILL during load ---------------------------------------------------------

KILL_REQUESTS = 1200
KILL_AFTER_ANSWERED = 300


@dataclass
class KillRun:
    load: Load
    killed_pid: int
    killed_at: float
    workers_before: set[int]
    workers_after: set[int]
    dead_at: float  # when the killed worker had stopped running
    samples: list[Totals]
    final: Totals
    logged: list[str]
    server_output: str


def busiest(pids: set[int], seconds: float = 0.5) -> int:
    """The process that used the most CPU time during the next `seconds`: a worker with requests in flight."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(seconds)  # a measuring interval, not a wait for a condition
    return max(pids, key=lambda pid: cpu_seconds(pid) - before[pid])


@pytest.fixture(scope="module")
def kill_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> KillRun:
    run_dir = tmp_path_factory.mktemp("sigkill")
    log_file = run_dir / "predictions.jsonl"
    env = service_env(model_dir, run_dir, free_port(), workers="2", log_file=str(log_file))
    service = start_service(env, run_dir / "server-output.txt")
    try:
        workers_before = service.wait_for_workers(2, STARTUP_SECONDS)
        load = Load(service.url, request_rows(KILL_REQUESTS))
        samples = [scrape(service.url)]
        load.start()
        poll(lambda: load.answered() >= KILL_AFTER_ANSWERED, 60, "answers", POLL_SECONDS)
        samples.append(scrape(service.url))
        killed_pid = busiest(workers_before)
        killed_at = time.monotonic()
        os.kill(killed_pid, signal.SIGKILL)
        poll(lambda: killed_pid not in service.worker_pids(), 10, "the killed worker to stop", POLL_SECONDS)
        dead_at = time.monotonic()
        workers_after = service.wait_for_workers(2, STARTUP_SECONDS, exclude={killed_pid})
        while load.is_alive():
            samples.append(scrape(service.url))
            time.sleep(SAMPLE_SECONDS)
        load.join()
        final = scrape(service.url)
        samples.append(final)
        assert service.stop() == 0  # graceful: the live workers flush the prediction log
        return KillRun(
            load=load,
            killed_pid=killed_pid,
            killed_at=killed_at,
            workers_before=workers_before,
            workers_after=workers_after,
            dead_at=dead_at,
            samples=samples,
            final=final,
            logged=logged_job_ids(log_file),
            server_output=service.output_tail(200),
        )
    finally:
        service.stop()


@pytest.mark.serving
def test_gunicorn_replaces_a_worker_killed_with_sigkill(kill_run: KillRun) -> None:
    assert "was sent SIGKILL" in kill_run.server_output, kill_run.server_output
    assert len(kill_run.workers_after) == 2
    assert kill_run.killed_pid not in kill_run.workers_after
    assert len(kill_run.workers_before & kill_run.workers_after) == 1


@pytest.mark.serving
def test_sigkill_fails_only_the_requests_in_flight_on_the_killed_worker(kill_run: KillRun) -> None:
    failed = kill_run.load.failed
    assert len(kill_run.load.outcomes) == KILL_REQUESTS
    assert len(failed) <= CONNECTIONS, [outcome.error for outcome in failed]
    assert all(outcome.status is None for outcome in failed)  # lost connections, never an error status
    assert all(outcome.started < kill_run.dead_at for outcome in failed)
    started_after_death = [o for o in kill_run.load.outcomes if o.started > kill_run.dead_at]
    assert len(started_after_death) >= 100  # the load went on well past the kill


@pytest.mark.serving
def test_predictions_total_keeps_the_killed_workers_counts_and_never_doubles_them(kill_run: KillRun) -> None:
    # The killed worker answered hundreds of requests: losing its file would put the total far below the
    # answers, counting it twice far above. Requests in flight may have been counted without an answer.
    answered = len(kill_run.load.ok)
    assert answered <= kill_run.final.predictions <= answered + len(kill_run.load.failed)
    assert answered <= kill_run.final.answered <= answered + len(kill_run.load.failed)


@pytest.mark.serving
def test_scraped_totals_never_decrease_across_the_kill(kill_run: KillRun) -> None:
    assert len(kill_run.samples) >= 5
    assert never_decrease(kill_run.samples), kill_run.samples


@pytest.mark.serving
def test_sigkill_loses_log_lines_of_the_last_moments_before_the_kill_only(kill_run: KillRun) -> None:
    # Lines wait in the worker for up to FLUSH_SECONDS (50 ms) before a thread writes them, so a SIGKILL
    # loses the lines of the requests the killed worker answered just before (a known limit, reported).
    # Allow 1 s for a loaded machine; every earlier answer and every answer of the other workers is logged.
    missing = [o for o in kill_run.load.ok if o.job_id not in set(kill_run.logged)]
    assert all(o.started > kill_run.killed_at - 1.0 for o in missing), len(missing)
    assert len(kill_run.logged) == len(set(kill_run.logged))  # and no line is written twice


# --- worker recycling (SERVICE_MAX_REQUESTS) ----------------------------------------------------------

RECYCLE_AFTER = 25
RECYCLE_REQUESTS = 1000
FILES_PER_WORKER = 4  # counter, histogram, live max and live sum gauges
MASTER_FILES = 3  # the master's own: worker lifetime histogram, capacity and (unused) in-flight gauges


@dataclass
class RecycleRun:
    load: Load
    workers_booted: int
    samples: list[Totals]
    final: Totals
    files: list[str]
    most_files: int


@pytest.fixture(scope="module")
def recycle_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RecycleRun:
    run_dir = tmp_path_factory.mktemp("recycle")
    env = service_env(
        model_dir,
        run_dir,
        free_port(),
        workers="2",
        max_requests=str(RECYCLE_AFTER),
        log_file=str(run_dir / "predictions.jsonl"),
    )
    service = start_service(env, run_dir / "server-output.txt")
    try:
        service.wait_for_workers(2, STARTUP_SECONDS)
        load = Load(service.url, request_rows(RECYCLE_REQUESTS))
        samples = [scrape(service.url)]
        most_files = 0
        load.start()
        while load.is_alive():
            samples.append(scrape(service.url))
            most_files = max(most_files, len(list(service.multiproc_dir.glob("*.db"))))
            time.sleep(SAMPLE_SECONDS)
        load.join()
        service.wait_for_workers(2, STARTUP_SECONDS)
        final = scrape(service.url)
        samples.append(final)
        files = sorted(path.name for path in service.multiproc_dir.glob("*.db"))
        booted = len(re.findall(r"Booting worker with pid", service.output.read_text(errors="replace")))
        return RecycleRun(load, booted, samples, final, files, most_files)
    finally:
        service.stop()


@pytest.mark.serving
def test_workers_were_recycled_many_times(recycle_run: RecycleRun) -> None:
    # A worker stops after 25 to 27 requests (jitter 10%), as uvicorn checks the count every 0.1 s: it
    # serves 25 to about 60 requests, so 1000 requests need 17 to 40 workers (18 to 26 seen here).
    assert recycle_run.workers_booted >= 10


@pytest.mark.serving
def test_recycled_workers_leave_a_bounded_number_of_metric_files(recycle_run: RecycleRun) -> None:
    # The files of the 2 live workers and the master, plus at most one archive per folded type, however many
    # have died.
    bound = 2 * FILES_PER_WORKER + MASTER_FILES + 2
    assert len(recycle_run.files) <= bound, recycle_run.files
    # While recycling: a dying and a starting worker at most on top.
    assert recycle_run.most_files <= bound + 2 * FILES_PER_WORKER


@pytest.mark.serving
def test_totals_stay_exact_across_recycling(recycle_run: RecycleRun) -> None:
    answered = len(recycle_run.load.ok)
    # A request the recycling dropped (the test below says none is) never reached the app: nothing to count.
    assert (recycle_run.final.predictions, recycle_run.final.answered) == (answered, answered)


@pytest.mark.serving
def test_scraped_totals_never_decrease_across_recycling(recycle_run: RecycleRun) -> None:
    assert len(recycle_run.samples) >= 5
    assert never_decrease(recycle_run.samples), recycle_run.samples


@pytest.mark.serving
def test_worker_recycling_drops_no_request(recycle_run: RecycleRun) -> None:
    assert [outcome.error for outcome in recycle_run.load.failed] == []


def multiprocess_totals(directory: Path) -> dict[tuple[str, tuple], float]:
    collector = MultiProcessCollector(None, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def write_values(path: Path, values: dict[tuple[str, str], float]) -> None:
    """A metric file as a worker leaves it: (metric, label value) -> value."""
    mmaped = MmapedDict(str(path))
    for (name, label), value in values.items():
        mmaped.write_value(mmap_key(name, name, ["label"], [label], "help"), value, 0.0)
    mmaped.close()


def test_folding_dead_workers_keeps_every_total_and_leaves_one_archive_per_type(tmp_path: Path) -> None:
    write_values(tmp_path / "counter_101.db", {("requests_total", "a"): 3, ("requests_total", "b"): 1})
    write_values(tmp_path / "counter_102.db", {("requests_total", "a"): 5})
    write_values(tmp_path / "counter_103.db", {("requests_total", "c"): 2})
    write_values(tmp_path / "histogram_101.db", {("latency_seconds_count", "a"): 4})
    before = multiprocess_totals(tmp_path)

    fold_dead_worker(tmp_path, 101)
    fold_dead_worker(tmp_path, 102)
    fold_dead_worker(tmp_path, 104)  # exited before writing any file

    assert multiprocess_totals(tmp_path) == before
    assert sorted(path.name for path in tmp_path.glob("*.db")) == [
        "counter_103.db",
        "counter_archive.db",
        "histogram_archive.db",
    ]


def test_a_scrape_waits_while_a_dead_worker_is_being_folded(tmp_path: Path) -> None:
    registry = multiprocess_registry(tmp_path, os.getpid())
    scraped = threading.Event()
    scrape = threading.Thread(target=lambda: (generate_latest(registry), scraped.set()))
    with folding_lock(tmp_path, fcntl.LOCK_EX):
        scrape.start()
        assert not scraped.wait(0.3)  # bounded: proves the scrape is held while the lock is taken
    assert scraped.wait(5)
    scrape.join()


# --- readiness ----------------------------------------------------------------------------------------


def test_ready_is_503_until_the_models_are_loaded(model_dir: Path) -> None:
    app = create_app(Settings(model_dir=model_dir), metrics=ServiceMetrics(CollectorRegistry()))
    client = TestClient(app)  # not entered: the app's startup (which loads the predictor) has not run
    before = client.get("/ready")
    with client:
        after = client.get("/ready")
    assert (before.status_code, before.json()) == (503, {"ready": False})
    assert after.status_code == 200


# --- Alertmanager, Slack and Prometheus down ----------------------------------------------------------

TRAFFIC_RATE = 50  # the outlier alert needs 200 predictions in its 2-minute window
MAX_TRAFFIC_SECONDS = 300  # the traffic thread stops by itself even if a test is interrupted
ALERT = "ModelOutlierRatioHigh"


def metric_sum(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def firing_in_prometheus(stack: Stack) -> bool:
    return bool(stack.query(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}'))


def is_firing_message(message: dict) -> bool:
    title = message["payload"]["attachments"][0]["title"]
    return title.startswith("[FIRING") and ALERT in title


@dataclass
class AlertingStack:
    stack: Stack
    receiver: SlackReceiver
    traffic: SteadyTraffic


@pytest.fixture(scope="module")
def alerting(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertingStack]:
    run_dir = tmp_path_factory.mktemp("alerting")
    with SlackReceiver() as receiver:
        stack = stack_on_free_ports(run_dir, model_dir, receiver.url, {"SERVICE_WORKERS": "2"})
        stack.start()
        outliers = Scenario("outliers", outlier_fraction=0.4)
        traffic = SteadyTraffic(stack.url("service"), model_dir, TRAFFIC_RATE, MAX_TRAFFIC_SECONDS, outliers)
        try:
            yield AlertingStack(stack, receiver, traffic)
        finally:
            if traffic.is_alive():
                traffic.stop()
            stack.stop()


@pytest.mark.e2e
def test_firing_alert_reaches_slack_after_alertmanager_and_then_slack_recover(
    alerting: AlertingStack,
) -> None:
    stack, receiver, traffic = alerting.stack, alerting.receiver, alerting.traffic
    stack.stop_process("alertmanager")
    traffic.start()

    # The alert fires while Alertmanager is down: Prometheus fails to deliver it.
    poll(lambda: firing_in_prometheus(stack), 180, f"{ALERT} firing in Prometheus", interval=1.0)
    poll(
        lambda: metric_sum(stack.url("prometheus"), "prometheus_notifications_errors_total") > 0,
        30,
        "Prometheus to fail sending to the stopped Alertmanager",
        interval=1.0,
    )

    # Alertmanager comes back (same port and storage) while Slack answers 500. Prometheus re-sends firing
    # alerts every --rules.alert.resend-delay (1m by default); Alertmanager then retries Slack.
    receiver.failing = True
    stack.start_alertmanager()
    poll(
        lambda: (
            metric_sum(
                stack.url("alertmanager"),
                "alertmanager_notification_requests_failed_total",
                integration="slack",
            )
            >= 2
        ),
        120,
        "Alertmanager to fail sending to Slack twice",
        interval=1.0,
    )
    assert [message for message in receiver.messages if is_firing_message(message)] == []

    receiver.failing = False
    receiver.wait_for(is_firing_message, timeout=90)
    assert len([message for message in receiver.messages if is_firing_message(message)]) == 1
    assert traffic.failures == []


@pytest.mark.e2e
def test_service_keeps_serving_while_prometheus_is_down(alerting: AlertingStack) -> None:
    stack, traffic = alerting.stack, alerting.traffic
    if not traffic.is_alive():
        traffic.start()
    stack.stop_process("prometheus")
    before = metric_sum(stack.url("service"), "model_predictions_total")
    sent = traffic.sent
    poll(lambda: traffic.sent >= sent + 2 * TRAFFIC_RATE, 30, "two more seconds of traffic", POLL_SECONDS)
    statuses = [
        httpx.post(stack.url("service") + "/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}).status_code
        for _ in range(20)
    ]
    assert statuses == [200] * 20
    assert metric_sum(stack.url("service"), "model_predictions_total") >= before + 20
    traffic.stop()
    assert traffic.failures == []
