"""The traffic generator says how it is going while it runs: rate, sent, answered and errors."""

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from service.traffic import RowSource, Scenario, load_training_data, run
from stack.processes import free_port


def test_run_reports_progress_while_sending_and_once_at_the_end(model_dir: Path) -> None:
    training = load_training_data(model_dir)
    reports: list[tuple[dict, float]] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request is an error, quickly
    counts = asyncio.run(
        run(
            url,
            RowSource(training, Scenario("normal"), seed=0),
            rate=40,
            duration=1.0,
            progress=lambda so_far, elapsed: reports.append((dict(so_far), elapsed)),
            progress_seconds=0.25,
        )
    )
    assert len(reports) >= 3  # some while sending, one at the end
    sent = [report["sent"] for report, _ in reports]
    assert sent == sorted(sent) and 0 < sent[0] < 40
    assert reports[-1][0] == counts == {"sent": 40, "ok": 0, "outliers": 0, "errors": 40}


def test_traffic_command_prints_what_it_does_and_its_progress(model_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "service", "traffic", "--model-dir", str(model_dir), "--url", url]
    result = subprocess.run(
        [*command, "--rate", "20", "--duration", "0.5"], capture_output=True, text=True, timeout=60
    )
    lines = result.stderr.splitlines()
    assert lines[0] == f"traffic: normal to {url}, 20 requests/s for 0.5 s"
    assert re.fullmatch(
        r"traffic: +\d+ s of 0.5: 10 sent \([\d.]+/s\), 0 ok \(0 outliers\), 10 errors", lines[-1]
    )
    assert result.returncode == 1  # errors
