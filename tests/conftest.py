"""Shared fixtures: models trained once per session into a temporary folder, free ports."""

import socket
from pathlib import Path

import pytest

from service.training import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    train(directory)
    return directory
