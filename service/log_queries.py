"""The prediction log as DuckDB tables, and the named queries over them.

The one place that knows the log's line format (written by `service.predictor`) and turns it into tables;
`service.logs_command` and `service.logs_report` only call the queries here. DuckDB reads the JSON lines
where they lie, the current file and the gzip-compressed rotated parts alike, without an import step, so
a query's memory depends on what it computes, not on the size of the log.

Tables (views) of a `LogDatabase`, each limited to the time range and model version it was opened with:
- `lines`: one row per readable log line (request), as written.
- `predictions`: one row per predicted row: features as named columns, a probability column per label,
  `label`, `is_outlier`, `outlier_score`, and the request's `job_id`, `endpoint`, `model_version`,
  `status`, `latency_ms`, `timestamp`, `row_index` (the row's place in its request) and `file`.
- `rejections`: one row per rejected request with `reason`, `message` and the `input` as received.
- `probes`: the lines of synthetic checks (the blackbox exporter's, marked `"probe": true`), which the
  other views leave out as the model metrics do: they are not the model's traffic.
"""

import glob
import json
import math
import tempfile
import zlib
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

# The columns of a log line with their types; anything else in a line is ignored. `input` is the rows as
# sent for an answered request, the body as text for a rejected one: JSON, cast where it is read.
LINE_COLUMNS = {
    "timestamp": "TIMESTAMPTZ",
    "job_id": "VARCHAR",
    "endpoint": "VARCHAR",
    "model_version": "VARCHAR",
    "latency_ms": "DOUBLE",
    "status": "INTEGER",
    "input": "JSON",
    "prediction": "DOUBLE[][]",
    "label": "VARCHAR[]",
    "is_outlier": "BOOLEAN[]",
    "outlier_score": "DOUBLE[]",
    "error": "STRUCT(reason VARCHAR, message VARCHAR)",
    "probe": "BOOLEAN",
}
LOG_FILE_SUFFIXES = (".jsonl", ".gz")  # the current file and its rotated parts (`name.jsonl.N.gz`)
MAX_LINE_BYTES = 16 * 1024 * 1024  # a batch of max_batch_rows rows is ~0.5 MB; room for larger settings

PLOT_BINS = 40  # bins of the served distribution in the report's pictures
KS_COEFFICIENT_5_PERCENT = 1.358  # c(α) of the two-sample Kolmogorov-Smirnov test at α = 0.05


class LogError(Exception):
    """A problem the user can fix (no file, unreadable metadata, bad SQL); the message says what."""


@dataclass(frozen=True)
class Baseline:
    """What the log is compared with: the model's metadata.json and training_data.csv."""

    model_version: str
    feature_names: tuple[str, ...]
    labels: tuple[str, ...]
    training_mean: tuple[float, ...]
    # per feature: the drift buckets' upper edges (the last bucket runs to +Inf) and the training shares
    bucket_edges: tuple[tuple[float, ...], ...]
    bucket_training_shares: tuple[tuple[float, ...], ...]
    training_rows: tuple[tuple[float, ...], ...]  # feature values only, in feature_names' order

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> "Baseline":
        metadata_path = model_dir / "metadata.json"
        training_path = model_dir / "training_data.csv"
        try:
            metadata = json.loads(metadata_path.read_text())
            names = tuple(metadata["feature_names"])
            lines = training_path.read_text().splitlines()
            header = lines[0].split(",")
            columns = [header.index(name) for name in names]
            rows = tuple(
                tuple(float(values[column]) for column in columns)
                for values in (line.split(",") for line in lines[1:] if line)
            )
            return cls(
                metadata["model_version"],
                names,
                tuple(metadata["labels"]),
                tuple(float(value) for value in metadata["training_mean"]),
                tuple(tuple(edges) for edges in metadata["feature_bucket_edges"]),
                tuple(tuple(shares) for shares in metadata["feature_bucket_training_shares"]),
                rows,
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise LogError(
                f"cannot read the model's {metadata_path} or {training_path} ({error}); pass --model-dir "
                "with the model that wrote the log (`python -m service train` writes both)"
            ) from error


@dataclass
class ReadReport:
    """What could not be read: shown by every command, so nothing is skipped silently."""

    files: list[Path]
    unreadable_lines: int = 0
    damaged_files: list[str] = field(default_factory=list)  # one message per part read only in part

    def messages(self) -> list[str]:
        found = [f"{len(self.files)} log file(s)"]
        if self.unreadable_lines:
            found.append(f"{self.unreadable_lines} unreadable line(s) skipped (not JSON, or cut off)")
        return ["read " + ", ".join(found)] + self.damaged_files


def log_files(patterns: list[str]) -> list[Path]:
    """The log files matching the glob patterns (the current file and its `.N.gz` parts), in name order."""
    files = sorted(
        {
            Path(name)
            for pattern in patterns
            for name in glob.glob(pattern)
            if name.endswith(LOG_FILE_SUFFIXES) and Path(name).is_file()
        }
    )
    if not files:
        raise LogError(
            f"no prediction log files match {' '.join(patterns)} (expected *.jsonl and *.jsonl.N.gz); "
            "pass --logs GLOB, e.g. --logs '.run/predictions.jsonl*'"
        )
    return files


def salvage_gzip(path: Path, into: Path) -> tuple[Path, str] | None:
    """If `path` is a gzip part DuckDB cannot finish, write its readable beginning (whole lines) to a file
    in `into` and say what was lost; None if the part reads to its end."""
    if path.suffix != ".gz":
        return None
    copy = into / (path.name.removesuffix(".gz") + ".salvaged.jsonl")
    readable = 0
    problem = None
    with open(path, "rb") as source, open(copy, "wb") as target:
        decompressor = zlib.decompressobj(wbits=31)
        tail = b""
        try:
            while chunk := source.read(1024 * 1024):
                data = tail + decompressor.decompress(chunk)
                cut = data.rfind(b"\n") + 1
                target.write(data[:cut])
                readable += data.count(b"\n", 0, cut)
                tail = data[cut:]
            if not decompressor.eof:
                problem = "it ends before its gzip stream does (cut off)"
        except zlib.error as error:
            problem = f"its gzip data is corrupt ({error})"
    if problem is None:
        copy.unlink()
        return None
    return copy, f"{path}: only its first {readable} line(s) were read: {problem}"


def to_sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return f"TIMESTAMPTZ '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class LogDatabase:
    """An in-memory DuckDB whose views read the given log files; limit them with since/until/model_version."""

    def __init__(
        self,
        files: list[Path],
        baseline: Baseline,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        model_version: str | None = None,
        memory_limit: str = "1GB",
    ) -> None:
        self.baseline = baseline
        self.since, self.until, self.model_version = since, until, model_version
        self.connection = duckdb.connect(config={"memory_limit": memory_limit})
        self._scratch = tempfile.TemporaryDirectory(prefix="prediction-log-")
        self.report = ReadReport(list(files))
        self._repaired = False
        self._create_views(list(files))

    def close(self) -> None:
        self.connection.close()
        self._scratch.cleanup()

    def __enter__(self) -> "LogDatabase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the tables ------------------------------------------------------------------------------------

    def _read_json(self, files: list[Path]) -> str:
        columns = (
            "{"
            + ", ".join(f"{to_sql_literal(k)}: {to_sql_literal(v)}" for k, v in LINE_COLUMNS.items())
            + "}"
        )
        names = "[" + ", ".join(to_sql_literal(str(path)) for path in files) + "]"
        # ignore_errors: a line that is not JSON (cut off by a crash, say) becomes a row of NULLs, counted
        return (
            f"read_json({names}, format = 'newline_delimited', columns = {columns}, ignore_errors = true, "
            f"maximum_object_size = {MAX_LINE_BYTES}, filename = 'file')"
        )

    def _repair(self) -> None:
        """After DuckDB failed on a file: replace each part it cannot read to its end by its readable lines
        (or leave it out), and build the views again. Only then is every file read once on its own."""
        self._repaired = True
        readable = []
        for path in self.report.files:
            try:
                self.connection.execute(f"SELECT count(*) FROM {self._read_json([path])}").fetchall()
                readable.append(path)
                continue
            except duckdb.Error as error:
                salvaged = salvage_gzip(path, Path(self._scratch.name))
                if salvaged is None:
                    self.report.damaged_files.append(f"{path}: skipped, unreadable ({error})")
                    continue
            copy, message = salvaged
            readable.append(copy)
            self.report.damaged_files.append(message)
        for view in ("rejections", "predictions", "lines_or_unreadable", "probes", "lines", "raw_lines"):
            self.connection.execute(f"DROP VIEW {view}")
        self._create_views(readable)

    def _create_views(self, files: list[Path]) -> None:
        sql = self.connection.execute
        filters = []
        if self.since is not None:
            filters.append(f"timestamp >= {to_sql_literal(self.since)}")
        if self.until is not None:
            filters.append(f"timestamp < {to_sql_literal(self.until)}")
        if self.model_version is not None:
            filters.append(f"model_version = {to_sql_literal(self.model_version)}")
        in_range = " AND ".join(filters) or "true"
        selected = f"probe IS NOT TRUE AND {in_range}"
        if files:
            source = self._read_json(files)
        else:  # every file unreadable: empty tables, and the report says why
            columns = ", ".join(f"NULL::{kind} AS {name}" for name, kind in LINE_COLUMNS.items())
            source = f"(SELECT {columns}, NULL::VARCHAR AS file WHERE false)"
        # A line that is not a record (not JSON, cut off) reads as NULLs: `readable` is false for it.
        # `input` is rows (answered) or the body as text (rejected): `input_rows` is it cast where it can be.
        sql(
            "CREATE VIEW raw_lines AS SELECT *, timestamp IS NOT NULL AND status IS NOT NULL AS readable, "
            f"TRY_CAST(input AS DOUBLE[][]) AS input_rows FROM {source}"
        )
        sql(f"CREATE VIEW lines AS SELECT * EXCLUDE (readable) FROM raw_lines WHERE readable AND {selected}")
        sql(
            "CREATE VIEW probes AS SELECT * EXCLUDE (readable) FROM raw_lines "
            f"WHERE readable AND probe AND {in_range}"
        )
        # the selected lines and the unreadable ones, for the queries that count both in one pass
        sql(f"CREATE VIEW lines_or_unreadable AS SELECT * FROM raw_lines WHERE NOT readable OR ({selected})")

        features = ", ".join(
            f"row_input[{index}] AS {quoted(name)}"
            for index, name in enumerate(self.baseline.feature_names, 1)
        )
        probabilities = ", ".join(
            f"row_prediction[{index}] AS {quoted('probability_' + label)}"
            for index, label in enumerate(self.baseline.labels, 1)
        )
        # Parallel UNNESTs in one SELECT are zipped: row i of input with row i of every result list.
        sql(
            f"""
            CREATE VIEW predictions AS
            SELECT timestamp, job_id, endpoint, model_version, status, latency_ms, row_index,
                   {features}, {probabilities}, label, is_outlier, outlier_score, file
            FROM (
                SELECT timestamp, job_id, endpoint, model_version, status, latency_ms, file,
                       UNNEST(range(len(label))) AS row_index,
                       UNNEST(input_rows) AS row_input,
                       UNNEST(prediction) AS row_prediction,
                       UNNEST(label) AS label,
                       UNNEST(is_outlier) AS is_outlier,
                       UNNEST(outlier_score) AS outlier_score
                FROM lines WHERE status = 200 AND label IS NOT NULL
            )
            """
        )
        sql(
            """
            CREATE VIEW rejections AS
            SELECT timestamp, job_id, endpoint, model_version, status, latency_ms,
                   error.reason AS reason, error.message AS message,
                   CASE WHEN json_type(input) = 'VARCHAR' THEN input ->> '$' ELSE input::VARCHAR END AS input,
                   file
            FROM lines WHERE error IS NOT NULL
            """
        )

    def count_unreadable_lines(self) -> int:
        """Lines of the files that are not a log record (one more pass over the files)."""
        ((count,),) = self.connection.execute("SELECT count(*) FROM raw_lines WHERE NOT readable").fetchall()
        self.report.unreadable_lines = count
        return count

    # -- the named queries ----------------------------------------------------------------------------

    def query(self, sql: str, parameters: list | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of any SQL over the views; a DuckDB error becomes a LogError."""
        try:
            result = self.connection.execute(sql, parameters or [])
        except duckdb.IOException as error:  # a damaged gzip part, most likely: read around it, once
            if self._repaired:
                raise LogError(f"cannot read the log: {error}") from error
            self._repair()
            return self.query(sql, parameters)
        except duckdb.Error as error:
            raise LogError(f"the query failed: {error}") from error
        if result.description is None:
            return [], []
        return [column[0] for column in result.description], result.fetchall()

    def show(self, job_id: str) -> tuple[list[str], list[tuple]]:
        """The request with this job id: one row per predicted row, or its rejection."""
        columns, rows = self.query(
            "SELECT * EXCLUDE (file) FROM predictions WHERE job_id = ? ORDER BY timestamp, row_index",
            [job_id],
        )
        if rows:
            return columns, rows
        return self.query(
            "SELECT * EXCLUDE (file) FROM rejections WHERE job_id = ? ORDER BY timestamp", [job_id]
        )

    def outliers(self, limit: int | None = None) -> tuple[list[str], list[tuple]]:
        """The rows the outlier detector flagged, oldest first."""
        sql = (
            "SELECT * EXCLUDE (file) FROM predictions WHERE is_outlier ORDER BY timestamp, job_id, row_index"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql)

    def export(self, table: str, output: Path) -> None:
        """Write one of the views to a Parquet file."""
        if table not in ("predictions", "rejections", "lines"):
            raise LogError(f"no table {table!r}")
        self.query(f"COPY (SELECT * FROM {table}) TO {to_sql_literal(str(output))} (FORMAT parquet)")

    def summary(self, every: timedelta | None = None) -> list[dict[str, Any]]:
        """Per window (of `every`, or the whole range) and model version, the numbers the model quality
        alerts use: predictions, outlier share, per-feature mean and its deviation from the training mean,
        class shares, request latency p50/p99, rejections by reason. One pass over the files, which also
        counts the unreadable lines. Windows without a line do not appear."""
        baseline = self.baseline
        bucket = (
            "NULL"
            if every is None
            else f"time_bucket(INTERVAL '{int(every.total_seconds())} seconds', timestamp)"
        )
        answered = "FILTER (WHERE status = 200 AND label IS NOT NULL)"
        feature_sums = ", ".join(
            f"sum(list_sum(list_transform(input_rows, lambda r: r[{index}]))) {answered}"
            for index in range(1, len(baseline.feature_names) + 1)
        )
        label_counts = ", ".join(
            f"sum(list_count(list_filter(label, lambda l: l = {to_sql_literal(name)}))) {answered}"
            for name in baseline.labels
        )
        _, rows = self.query(
            f"""
            SELECT readable, window_start, model_version,
                   count(*), min(timestamp), max(timestamp),
                   sum(len(label)) {answered},
                   sum(list_count(list_filter(is_outlier, lambda o: o))) {answered},
                   quantile_cont(latency_ms, [0.5, 0.99]),
                   histogram(error.reason) FILTER (WHERE error IS NOT NULL),
                   {feature_sums}, {label_counts}
            FROM (
                SELECT CASE WHEN readable THEN {bucket} END AS window_start, * EXCLUDE (model_version),
                       CASE WHEN readable THEN model_version END AS model_version
                FROM lines_or_unreadable
            )
            GROUP BY readable, window_start, model_version
            ORDER BY window_start, model_version
            """
        )
        windows = []
        self.report.unreadable_lines = 0
        n_features = len(baseline.feature_names)
        for row in rows:
            readable, window_start, model_version, requests, first, last, predictions, outliers = row[:8]
            latency, rejections = row[8:10]
            sums, label_counts_ = row[10 : 10 + n_features], row[10 + n_features :]
            if not readable:
                self.report.unreadable_lines = requests
                continue
            predictions = int(predictions or 0)
            outliers = int(outliers or 0)
            window: dict[str, Any] = {
                "window_start": self.since or first if every is None else window_start,
                "window_end": self.until or last if every is None else window_start + every,
                "model_version": model_version,
                "predictions": predictions,
                "outliers": outliers,
                "outlier_ratio": outliers / predictions if predictions else None,
            }
            comparable = model_version == baseline.model_version
            for name, total, training_mean in zip(
                baseline.feature_names, sums, baseline.training_mean, strict=True
            ):
                mean = total / predictions if predictions else None
                window[f"mean_{name}"] = mean
                window[f"mean_deviation_{name}"] = (
                    (mean - training_mean) / training_mean
                    if mean is not None and comparable and training_mean
                    else None
                )
            for name, count in zip(baseline.labels, label_counts_, strict=True):
                window[f"share_{name}"] = (count or 0) / predictions if predictions else None
            window["requests"] = requests
            window["latency_p50_ms"], window["latency_p99_ms"] = latency or (None, None)
            window["rejections"] = dict(sorted((rejections or {}).items()))
            windows.append(window)
        return windows

    def feature_distributions(self) -> dict[str, "FeatureDistribution"]:
        """Per feature, the served values against the training values, from one pass: one DuckDB histogram
        per feature over every boundary the tests and pictures need (just below and at each training value
        for KS, the drift buckets' edges for PSI, equal-width bins for the picture). No value is kept."""
        baseline = self.baseline
        distributions = {}
        aggregates = []
        for index, name in enumerate(baseline.feature_names):
            distribution = FeatureDistribution.for_training(
                name,
                [row[index] for row in baseline.training_rows],
                list(baseline.bucket_edges[index]),
                list(baseline.bucket_training_shares[index]),
            )
            boundaries = ", ".join(f"'{value!r}'" for value in distribution.boundaries())
            aggregates.append(f"histogram({quoted(name)}, [{boundaries}]::DOUBLE[])")
            distributions[name] = distribution
        _, rows = self.query(f"SELECT count(*), {', '.join(aggregates)} FROM predictions")
        served, *histograms = rows[0]
        for distribution, histogram in zip(distributions.values(), histograms, strict=True):
            distribution.served = served
            running = 0
            for boundary, count in sorted((histogram or {}).items()):
                running += count
                distribution.served_at_or_below[boundary] = running
        return distributions

    def time_series(self, points: int = 120) -> tuple[timedelta, list[dict[str, Any]]]:
        """`summary` with a window chosen so the range has about `points` of them (at least 10 s)."""
        first, last = self.query("SELECT min(timestamp), max(timestamp) FROM lines")[1][0]
        if first is None:
            return timedelta(seconds=10), []
        start = self.since or first
        end = self.until or last
        seconds = max(10, round((end - start).total_seconds() / points))
        every = timedelta(seconds=seconds)
        return every, self.summary(every)


@dataclass
class FeatureDistribution:
    """One feature's served values against its training values. The served side is kept as counts at or
    below a fixed set of boundaries (filled in by `LogDatabase.feature_distributions`)."""

    name: str
    training: list[float]  # sorted
    bucket_edges: list[float]  # upper edges of the drift buckets (metadata.json); the last runs to +Inf
    bucket_training_shares: list[float]
    plot_low: float
    plot_high: float
    served: int = 0
    served_at_or_below: dict[float, int] = field(default_factory=dict)

    @classmethod
    def for_training(
        cls, name: str, values: list[float], bucket_edges: list[float], bucket_training_shares: list[float]
    ) -> "FeatureDistribution":
        training = sorted(values)
        span = (training[-1] - training[0]) or 1.0
        low, high = training[0] - 0.5 * span, training[-1] + 0.5 * span
        return cls(name, training, bucket_edges, bucket_training_shares, low, high)

    @property
    def points(self) -> list[float]:
        return sorted(set(self.training))

    def plot_edges(self) -> list[float]:
        width = (self.plot_high - self.plot_low) / PLOT_BINS
        return [self.plot_low + width * index for index in range(PLOT_BINS + 1)]

    def boundaries(self) -> list[float]:
        just_below = [math.nextafter(point, -math.inf) for point in self.points]
        return sorted({*just_below, *self.points, *self.bucket_edges, *self.plot_edges()})

    def served_share_at_or_below(self, boundary: float) -> float:
        return self.served_at_or_below.get(boundary, 0) / self.served

    def training_share_at_or_below(self, boundary: float) -> float:
        return bisect_right(self.training, boundary) / len(self.training)

    def ks_statistic(self) -> float | None:
        """Two-sample Kolmogorov-Smirnov D, the largest gap between the two empirical CDFs. Between two
        training values the training CDF is flat while the served one rises, so the largest gap lies just
        below or at a training value: exactly the boundaries counted."""
        if not self.served:
            return None
        gaps = [
            abs(self.served_share_at_or_below(boundary) - self.training_share_at_or_below(boundary))
            for point in self.points
            for boundary in (math.nextafter(point, -math.inf), point)
        ]
        return max(gaps)

    def ks_critical_value(self) -> float | None:
        """D beyond which the samples differ at the 5% level (asymptotic: c(0.05) · sqrt((n + m) / nm))."""
        if not self.served:
            return None
        n, m = self.served, len(self.training)
        return KS_COEFFICIENT_5_PERCENT * ((n + m) / (n * m)) ** 0.5

    def psi(self) -> float | None:
        """Population stability index over the drift buckets of metadata.json (those of the feature
        histogram); an empty bucket counts as half a row."""
        if not self.served:
            return None
        cumulative = [0.0, *(self.served_share_at_or_below(edge) for edge in self.bucket_edges), 1.0]
        served = [upper - lower for lower, upper in zip(cumulative, cumulative[1:], strict=False)]
        floor_served, floor_training = 0.5 / self.served, 0.5 / len(self.training)
        index = 0.0
        for served_share, training_share in zip(served, self.bucket_training_shares, strict=True):
            s, t = max(served_share, floor_served), max(training_share, floor_training)
            index += (s - t) * math.log(s / t)
        return index

    def served_histogram(self) -> tuple[list[float], list[int]]:
        """The picture's bins: edges and served counts (values outside the edges are left out)."""
        edges = self.plot_edges()
        cumulative = [self.served_at_or_below.get(edge, 0) for edge in edges]
        return edges, [upper - lower for lower, upper in zip(cumulative, cumulative[1:], strict=False)]
