"""`python -m bench.logs` at a tiny size: it writes its log, runs every command and writes its table."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_bench_logs_measures_every_command_and_writes_the_table(tmp_path: Path, model_dir: Path) -> None:
    results = tmp_path / "logs.md"
    command = [
        sys.executable, "-m", "bench.logs", "--predictions", "300", "--model-dir", str(model_dir),
        "--work-dir", str(tmp_path / "work"), "--results", str(results),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 300 |")]
    commands = [row.split(" | ")[4] for row in rows]
    assert commands == [
        "floor: decompress and count the lines",
        "logs summary",
        "logs summary --every 5m",
        "logs report",
    ]
    assert (tmp_path / "work" / "300" / "report.html").exists()
