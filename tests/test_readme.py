"""The README's promises that code can check: its first commands, its settings table, and that the commands
it shows work as pasted."""

import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from service.settings import Settings

README = (REPO_ROOT / "README.md").read_text()


def test_readme_starts_with_the_run_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make run", "make test"]
    assert README.index("```sh") < README.index("\n## ")


def test_settings_table_lists_every_setting_with_its_description() -> None:
    rows = dict(re.findall(r"^\| `(SERVICE_\w+)` \| [^|]+ \| (.+?) \|$", README, re.M))
    expected = {f"SERVICE_{name.upper()}": field.description for name, field in Settings.model_fields.items()}
    assert rows == expected


SHELL_LINES = [
    line.split("  #")[0].strip()
    for block in re.findall(r"```sh\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip()
]
MAKEFILE_TARGETS = set(re.findall(r"^([\w.-]+):", (REPO_ROOT / "Makefile").read_text(), re.M))


def test_shell_commands_work_as_pasted_without_an_activated_environment() -> None:
    # A bare `python -m service ...` outside the virtual environment ends in ModuleNotFoundError.
    assert [line for line in SHELL_LINES if re.match(r"(python3?|pip) ", line)] == []


def test_every_make_target_the_readme_names_exists() -> None:
    named = {target for line in SHELL_LINES for target in re.findall(r"^make ([\w-]+)", line)}
    assert named and named <= MAKEFILE_TARGETS, named - MAKEFILE_TARGETS


@pytest.mark.parametrize(
    "command",
    sorted(
        {
            match.group(1)
            for line in SHELL_LINES
            if (match := re.match(r"\.venv/bin/python -m ([\w.]+)", line))
        }
    ),
)
def test_every_module_the_readme_runs_exists_and_answers_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", command, "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr


def test_the_top_says_where_the_prediction_log_is_and_how_to_stop() -> None:
    top = README[: README.index("\n## API")]
    assert ".run/predictions.jsonl" in top and "Ctrl-C" in top
