"""The command line: `python -m service` and each subcommand describe themselves; bad arguments exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from stack.processes import free_port


def run_service(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_the_subcommands() -> None:
    result = run_service("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m service")
    for command in ("train", "serve", "traffic"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "described_by"),
    [
        ("train", "--output"),
        ("serve", "SERVICE_"),
        ("traffic", "--scenario"),
    ],
)
def test_subcommand_help_describes_the_subcommand(command: str, described_by: str) -> None:
    result = run_service(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m service {command}")
    assert described_by in result.stdout


def test_no_subcommand_is_a_usage_error() -> None:
    result = run_service()
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_traffic_rejects_an_unknown_feature_with_exit_code_2(model_dir: Path) -> None:
    # a service that is not there: if the feature were accepted, the run would fail differently
    result = run_service(
        "traffic",
        "--model-dir",
        str(model_dir),
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--scenario",
        "drift",
        "--feature",
        "leaf_colour",
        "--duration",
        "0.1",
    )
    assert result.returncode == 2
    assert (
        "unknown feature 'leaf_colour'; one of sepal_length, sepal_width, petal_length, petal_width"
        in result.stderr
    )
