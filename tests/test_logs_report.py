"""`python -m service logs report`: a self-contained HTML page, opened offline in a real headless Chromium
whose screenshot must show the plots."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.log_data import write_log
from stack.processes import require_binary

PREDICTIONS = 4000
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# matplotlib's first line colour (C0, #1f77b4) and the outlier threshold's red line, as Chromium paints them
PLOT_BLUE = (31, 119, 180)
THRESHOLD_RED = (255, 0, 0)
# Anything that would make the page fetch from the network: scripts, styles, images, fonts, frames.
EXTERNAL_REFERENCE = re.compile(
    r"""<(script|link|img|iframe|source|object|embed)\b[^>]*\b(src|href|data)\s*=|@import|url\(\s*['"]?(https?:)?//""",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("report")
    write_log(model_dir, directory / "predictions.jsonl", PREDICTIONS, max_bytes=256 * 1024, backup_count=10)
    output = directory / "report.html"
    result = subprocess.run(
        [
            sys.executable, "-m", "service", "logs", "report", "--output", str(output),
            "--logs", str(directory / "predictions.jsonl*"), "--model-dir", str(model_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}" in result.stderr
    return output


def test_report_references_nothing_outside_the_file(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert EXTERNAL_REFERENCE.findall(page) == []
    assert "<script" not in page


def test_report_has_its_pictures_first_then_the_tests_table(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    # 4 distributions, 4 means over time, outlier share, class shares, latency
    assert page.count("<svg") == 11
    assert page.index("<svg") < page.index("<table")
    for feature in FEATURES:
        assert f"<tr><th>{feature}</th>" in page
    for heading in (
        "Kolmogorov-Smirnov",
        "population stability index",
        "mean deviation",
        "n served / training",
    ):
        assert heading in page
    assert f"{PREDICTIONS} / 150" in page  # every test says its sample sizes


def screenshot(page: Path, output: Path) -> Image.Image:
    """Chromium with every host name unresolvable: the page must render from the file alone."""
    result = subprocess.run(
        [
            require_binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", f"--screenshot={output}",
            "--window-size=1400,2400", page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0 and output.exists(), result.stderr
    return Image.open(output).convert("RGB")


def pixels_near(image: Image.Image, color: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(
        count
        for count, pixel in image.getcolors(maxcolors=1 << 24)
        if all(abs(channel - target) <= tolerance for channel, target in zip(pixel, color, strict=True))
    )


def test_chromium_screenshot_shows_the_plots(report: Path, tmp_path: Path) -> None:
    image = screenshot(report, tmp_path / "report.png")
    width, height = image.size
    not_white = width * height - pixels_near(image, (255, 255, 255), tolerance=8)
    assert not_white > 0.05 * width * height  # text alone covers far less than a page of plots
    assert pixels_near(image, PLOT_BLUE) > 1000  # lines of the served data (a page without plots: 0)
    assert pixels_near(image, THRESHOLD_RED) > 100  # the 20% outlier line


def test_report_of_an_empty_window_says_so(report: Path, model_dir: Path) -> None:
    output = report.with_name("empty.html")
    result = subprocess.run(
        [
            sys.executable, "-m", "service", "logs", "report", "--output", str(output),
            "--since", "2030-01-01", "--logs", str(report.with_name("predictions.jsonl*")),
            "--model-dir", str(model_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "nothing in the selected range" in result.stderr and "Warning" not in result.stderr
    assert "No prediction in the selected range." in output.read_text(encoding="utf-8")
