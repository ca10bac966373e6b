"""`python -m service logs show|outliers|summary|sql|export|report`: read the prediction log.

The arguments and the output formats only; the tables and queries are `service.log_queries`' and the HTML
page is `service.logs_report`'s. Both import DuckDB, so they are imported here only when a logs command
runs: the serving path never loads it.
"""

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

DEFAULT_LOGS = ".run/predictions.jsonl*"  # where `make run` writes the log and its rotated parts
FORMATS = ("table", "json", "csv")
INSTALL_HINT = (
    "`python -m service logs` needs DuckDB (and matplotlib for `report`), which the service itself does "
    "not: pip install -e '.[logs]' (in this repository: .venv/bin/pip install -e '.[logs]')"
)
DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d)")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> timedelta:
    """`30s`, `5m`, `2h`, `1d`, or several of them (`1h30m`)."""
    parts = DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration like 30s, 5m, 2h or 1d: {text!r}")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0: {text!r}")
    return timedelta(seconds=seconds)


RELATIVE_TIME = re.compile(r"(?P<time>.+[0-9Z])(?P<sign>[-+])(?P<duration>(?:\d+(?:\.\d+)?[smhd])+)")


def point_in_time(text: str) -> datetime:
    """An ISO 8601 time (no zone: UTC); a duration before now (`15m`: 15 minutes ago); or a time plus or
    minus a duration (`2026-01-01T12:00:00Z-10m`: 11:50), as the Slack messages of the alerts write it."""
    try:
        return datetime.now(UTC) - duration(text)
    except argparse.ArgumentTypeError:
        pass
    relative = RELATIVE_TIME.fullmatch(text)
    offset = timedelta(0)
    if relative is not None:
        text = relative["time"]
        offset = duration(relative["duration"]) * (-1 if relative["sign"] == "-" else 1)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time like 2026-01-01T12:00:00Z, a duration before now like 15m, or a time and a "
            f"duration like 2026-01-01T12:00:00Z-10m: {text!r}"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) + offset


# -- output ----------------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A JSON-able value: times in ISO 8601 UTC with Z, everything else as is."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return " ".join(f"{key}={item}" for key, item in value.items())
    return str(plain(value))


def write_table(records: list[dict[str, Any]], out: Any) -> None:
    if not records:
        return
    columns = list(records[0])
    cells = [[cell(record.get(column)) for column in columns] for record in records]
    widths = [max(len(column), *(len(row[index]) for row in cells)) for index, column in enumerate(columns)]
    out.write("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    out.write("\n")
    for row in cells:
        out.write(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def write_transposed(records: list[dict[str, Any]], out: Any) -> None:
    """One line per field and one column per record: a window's many numbers read top to bottom."""
    if not records:
        return
    fields = list(records[0])
    write_table(
        [{"": field, **{str(i): record[field] for i, record in enumerate(records)}} for field in fields], out
    )


def write_records(
    records: list[dict[str, Any]], output_format: str, out: Any, transposed: bool = False
) -> None:
    if output_format == "json":
        json.dump(plain(records), out, indent=2)
        out.write("\n")
    elif output_format == "csv":
        flat = [flatten(record) for record in records]
        columns = list(dict.fromkeys(column for record in flat for column in record))
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: plain(value) for key, value in record.items()} for record in flat)
    elif transposed:
        write_transposed(records, out)
    else:
        write_table(records, out)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested objects (rejections by reason) as one column each: `rejections_<reason>`."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def as_records(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


# -- the commands ----------------------------------------------------------------------------------------


def show(database: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    records = as_records(*database.show(args.job_id))
    if not records:
        print(f"no request with job id {args.job_id!r} in the selected range", file=sys.stderr)
    return records


def outliers(database: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    return as_records(*database.outliers(args.limit))


def summary(database: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    return database.summary(args.every)


def sql(database: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    return as_records(*database.query(args.query))


def export(database: Any, args: argparse.Namespace) -> None:
    database.export(args.table, args.output)
    print(f"wrote {args.output}", file=sys.stderr)


def report(database: Any, args: argparse.Namespace) -> None:
    from service.logs_report import write_report

    write_report(database, args.output, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(f"wrote {args.output}", file=sys.stderr)


COUNTS_UNREADABLE_ITSELF = {"summary", "report"}  # their one pass counts them; the others take another


def logs_command(args: argparse.Namespace) -> int:
    try:
        from service.log_queries import Baseline, LogDatabase, LogError, log_files
    except ImportError as error:
        print(f"error: {INSTALL_HINT} ({error})", file=sys.stderr)
        return 2
    command: Callable[[Any, argparse.Namespace], list[dict[str, Any]] | None] = args.logs_handler
    try:
        baseline = Baseline.from_model_dir(args.model_dir)
        files = log_files(args.logs or [DEFAULT_LOGS])
        with LogDatabase(
            files, baseline, since=args.since, until=args.until, model_version=args.model_version
        ) as database:
            records = command(database, args)
            if args.logs_command not in COUNTS_UNREADABLE_ITSELF:
                database.count_unreadable_lines()
            for message in database.report.messages():
                print(message, file=sys.stderr)
    except LogError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if records is not None:
        if not records and args.logs_command != "show":
            print(
                "nothing in the selected range (check --since, --until, --model-version, --logs)",
                file=sys.stderr,
            )
        write_records(records, args.format, sys.stdout, transposed=args.logs_command == "summary")
    return 0


def add_parser(commands: Any) -> None:
    """The `logs` command and its subcommands, added to `python -m service`'s parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--logs",
        action="append",
        metavar="GLOB",
        help=f"log files: the current file and its rotated .N.gz parts, of one or several replicas; "
        f"repeat for more (default: {DEFAULT_LOGS!r})",
    )
    common.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models"),
        help="model folder with metadata.json (default: models)",
    )
    common.add_argument(
        "--since",
        type=point_in_time,
        help="from this time on: ISO 8601 (UTC if no zone) or a duration ago (15m)",
    )
    common.add_argument("--until", type=point_in_time, help="before this time (same forms as --since)")
    common.add_argument("--model-version", help="only the lines of this model version")
    common.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")

    logs = commands.add_parser(
        "logs",
        help="query the prediction log (DuckDB): show, outliers, summary, sql, export, report",
        description="Read the prediction log where it lies: the current file and every rotated .gz part, of "
        "one or several replicas, as one table with a row per predicted row. Needs the `logs` extra: "
        "pip install -e '.[logs]'.",
    )
    subcommands = logs.add_subparsers(dest="logs_command", required=True)

    def subcommand(name: str, handler: Callable, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(name, parents=[common], help=help_text, description=description)
        parser.set_defaults(handler=logs_command, logs_handler=handler)
        return parser

    show_parser = subcommand("show", show, "one request and its rows", "The request with this job id.")
    show_parser.add_argument("job_id", metavar="JOB_ID", help="the job_id the API answered (X-Request-ID)")

    outliers_parser = subcommand(
        "outliers",
        outliers,
        "the flagged rows of a window",
        "Rows the outlier detector flagged, oldest first.",
    )
    outliers_parser.add_argument("--limit", type=int, help="at most this many rows")

    summary_parser = subcommand(
        "summary",
        summary,
        "per window: predictions, outlier share, feature means, class shares, latency, rejections",
        "The numbers of the model quality alerts per window and model version: predictions, outlier share, "
        "per-feature mean and its deviation from the training mean, class shares, request latency p50/p99 "
        "and rejected requests by reason.",
    )
    summary_parser.add_argument(
        "--every", type=duration, help="window length (30s, 5m, 1h); default: one window for the whole range"
    )

    sql_parser = subcommand(
        "sql",
        sql,
        "ad-hoc SQL over the tables predictions, rejections, lines and probes",
        "Any DuckDB SQL over the views `predictions` (a row per predicted row), `rejections` (a row per "
        "rejected request), `lines` (a row per log line) and `probes` (the blackbox exporter's requests, "
        "left out of the others as they are of the model metrics), already limited to --since, --until and "
        "--model-version.",
    )
    sql_parser.add_argument(
        "query", metavar="QUERY", help='e.g. "SELECT label, count(*) FROM predictions GROUP BY 1"'
    )

    export_parser = subcommand(
        "export",
        export,
        "write a table to a Parquet file",
        "Write a table as Parquet (pandas, Evidently, NannyML).",
    )
    export_parser.add_argument("--output", type=Path, required=True, help="the .parquet file to write")
    export_parser.add_argument(
        "--table", choices=("predictions", "rejections"), default="predictions", help="(default: predictions)"
    )

    report_parser = subcommand(
        "report",
        report,
        "one self-contained HTML page against the training data",
        "An HTML page (no network needed to open it): per feature the served distribution over the training "
        "one, means over time with the ±5%% band, outlier share, class shares and latency over time, and a "
        "table of per-feature tests (mean deviation, KS, PSI, each with its n).",
    )
    report_parser.add_argument("--output", type=Path, required=True, help="the .html file to write")
