"""Process metrics of the gunicorn workers, by slot: the real server (2 workers) with /metrics served by the
master on SERVICE_METRICS_PORT, a worker killed and replaced, requests held in flight."""

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import poll
from prometheus_client.parser import text_string_to_metric_families

from stack.processes import free_port
from stack.service_process import ServiceProcess, rss_bytes, service_env, start_service

ROW = [5.1, 3.5, 1.4, 0.2]
PER_SLOT = (
    "service_worker_cpu_seconds_total",
    "service_worker_resident_memory_bytes",
    "service_worker_open_fds",
    "service_worker_start_time_seconds",
)


class Server:
    def __init__(self, process: ServiceProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.metrics_url, timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def per_slot(self, name: str) -> dict[str, float]:
        return {
            dict(labels)["worker"]: value
            for (metric, labels), value in self.samples().items()
            if metric == name
        }

    def value(self, name: str) -> float:
        return self.samples()[(name, ())]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run_dir = tmp_path_factory.mktemp("workers")
    metrics_port = free_port()
    env = service_env(model_dir, run_dir, free_port(), workers="2", metrics_port=str(metrics_port))
    process = start_service(env, run_dir / "out.log")
    try:
        process.wait_for_workers(2, timeout=60)
        yield Server(process, metrics_port)
    finally:
        process.stop()


def test_each_worker_slot_reports_cpu_memory_fds_and_start_time(server: Server) -> None:
    for _ in range(20):
        assert httpx.post(server.process.url + "/predict", json={"data": [ROW]}).status_code == 200
    samples = {name: server.per_slot(name) for name in PER_SLOT}
    assert {name: sorted(values) for name, values in samples.items()} == {
        name: ["0", "1"] for name in PER_SLOT
    }
    resident = sorted(rss_bytes(pid) for pid in server.process.worker_pids())
    # /proc read twice a moment apart: the same order of magnitude, not the same number
    assert all(
        0.5 < value / min(resident) < 2 for value in samples["service_worker_resident_memory_bytes"].values()
    )
    assert all(value > 0 for value in samples["service_worker_cpu_seconds_total"].values())
    assert all(
        value > 3 for value in samples["service_worker_open_fds"].values()
    )  # stdio and a socket, at least
    assert all(
        time.time() - 600 < value <= time.time()
        for value in samples["service_worker_start_time_seconds"].values()
    )
    assert server.value("service_workers") == 2


def test_a_killed_worker_counts_one_restart_and_its_replacement_takes_its_slot(server: Server) -> None:
    restarts = server.value("service_worker_lifetime_seconds_count")
    young = server.samples()[("service_worker_lifetime_seconds_bucket", (("le", "60.0"),))]
    started = server.per_slot("service_worker_start_time_seconds")
    workers = server.process.worker_pids()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    server.process.wait_for_workers(2, timeout=60, exclude={victim})
    poll(lambda: server.value("service_worker_lifetime_seconds_count") == restarts + 1, 30, "a restart", 0.2)
    restarted = server.per_slot("service_worker_start_time_seconds")
    assert sorted(restarted) == ["0", "1"]
    changed = {slot for slot in restarted if restarted[slot] != started[slot]}
    assert len(changed) == 1 and restarted[changed.pop()] > max(started.values())
    # it lived for the duration of this module's tests so far, under a minute
    assert server.samples()[("service_worker_lifetime_seconds_bucket", (("le", "60.0"),))] == young + 1


def test_requests_waiting_for_their_body_are_in_flight_until_answered(server: Server) -> None:
    body = b'{"data": [[5.1, 3.5, 1.4, 0.2]]}'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    clients = [socket.create_connection(("127.0.0.1", server.process.port), timeout=10) for _ in range(3)]
    try:
        for client in clients:
            client.sendall(head + body[:5])  # the request is read; its task waits for the rest of the body
        poll(lambda: server.value("http_requests_in_flight") == 3, 30, "3 requests in flight", 0.2)
        for client in clients:
            client.sendall(body[5:])
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        poll(lambda: server.value("http_requests_in_flight") == 0, 30, "no request in flight", 0.2)
    finally:
        for client in clients:
            client.close()
