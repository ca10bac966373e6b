"""`python -m service logs`: DuckDB over the log files the service's own writer produced (current file and
rotated .gz parts), checked against the same numbers computed line by line in Python, and bad input."""

import csv
import gzip
import io
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from conftest import REPO_ROOT

from bench.log_data import REJECTED_EVERY, START, write_log
from service.__main__ import main
from service.log_queries import Baseline, FeatureDistribution
from service.logs_command import point_in_time

PREDICTIONS = 3000
RATE = 10.0  # requests per second of the simulated clock: 3000 predictions span 5 minutes


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """3000 logged predictions and 3 rejected requests, rotated at 128 KiB: .gz parts and a current file."""
    directory = tmp_path_factory.mktemp("log")
    write_log(
        model_dir,
        directory / "predictions.jsonl",
        PREDICTIONS,
        max_bytes=128 * 1024,
        chunk_rows=200,
        backup_count=50,
        rate=RATE,
    )
    return directory


def records(directory: Path) -> list[dict]:
    lines = []
    for path in sorted(directory.iterdir()):
        if path.suffix == ".gz":
            lines += gzip.decompress(path.read_bytes()).splitlines()
        elif path.suffix == ".jsonl":
            lines += path.read_bytes().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda record: record["timestamp"])


def per_minute(directory: Path) -> list[tuple[str, int]]:
    """(minute, predictions in it), counted from the lines."""
    counts: dict[str, int] = {}
    for record in records(directory):
        if record["status"] == 200:
            minute = datetime.fromisoformat(record["timestamp"]).replace(second=0, microsecond=0)
            key = minute.isoformat().replace("+00:00", "Z")
            counts[key] = counts.get(key, 0) + len(record["input"])
    return sorted(counts.items())


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def logs_args(directory: Path, model_dir: Path) -> list[str]:
    return ["--logs", str(directory / "predictions.jsonl*"), "--model-dir", str(model_dir)]


def test_the_log_has_rotated_gzip_parts_and_a_current_file(log_dir: Path) -> None:
    names = sorted(path.name for path in log_dir.iterdir())
    assert (
        "predictions.jsonl" in names
        and "predictions.jsonl.1.gz" in names
        and "predictions.jsonl.3.gz" in names
    )


def test_summary_equals_the_numbers_computed_line_by_line(log_dir: Path, model_dir: Path, capsys) -> None:
    code, out, err = run(capsys, "summary", "--format", "json", *logs_args(log_dir, model_dir))
    assert code == 0, err
    (window,) = json.loads(out)
    answered = [record for record in records(log_dir) if record["status"] == 200]
    rows = [row for record in answered for row in record["input"]]
    flags = [flag for record in answered for flag in record["is_outlier"]]
    labels = [label for record in answered for label in record["label"]]
    baseline = Baseline.from_model_dir(model_dir)
    assert window["predictions"] == len(rows) == PREDICTIONS
    assert window["outliers"] == sum(flags)
    assert window["outlier_ratio"] == pytest.approx(sum(flags) / len(rows), rel=1e-12)
    for index, name in enumerate(baseline.feature_names):
        mean = math.fsum(row[index] for row in rows) / len(rows)
        assert window[f"mean_{name}"] == pytest.approx(mean, rel=1e-12)
        training_mean = baseline.training_mean[index]
        assert window[f"mean_deviation_{name}"] == pytest.approx(
            (mean - training_mean) / training_mean, rel=1e-9
        )
    for label in baseline.labels:
        assert window[f"share_{label}"] == pytest.approx(labels.count(label) / len(labels), rel=1e-12)
    assert window["rejections"] == {"wrong_column_count": PREDICTIONS // REJECTED_EVERY}
    assert window["requests"] == PREDICTIONS + PREDICTIONS // REJECTED_EVERY
    assert 0 < window["latency_p50_ms"] <= window["latency_p99_ms"]
    files = len([path for path in log_dir.iterdir() if path.suffix in (".gz", ".jsonl")])
    assert f"read {files} log file(s)" in err and "unreadable" not in err


def test_summary_every_splits_into_windows_that_add_up(log_dir: Path, model_dir: Path, capsys) -> None:
    code, out, err = run(
        capsys, "summary", "--every", "1m", "--format", "json", *logs_args(log_dir, model_dir)
    )
    windows = json.loads(out)
    assert code == 0, err
    assert [(window["window_start"], window["predictions"]) for window in windows] == per_minute(log_dir)
    assert len(windows) == 6  # 3003 requests at 10 per second from START: 5 minutes and a few tenths


def test_summary_table_reads_one_window_per_column(log_dir: Path, model_dir: Path, capsys) -> None:
    code, out, _ = run(capsys, "summary", "--every", "1m", *logs_args(log_dir, model_dir))
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert code == 0
    assert lines["predictions"] == [str(count) for _, count in per_minute(log_dir)]
    assert lines["rejections"][0] == "wrong_column_count=1"


def test_since_until_and_model_version_select_lines(log_dir: Path, model_dir: Path, capsys) -> None:
    since, until = (START + timedelta(minutes=1)).isoformat(), (START + timedelta(minutes=3)).isoformat()
    args = ["summary", "--format", "json", "--since", since, "--until", until, *logs_args(log_dir, model_dir)]
    (window,) = json.loads(run(capsys, *args)[1])
    in_range = [
        count
        for start, count in per_minute(log_dir)
        if start in ("2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z")
    ]
    assert (window["predictions"], window["window_start"], window["window_end"]) == (
        sum(in_range),
        "2026-01-01T00:01:00Z",
        "2026-01-01T00:03:00Z",
    )
    code, out, err = run(capsys, "summary", "--model-version", "other", *logs_args(log_dir, model_dir))
    assert (code, out) == (0, "")
    assert "nothing in the selected range" in err


def test_outliers_lists_exactly_the_flagged_rows(log_dir: Path, model_dir: Path, capsys) -> None:
    code, out, err = run(capsys, "outliers", "--format", "csv", *logs_args(log_dir, model_dir))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    flagged = [
        (record["job_id"], index)
        for record in records(log_dir)
        if record["status"] == 200
        for index, flag in enumerate(record["is_outlier"])
        if flag
    ]
    assert [(row["job_id"], int(row["row_index"])) for row in rows] == flagged
    assert {row["is_outlier"] for row in rows} == {"True"}
    assert list(rows[0])[7:11] == list(Baseline.from_model_dir(Path(model_dir)).feature_names)


def test_show_gives_a_request_and_its_rows_or_its_rejection(log_dir: Path, model_dir: Path, capsys) -> None:
    code, out, _ = run(capsys, "show", "job-42", "--format", "json", *logs_args(log_dir, model_dir))
    (row,) = json.loads(out)
    (record,) = [record for record in records(log_dir) if record["job_id"] == "job-42"]
    assert code == 0
    assert [row["sepal_length"], row["sepal_width"], row["petal_length"], row["petal_width"]] == record[
        "input"
    ][0]
    assert (row["label"], row["is_outlier"], row["outlier_score"]) == (
        record["label"][0],
        record["is_outlier"][0],
        record["outlier_score"][0],
    )
    assert row["probability_setosa"] == record["prediction"][0][0]
    (rejected,) = json.loads(
        run(capsys, "show", "rejected-0", "--format", "json", *logs_args(log_dir, model_dir))[1]
    )
    assert (rejected["reason"], rejected["status"], rejected["input"]) == (
        "wrong_column_count",
        422,
        '{"data": [[1, 2, 3]]}',
    )
    code, out, err = run(capsys, "show", "no-such-job", *logs_args(log_dir, model_dir))
    assert (code, out) == (0, "") and "no request with job id 'no-such-job'" in err


def test_several_replicas_are_read_as_one_table(
    log_dir: Path, model_dir: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "replica-2"
    other.mkdir()
    write_log(model_dir, other / "predictions.jsonl", 500, max_bytes=256 * 1024, backup_count=10, seed=1)
    args = ["--logs", str(log_dir / "predictions.jsonl*"), "--logs", str(other / "predictions.jsonl*")]
    (window,) = json.loads(
        run(capsys, "summary", "--format", "json", "--model-dir", str(model_dir), *args)[1]
    )
    assert window["predictions"] == PREDICTIONS + 500


def test_probe_lines_are_left_out_of_the_model_tables_and_kept_in_probes(
    log_dir: Path, model_dir: Path, tmp_path: Path, capsys
) -> None:
    """The blackbox exporter's requests are logged with `"probe": true` and kept out of the model metrics;
    the log's tables leave them out too, or `summary` would not be the numbers the alerts use."""
    copy = copy_log(log_dir, tmp_path / "log")
    answered = next(record for record in records(log_dir) if record["status"] == 200)
    probe = {**answered, "job_id": "probe-job", "probe": True}
    with (copy / "predictions.jsonl").open("a") as log:
        log.write(json.dumps(probe) + "\n")
    args = logs_args(copy, model_dir)
    (window,) = json.loads(run(capsys, "summary", "--format", "json", *args)[1])
    assert (window["predictions"], window["requests"]) == (
        PREDICTIONS,
        PREDICTIONS + PREDICTIONS // REJECTED_EVERY,
    )
    query = (
        "SELECT (SELECT count(*) FROM probes WHERE job_id = 'probe-job') AS probes, "
        "(SELECT count(*) FROM lines WHERE job_id = 'probe-job') AS lines"
    )
    code, out, err = run(capsys, "sql", query, "--format", "json", *args)
    assert (code, json.loads(out)) == (0, [{"probes": 1, "lines": 0}]), err


def test_sql_runs_over_the_views(log_dir: Path, model_dir: Path, capsys) -> None:
    query = "SELECT count(*) AS n, count(DISTINCT job_id) AS jobs FROM predictions"
    code, out, _ = run(capsys, "sql", query, "--format", "json", *logs_args(log_dir, model_dir))
    assert (code, json.loads(out)) == (0, [{"n": PREDICTIONS, "jobs": PREDICTIONS}])
    code, _, err = run(capsys, "sql", "SELECT nope FROM predictions", *logs_args(log_dir, model_dir))
    assert code == 2 and err.startswith("error: the query failed") and "Traceback" not in err


def test_export_writes_parquet_of_the_predictions(
    log_dir: Path, model_dir: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "predictions.parquet"
    code, _, err = run(capsys, "export", "--output", str(output), *logs_args(log_dir, model_dir))
    assert code == 0, err
    ((count, outliers),) = duckdb.sql(f"SELECT count(*), count_if(is_outlier) FROM '{output}'").fetchall()
    assert (count, outliers) == (
        PREDICTIONS,
        sum(f for r in records(log_dir) for f in r.get("is_outlier", [])),
    )


# -- bad input -------------------------------------------------------------------------------------------


def copy_log(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """The command as a user runs it: a separate process, so a traceback would show on stderr."""
    return subprocess.run(
        [sys.executable, "-m", "service", "logs", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_missing_path_says_what_to_pass(model_dir: Path, tmp_path: Path) -> None:
    result = cli("summary", "--logs", str(tmp_path / "nothing*"), "--model-dir", str(model_dir))
    assert result.returncode == 2
    assert "no prediction log files match" in result.stderr and "--logs" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_location_is_the_make_run_log(model_dir: Path, tmp_path: Path) -> None:
    result = cli("summary", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 2 and ".run/predictions.jsonl*" in result.stderr


def test_missing_metadata_says_which_file(log_dir: Path, tmp_path: Path) -> None:
    result = cli("summary", "--logs", str(log_dir / "*"), "--model-dir", str(tmp_path))
    assert result.returncode == 2 and str(tmp_path / "metadata.json") in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_window_says_so(log_dir: Path, model_dir: Path) -> None:
    result = cli("outliers", "--since", "2030-01-01", *logs_args(log_dir, model_dir))
    assert (result.returncode, result.stdout) == (0, "")
    assert "nothing in the selected range" in result.stderr and "Traceback" not in result.stderr


def test_bad_time_is_refused_with_the_accepted_forms(log_dir: Path, model_dir: Path) -> None:
    result = cli("summary", "--since", "yesterday", *logs_args(log_dir, model_dir))
    assert result.returncode == 2 and "2026-01-01T12:00:00Z" in result.stderr and "15m" in result.stderr


def test_truncated_last_line_is_skipped_and_counted(log_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    broken = copy_log(log_dir, tmp_path / "log")
    current = broken / "predictions.jsonl"
    lines = current.read_bytes().splitlines(keepends=True)
    current.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # a crash in the middle of a write
    result = cli("summary", "--format", "json", *logs_args(broken, model_dir))
    assert result.returncode == 0, result.stderr
    assert "1 unreadable line(s) skipped" in result.stderr and "Traceback" not in result.stderr
    (window,) = json.loads(result.stdout)
    assert window["predictions"] == PREDICTIONS - 1


def test_truncated_gzip_part_uses_its_readable_lines(log_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    broken = copy_log(log_dir, tmp_path / "log")
    part = broken / "predictions.jsonl.2.gz"
    part_lines = len(gzip.decompress(part.read_bytes()).splitlines())
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a copy cut off half way
    result = cli("summary", "--format", "json", *logs_args(broken, model_dir))
    assert result.returncode == 0, result.stderr
    assert f"{part}: only its first" in result.stderr and "cut off" in result.stderr
    (window,) = json.loads(result.stdout)
    salvaged = int(result.stderr.split("only its first ")[1].split(" ")[0])
    assert 0 < salvaged < part_lines
    assert window["predictions"] + window["rejections"].get("wrong_column_count", 0) == (
        PREDICTIONS + PREDICTIONS // REJECTED_EVERY - part_lines + salvaged
    )


def test_part_that_is_not_gzip_is_skipped_with_a_message(
    log_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    broken = copy_log(log_dir, tmp_path / "log")
    part = broken / "predictions.jsonl.1.gz"
    part_lines = len(gzip.decompress(part.read_bytes()).splitlines())
    part.write_bytes(b"this is not gzip data\n" * 10)
    result = cli("summary", "--format", "json", *logs_args(broken, model_dir))
    assert result.returncode == 0, result.stderr
    assert f"{part}: only its first 0 line(s) were read: its gzip data is corrupt" in result.stderr
    (window,) = json.loads(result.stdout)
    assert window["requests"] == PREDICTIONS + PREDICTIONS // REJECTED_EVERY - part_lines


def test_serving_path_never_imports_duckdb() -> None:
    code = "import sys, service.__main__, service.app, service.server; print('duckdb' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_without_duckdb_the_command_says_how_to_install_it(log_dir: Path, model_dir: Path) -> None:
    code = (
        "import sys; sys.modules['duckdb'] = None; from service.__main__ import main; "
        f"sys.exit(main(['logs', 'summary', '--logs', {str(log_dir / '*')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 2
    assert "pip install -e '.[logs]'" in result.stderr and "Traceback" not in result.stderr


def test_every_logs_subcommand_has_help() -> None:
    for command in ("show", "outliers", "summary", "sql", "export", "report"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "--since" in result.stdout and "--format" in result.stdout, command


# -- the statistics --------------------------------------------------------------------------------------


def test_ks_statistic_and_psi_from_counts_equal_the_direct_computation() -> None:
    from scipy.stats import ks_2samp

    training = [1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 3.5, 4.0, 4.0, 5.0, 6.0, 6.0]
    served = [0.5, 1.0, 1.2, 2.0, 2.2, 2.0, 3.0, 3.5, 4.5, 7.0, 1.0, 2.0, 2.0, 6.5]
    edges = [1.25, 2.5, 4.5]  # drift bucket edges; the last bucket runs to +Inf
    bounds = [-math.inf, *edges, math.inf]

    def bin_shares(values: list[float]) -> list[float]:
        return [
            sum(1 for v in values if low < v <= high) / len(values)
            for low, high in zip(bounds, bounds[1:], strict=False)
        ]

    distribution = FeatureDistribution.for_training("x", training, edges, bin_shares(training))
    con = duckdb.connect()
    boundaries = ", ".join(f"'{value!r}'" for value in distribution.boundaries())
    values = ", ".join(f"({value})" for value in served)
    ((histogram,),) = con.sql(
        f"SELECT histogram(x, [{boundaries}]::DOUBLE[]) FROM (VALUES {values}) t(x)"
    ).fetchall()
    distribution.served = len(served)
    running = 0
    for boundary, count in sorted(histogram.items()):
        running += count
        distribution.served_at_or_below[boundary] = running
    assert distribution.ks_statistic() == pytest.approx(ks_2samp(served, training).statistic, abs=1e-12)
    # PSI directly: the buckets' shares, floored at half a row
    expected = sum(
        (max(s, 0.5 / len(served)) - max(t, 0.5 / len(training)))
        * math.log(max(s, 0.5 / len(served)) / max(t, 0.5 / len(training)))
        for s, t in zip(bin_shares(served), bin_shares(training), strict=True)
    )
    assert distribution.psi() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T12:00:00Z", "2026-01-01T12:00:00+00:00"),
        ("2026-01-01T12:00:00", "2026-01-01T12:00:00+00:00"),  # no zone: UTC
        ("2026-01-01T12:00:00Z-10m", "2026-01-01T11:50:00+00:00"),  # as the Slack messages write it
        ("2026-01-01T12:00:00-05:00", "2026-01-01T12:00:00-05:00"),  # a zone, not a duration
        ("2026-01-01T12:00:00+02:00-1h30m", "2026-01-01T10:30:00+02:00"),
    ],
)
def test_times_are_iso_8601_with_an_optional_duration(text: str, expected: str) -> None:
    assert point_in_time(text).isoformat() == expected
