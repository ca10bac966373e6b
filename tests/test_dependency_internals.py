"""The private parts of prometheus-client and uvicorn the service relies on (docs/design.md lists them).

Each test fails at once, with the part named, when an upgrade changes one of them; without these, the
service would quietly fall back to slower paths, or the real-server tests would fail minutes later.
"""

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http_protocol import (
    FIRST_REQUEST_GRACE_SECONDS,
    IDLE_CLOSE_GRACE_SECONDS,
    CoalescingHttpToolsProtocol,
)
from service.metrics import BoundHistogram, bind_counter, bind_histogram, child_with_buckets

BUCKETS = (0.5, 1.0, 2.0)
VALUES = [0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 7.5, -1.0, 0.5]  # on and between every bound, and above


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("seconds", "help", ["stage"], buckets=BUCKETS, registry=registry)


# --- prometheus-client: histogram and counter children --------------------------------------------------


def test_bound_histogram_observations_equal_the_childs_own() -> None:
    """BoundHistogram writes a child's `_buckets` (non-cumulative) and `_sum` by its `_upper_bounds`."""
    own, bound, vectorised = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    own_child = histogram(own).labels("a")
    for value in VALUES:
        own_child.observe(value)
    bound_child = BoundHistogram(histogram(bound).labels("a"))
    for value in VALUES:
        bound_child.observe(value)
    BoundHistogram(histogram(vectorised).labels("a")).observe_many(np.array(VALUES))
    assert samples(bound) == samples(own)
    assert samples(vectorised) == samples(own)


def test_a_child_gets_its_own_buckets_from_the_parents_kwargs() -> None:
    """child_with_buckets swaps the parent's `_kwargs` for one `labels()` call."""
    registry = CollectorRegistry()
    parent = histogram(registry)
    child_with_buckets(parent, (10.0, 20.0), "wide").observe(15.0)
    parent.labels("default").observe(15.0)
    exposed = samples(registry)
    assert exposed[("seconds_bucket", frozenset({("stage", "wide"), ("le", "10.0")}))] == 0.0
    assert exposed[("seconds_bucket", frozenset({("stage", "wide"), ("le", "20.0")}))] == 1.0
    assert ("seconds_bucket", frozenset({("stage", "wide"), ("le", "0.5")})) not in exposed
    assert exposed[("seconds_bucket", frozenset({("stage", "default"), ("le", "2.0")}))] == 0.0


def test_single_process_children_are_bound_as_they_are() -> None:
    registry = CollectorRegistry()
    counter = Counter("requests", "help", registry=registry)
    assert bind_counter(counter) is counter
    assert type(bind_histogram(histogram(registry).labels("a"))) is BoundHistogram


MULTIPROCESS_CHECK = textwrap.dedent(
    """
    import json

    from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values

    from service.metrics import FileCounter, FileHistogram, bind_counter, bind_histogram

    registry = CollectorRegistry()
    counter = bind_counter(Counter("requests", "help", registry=registry))
    seconds = bind_histogram(Histogram("seconds", "help", buckets=(0.5, 1.0), registry=registry))
    counter.inc(2.0)
    seconds.observe(0.7)
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    print(json.dumps({
        "value_class": values.ValueClass.__name__,
        "counter": type(counter) is FileCounter,
        "histogram": type(seconds) is FileHistogram,
        "samples": {
            s.name + str(sorted(s.labels.items())): s.value for f in collected.collect() for s in f.samples
        },
    }))
    """
)


def test_multiprocess_mode_installs_the_fast_values_and_binds_children_to_their_files(tmp_path: Path) -> None:
    """service.metric_values replaces `values.ValueClass` (the library's `MmapedValue`) and writes its file
    format; bind_* then find the values through a counter's `_value` and a histogram's `_sum` and `_buckets`.
    """
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # must be set before the import
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_CHECK], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    checked = json.loads(result.stdout)
    assert (checked["value_class"], checked["counter"], checked["histogram"]) == (
        "FastMmapedValue",
        True,
        True,
    )
    assert checked["samples"] == {
        "requests_total[]": 2.0,
        "seconds_bucket[('le', '0.5')]": 0.0,
        "seconds_bucket[('le', '1.0')]": 1.0,
        "seconds_bucket[('le', '+Inf')]": 1.0,
        "seconds_count[]": 1.0,
        "seconds_sum[]": 0.7,
    }


# --- uvicorn: the httptools protocol ---------------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    """What uvicorn's protocol sees of a TCP connection: every write, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer_ok(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
WAIT_SECONDS = 5.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Run the event loop until `condition()` holds, for at most WAIT_SECONDS."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def connected() -> tuple[CoalescingHttpToolsProtocol, RecordingTransport]:
    config = Config(answer_ok, http=CoalescingHttpToolsProtocol, lifespan="off", access_log=False)
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def answered(protocol: CoalescingHttpToolsProtocol) -> bool:
    return protocol.cycle is not None and protocol.cycle.response_complete


def test_uvicorn_protocol_writes_the_head_and_the_body_in_one_write() -> None:
    async def exchange() -> list[bytes]:
        protocol, transport = await connected()
        protocol.data_received(REQUEST)
        await until(lambda: answered(protocol), "the response")
        return transport.writes

    (write,) = asyncio.run(exchange())
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nok")


def test_uvicorn_protocol_shutdown_answers_a_request_on_an_idle_connection_then_closes() -> None:
    async def exchange() -> tuple[bool, list[bytes], bool]:
        protocol, transport = await connected()
        protocol.data_received(REQUEST)
        await until(lambda: answered(protocol), "the first response")
        protocol.shutdown()  # the worker stops while the connection is idle
        closed_at_once = transport.closed
        protocol.data_received(REQUEST)  # a request that was already on its way
        await until(lambda: transport.closed, "the connection to close")
        return closed_at_once, transport.writes, transport.closed

    closed_at_once, writes, closed = asyncio.run(exchange())
    assert not closed_at_once  # uvicorn's own shutdown closes an idle connection at once
    assert len(writes) == 2 and writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in writes[1].lower()
    assert closed


def test_uvicorn_protocol_shutdown_closes_a_connection_idle_for_the_grace_period() -> None:
    async def idle() -> tuple[bool, int]:
        protocol, transport = await connected()
        protocol.data_received(REQUEST)
        await until(lambda: answered(protocol), "the first response")
        protocol.shutdown()
        closed_at_once = transport.closed
        await until(lambda: transport.closed, f"the close after {IDLE_CLOSE_GRACE_SECONDS} s")
        return closed_at_once, len(transport.writes)

    assert asyncio.run(idle()) == (False, 1)


def test_uvicorn_protocol_shutdown_waits_longer_for_a_new_connections_first_request() -> None:
    """A client that connected just before the worker began to stop has not sent yet: slower than the idle
    grace, its request is still answered (then the connection closes)."""
    assert 3 * IDLE_CLOSE_GRACE_SECONDS < FIRST_REQUEST_GRACE_SECONDS  # the client below is late for one only

    async def late_first_request() -> tuple[list[bytes], bool]:
        protocol, transport = await connected()
        protocol.shutdown()
        await asyncio.sleep(3 * IDLE_CLOSE_GRACE_SECONDS)  # the slow client, on purpose
        protocol.data_received(REQUEST)
        await until(lambda: transport.closed, "the close after the answer")
        return transport.writes, transport.closed

    writes, closed = asyncio.run(late_first_request())
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in writes[0].lower() and closed


def test_uvicorn_protocol_shutdown_closes_a_new_connection_that_never_sends() -> None:
    async def silent() -> list[bytes]:
        protocol, transport = await connected()
        protocol.shutdown()
        await until(lambda: transport.closed, f"the close after {FIRST_REQUEST_GRACE_SECONDS} s")
        return transport.writes

    assert asyncio.run(silent()) == []
