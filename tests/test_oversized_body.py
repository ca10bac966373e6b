"""A body over the limit, sent whole before the answer is read (as Python's urllib does), still gets its 413.

The real production server (gunicorn, one uvicorn worker with the service's http protocol) on a free port.
"""

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.http_protocol import LINGER_MAX_BYTES
from stack.processes import free_port
from stack.service_process import ServiceProcess, service_env, start_service

BODY_BYTES = 20 * 1024 * 1024
CHUNK = b" " * (1024 * 1024)
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    run_dir = tmp_path_factory.mktemp("oversized")
    process = start_service(service_env(model_dir, run_dir, free_port(), workers="1"), run_dir / "out.log")
    try:
        process.wait_for_workers(1, timeout=60)
        yield process
    finally:
        process.stop()


def test_urllib_sending_20_mib_reads_the_413_and_its_reason(server: ServiceProcess) -> None:
    request = urllib.request.Request(
        server.url + "/predict", data=b" " * BODY_BYTES, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    answer = json.loads(refused.value.read())
    assert (refused.value.code, answer["reason"]) == (413, "body_too_large")
    assert answer["detail"] == f"body has {BODY_BYTES} bytes; the limit is 1048576"


def test_urllib_sending_a_chunked_body_over_the_limit_reads_the_413(server: ServiceProcess) -> None:
    chunks = iter([CHUNK] * 20)  # no Content-Length: urllib sends it chunked
    request = urllib.request.Request(
        server.url + "/predict", data=chunks, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert (refused.value.code, json.loads(refused.value.read())["reason"]) == (413, "body_too_large")


def test_discarding_stops_at_its_bound_and_the_worker_serves_on(server: ServiceProcess) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {4 * LINGER_MAX_BYTES}\r\n\r\n".encode()
        )
        with pytest.raises(OSError):  # reset or broken pipe once the server stops discarding
            while sent < 4 * LINGER_MAX_BYTES:
                client.sendall(CHUNK)
                sent += len(CHUNK)
    # What the kernel buffers on both sides of a loopback connection is far below the 64 MiB bound.
    assert LINGER_MAX_BYTES <= sent < 2 * LINGER_MAX_BYTES
    response = httpx.post(server.url + "/predict", json={"data": [ROW]}, timeout=10)
    assert response.status_code == 200
