"""The README's promises that code can check: its first commands and its settings table."""

import re

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
