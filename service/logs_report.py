"""`python -m service logs report`: one self-contained HTML page of the prediction log against the training
data. Pictures first (matplotlib, inline SVG: the page opens without a network), then the per-feature tests
with their statistic, threshold and sample size, as Evidently's reports show them.

Every number comes from `service.log_queries`; this module only draws and lays out.
"""

import html
import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from service.log_queries import FeatureDistribution, LogDatabase  # noqa: E402

# The lines the alerts draw (prometheus/rules/): ModelInputFeatureMeanDrift's tolerance around the
# training mean and ModelOutlierRatioHigh's threshold.
FEATURE_MEAN_TOLERANCE = 0.05
OUTLIER_RATIO_THRESHOLD = 0.20
# PSI's usual reading: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a significant one.
PSI_THRESHOLD = 0.25
TIME_SERIES_POINTS = 120

plt.rcParams.update(
    {
        "svg.fonttype": "none",  # text stays text: smaller files, selectable labels
        "svg.hashsalt": "prediction-log-report",  # the same data draws the same SVG
        "figure.dpi": 96,
        "font.size": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; } .grid figure { margin: 0; }
figure svg { display: block; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 4px 10px; border: 1px solid #ddd; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.fail { color: #b00020; font-weight: 600; } .pass { color: #1b5e20; } .note { color: #555; font-size: 13px; }
.warning { background: #fff4e5; border: 1px solid #f0c080; padding: 6px 10px; }
"""


def svg(figure: plt.Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG sits inside the HTML


def figure_html(picture: str, caption: str) -> str:
    return f'<figure role="img" aria-label="{html.escape(caption)}">{picture}</figure>'


def by_version(windows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    versions: dict[str, list[dict[str, Any]]] = {}
    for window in windows:
        versions.setdefault(window["model_version"], []).append(window)
    return versions


def distribution_plot(distribution: FeatureDistribution) -> str:
    figure, axes = plt.subplots(figsize=(3.4, 2.4))
    edges, counts = distribution.served_histogram()
    width = edges[1] - edges[0]
    total = sum(counts) or 1
    axes.bar(
        edges[:-1],
        [count / total / width for count in counts],
        width=width,
        align="edge",
        alpha=0.6,
        label=f"served (n={distribution.served})",
    )
    axes.hist(
        distribution.training,
        bins=edges,
        density=True,
        histtype="step",
        color="black",
        linewidth=1.2,
        label=f"training (n={len(distribution.training)})",
    )
    axes.set_title(distribution.name)
    axes.set_ylabel("density")
    axes.legend(fontsize=7)
    return svg(figure)


def time_plot(
    windows: list[dict[str, Any]],
    series: list[tuple[str, str]],
    title: str,
    ylabel: str,
    decorate: Callable[[Any], None] | None = None,
) -> str:
    """One line per (field, label) and model version, against the window start."""
    figure, axes = plt.subplots(figsize=(6.8, 2.4))
    for version, rows in by_version(windows).items():
        times = [row["window_start"] for row in rows]
        for field, label in series:
            values = [row[field] if row[field] is not None else float("nan") for row in rows]
            axes.plot(
                times, values, label=f"{label} ({version})" if len(series) > 1 else version, linewidth=1.2
            )
    if decorate is not None:
        decorate(axes)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7, loc="upper left")
    figure.autofmt_xdate()
    return svg(figure)


def mean_plot(windows: list[dict[str, Any]], feature: str, training_mean: float) -> str:
    def band(axes: Any) -> None:
        axes.axhline(training_mean, color="black", linewidth=1, label="training mean")
        axes.axhspan(
            training_mean * (1 - FEATURE_MEAN_TOLERANCE),
            training_mean * (1 + FEATURE_MEAN_TOLERANCE),
            color="green",
            alpha=0.12,
            label=f"±{FEATURE_MEAN_TOLERANCE:.0%}",
        )

    return time_plot(windows, [(f"mean_{feature}", feature)], f"mean of {feature}", "cm", band)


def overall(windows: list[dict[str, Any]], feature: str) -> float | None:
    """The mean over all windows, each window weighted by its predictions."""
    total = sum(window["predictions"] for window in windows if window[f"mean_{feature}"] is not None)
    if not total:
        return None
    return (
        sum(window[f"mean_{feature}"] * window["predictions"] for window in windows if window["predictions"])
        / total
    )


def number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def verdict(failed: bool | None) -> str:
    if failed is None:
        return "<td>–</td>"
    return '<td class="fail">differs</td>' if failed else '<td class="pass">ok</td>'


def tests_table(
    database: LogDatabase, windows: list[dict[str, Any]], distributions: dict[str, FeatureDistribution]
) -> str:
    baseline = database.baseline
    comparable = [window for window in windows if window["model_version"] == baseline.model_version]
    rows = []
    for name, training_mean in zip(baseline.feature_names, baseline.training_mean, strict=True):
        distribution = distributions[name]
        mean = overall(comparable, name)
        n_mean = sum(window["predictions"] for window in comparable)
        deviation = (mean - training_mean) / training_mean if mean is not None else None
        ks, critical, psi = distribution.ks_statistic(), distribution.ks_critical_value(), distribution.psi()
        n_training = len(distribution.training)
        rows.append(
            f"<tr><th>{html.escape(name)}</th>"
            f'<td class="num">{number(mean)} vs {number(training_mean)}</td>'
            f'<td class="num">{"–" if deviation is None else f"{deviation:+.2%}"}</td>'
            f'<td class="num">±{FEATURE_MEAN_TOLERANCE:.0%}</td><td class="num">{n_mean}</td>'
            f"{verdict(None if deviation is None else abs(deviation) > FEATURE_MEAN_TOLERANCE)}"
            f'<td class="num">{number(ks, 3)}</td><td class="num">{number(critical, 3)}</td>'
            f'<td class="num">{distribution.served} / {n_training}</td>'
            f"{verdict(None if ks is None or critical is None else ks > critical)}"
            f'<td class="num">{number(psi, 3)}</td><td class="num">{PSI_THRESHOLD}</td>'
            f'<td class="num">{distribution.served} / {n_training}</td>'
            f"{verdict(None if psi is None else psi > PSI_THRESHOLD)}</tr>"
        )
    return (
        "<table><tr><th rowspan=2>feature</th>"
        "<th colspan=5>mean deviation (as ModelInputFeatureMeanDrift)</th>"
        "<th colspan=4>Kolmogorov-Smirnov, two samples</th><th colspan=4>population stability index</th></tr>"
        "<tr><th>served vs training mean</th><th>deviation</th><th>threshold</th><th>n</th><th></th>"
        "<th>D</th><th>critical D (5%)</th><th>n served / training</th><th></th>"
        "<th>PSI</th><th>threshold</th><th>n served / training</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        f'<p class="note">Mean deviation over the predictions of model {html.escape(baseline.model_version)} '
        "(the version metadata.json describes). KS and PSI compare every selected row with the training rows "
        "(training_data.csv); PSI's bins are the drift buckets of metadata.json (near the training deciles, "
        "as the feature histograms'), an empty bin counts as half a row. Note: "
        "training values are rounded to 0.1 cm, so served values that are not rounded show a KS gap at "
        "each repeated training value even without any shift.</p>"
    )


def write_report(
    database: LogDatabase, output: Path, progress: Callable[[str], None] = lambda _: None
) -> None:
    baseline = database.baseline
    progress("report: per-window numbers…")
    every, windows = database.time_series(TIME_SERIES_POINTS)
    if not windows:
        progress("nothing in the selected range (check --since, --until, --model-version, --logs)")
        sections = ['<p class="warning">No prediction in the selected range.</p>']
        output.write_text(page(header(database, windows), sections), encoding="utf-8")
        return
    progress("report: distributions against the training data…")
    distributions = database.feature_distributions()
    progress("report: drawing…")
    sections = [
        "<h2>Served inputs against the training data</h2>",
        '<div class="grid">'
        + "".join(
            figure_html(distribution_plot(distribution), f"distribution of {name}")
            for name, distribution in distributions.items()
        )
        + "</div>",
        f"<h2>Feature means over time ({int(every.total_seconds())} s windows), with the ±5% band</h2>",
        '<div class="grid">'
        + "".join(
            figure_html(mean_plot(windows, name, mean), f"mean of {name} over time")
            for name, mean in zip(baseline.feature_names, baseline.training_mean, strict=True)
        )
        + "</div>",
        "<h2>Outliers, classes and latency over time</h2>",
        '<div class="grid">',
        figure_html(
            time_plot(
                windows,
                [("outlier_ratio", "outlier share")],
                "outlier share",
                "share of rows",
                lambda axes: axes.axhline(
                    OUTLIER_RATIO_THRESHOLD,
                    color="red",
                    linestyle="--",
                    label=f"{OUTLIER_RATIO_THRESHOLD:.0%}",
                ),
            ),
            "outlier share over time",
        ),
        figure_html(
            time_plot(
                windows, [(f"share_{label}", label) for label in baseline.labels], "class shares", "share"
            ),
            "class shares over time",
        ),
        figure_html(
            time_plot(
                windows, [("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")], "request latency", "ms"
            ),
            "latency over time",
        ),
        "</div>",
        "<h2>Per-feature tests</h2>",
        tests_table(database, windows, distributions),
    ]
    output.write_text(page(header(database, windows), sections), encoding="utf-8")


def header(database: LogDatabase, windows: list[dict[str, Any]]) -> str:
    predictions = sum(window["predictions"] for window in windows)
    first = min((window["window_start"] for window in windows), default=None)
    last = max((window["window_end"] for window in windows), default=None)
    versions = sorted({window["model_version"] for window in windows})
    warnings = [message for message in database.report.messages() if not message.startswith("read ")]
    return (
        f"<h1>Prediction log report</h1><p>{predictions} predictions of model version(s) "
        f"{html.escape(', '.join(versions)) or '–'}, from {first} to {last}; {len(database.report.files)} "
        f"log file(s); written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
        + "".join(f'<p class="warning">{html.escape(message)}</p>' for message in warnings)
    )


def page(header_html: str, sections: list[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Prediction log report</title>'
        f"<style>{STYLE}</style></head><body>{header_html}{''.join(sections)}</body></html>\n"
    )
