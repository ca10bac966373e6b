"""Shared fixtures: models trained once per session into a temporary folder, free ports."""

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import strategies as st

from service.training import train
from stack.processes import Stack, stack_on_free_ports
from stack.slack_receiver import SlackReceiver

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The longest module (about 10 minutes: it waits out an alert's keep_firing_for) is collected first, so that
# with `make test`'s workers one of them starts it at once and the others share the rest meanwhile.
FIRST_MODULES = ("test_e2e_alerts.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST_MODULES)  # stable: the rest keep their order


def any_json(max_leaves: int) -> st.SearchStrategy[object]:
    """Any JSON value a client could send, NaN and infinities included (`json.dumps` writes them)."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


class MemorySink:
    """A prediction log sink that keeps the bytes it is given, and whether it was closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[bytes]:
        assert self.data == b"" or self.data.endswith(b"\n")
        return bytes(self.data).split(b"\n")[:-1]

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]


def poll(condition: Callable[[], T], timeout: float, what: str, interval: float = 1.0) -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    train(directory)
    return directory


@pytest.fixture(scope="module")
def slack_receiver() -> Iterator[SlackReceiver]:
    with SlackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")  # one per test module: one module's traffic must not skew another's windows
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, slack_receiver: SlackReceiver
) -> Iterator[Stack]:
    """The real service (2 workers), Prometheus and Alertmanager with the shipped configs, on free ports."""
    running = stack_on_free_ports(
        tmp_path_factory.mktemp("stack"), model_dir, slack_receiver.url, {"SERVICE_WORKERS": "2"}
    )
    running.start()
    yield running
    running.stop()
