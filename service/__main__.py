"""Command line: `python -m service train | serve | traffic | logs` (each has --help)."""

import argparse
import asyncio
import json
import sys
from pathlib import Path

from service import logs_command
from service.traffic import SCENARIOS

SETTINGS_HELP = "Configured through SERVICE_* environment variables; see the README's settings table."


def train_command(args: argparse.Namespace) -> int:
    from service.training import train

    metadata = train(args.output, outlier_threshold=args.outlier_threshold)
    print(
        json.dumps(
            {
                key: metadata[key]
                for key in ("model_version", "held_out_accuracy", "training_outlier_fraction")
            }
        )
    )
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from service.model import Model, ModelLoadError
    from service.server import serve
    from service.settings import Settings

    settings = Settings()
    try:
        Model(settings.model_dir)  # fail here, with the file's name, rather than in every worker
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        print("hint: run `python -m service train` or set SERVICE_MODEL_DIR", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def traffic_command(args: argparse.Namespace) -> int:
    from service.traffic import RowSource, Scenario, load_training_data, run

    try:
        training = load_training_data(args.model_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}; run `python -m service train` first", file=sys.stderr)
        return 2
    scenario = Scenario(
        args.scenario, args.outlier_fraction, args.feature, args.factor, args.label, args.share
    )
    try:
        source = RowSource(training, scenario, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"traffic: {args.scenario} to {args.url}, {args.rate:g} requests/s for {args.duration:g} s",
        file=sys.stderr,
        flush=True,
    )

    def report(counts: dict, elapsed: float) -> None:
        print(
            f"traffic: {elapsed:5.0f} s of {args.duration:g}: {counts['sent']} sent "
            f"({counts['sent'] / max(elapsed, 1e-9):.1f}/s), {counts['ok']} ok "
            f"({counts['outliers']} outliers), {counts['errors']} errors",
            file=sys.stderr,
            flush=True,
        )

    counts = asyncio.run(run(args.url, source, args.rate, args.duration, progress=report))
    print(json.dumps(counts))
    return 0 if counts["errors"] == 0 else 1


def positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return number


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train both models and export them to ONNX",
        description="Train on scikit-learn's Iris data and write ONNX models, "
        "metadata.json and training_data.csv (byte-identical on every run).",
    )
    train.add_argument(
        "--output", type=Path, default=Path("models"), help="folder to write (default: models)"
    )
    train.add_argument(
        "--outlier-threshold",
        type=float,
        default=0.0,
        help="outlier score below which a row is an outlier (default: 0.0)",
    )
    train.set_defaults(handler=train_command)

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API with gunicorn and uvicorn workers",
        description="Serve the API. " + SETTINGS_HELP,
    )
    serve.set_defaults(handler=serve_command)

    traffic = commands.add_parser(
        "traffic",
        help="send bounded test traffic to a running service",
        description="POST /predict at a fixed rate for a fixed time, then stop.",
    )
    traffic.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    traffic.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="normal",
        help="normal: rows like the training data; outliers: a share of out-of-distribution rows; "
        "drift: one feature multiplied by --factor; spread: one feature spread by --factor around its "
        "training mean; class-share: rows of --label make up --share of the traffic",
    )
    traffic.add_argument("--rate", type=positive, default=25.0, help="requests per second (default: 25)")
    traffic.add_argument("--duration", type=positive, default=60.0, help="seconds to run (default: 60)")
    traffic.add_argument(
        "--outlier-fraction",
        type=fraction,
        default=0.4,
        help="share of the rows sent that are outliers, in the outliers scenario (default: 0.4; the "
        "detector also flags ~11%% of the normal rows)",
    )
    traffic.add_argument(
        "--feature", default="petal_length", help="feature of the drift and spread scenarios"
    )
    traffic.add_argument(
        "--factor",
        type=positive,
        default=1.1,
        help="drift: multiplier of the feature (default: 1.1, i.e. +10%%); spread: of its spread",
    )
    traffic.add_argument("--label", default="setosa", help="class of the class-share scenario")
    traffic.add_argument(
        "--share", type=fraction, default=0.8, help="share of --label in the class-share scenario (0.8)"
    )
    traffic.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    traffic.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models"),
        help="folder with training_data.csv (default: models)",
    )
    traffic.set_defaults(handler=traffic_command)

    logs_command.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
