"""`python -m bench`: every measurement side by side on this machine, loopback only, bounded; one table.

Starts four servers with the production serving command and 2 workers on free 127.0.0.1 ports — the
service instrumented, the service with metrics and prediction log off, a bare app on the same server stack
and that bare app plus the two raw onnxruntime runs — measures them in turn with wrk, then stops them and
times one prediction in-process.
"""

import argparse
import http.client
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.report import Measurements, Run, build_table, misses
from bench.wrk import post_json_lua, run_wrk, stop_after_lua
from service.traffic import load_training_data
from stack.processes import free_port
from stack.service_process import SERVE_COMMAND as SERVE
from stack.service_process import ServiceProcess, service_env, start_service

SAMPLE_BODY = {"data": [[5.1, 3.5, 1.4, 0.2]]}
WARM_UP_SECONDS = 2.0
# The instrumented server rotates its log at 16 MiB rather than 100 MiB: the first rotation (and the
# memory its compression takes) then falls in the warm-up, and rotations happen throughout the run.
LOG_MAX_BYTES = 16 * 1024 * 1024
ROTATION_WARM_UP_SECONDS = 60.0
STARTUP_SECONDS = 60.0
REPO_ROOT = Path(__file__).resolve().parents[1]  # `python -m bench.bare_app` runs from here
SCRAPES = 20


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
        f"{(wrk_version.stdout or wrk_version.stderr).split(' [')[0].strip()}"
    )


def batch_body(model_dir: Path, rows: int) -> dict[str, list[list[float]]]:
    training = load_training_data(model_dir).rows.tolist()
    return {"data": [training[index % len(training)] for index in range(rows)]}


def time_scrapes(server: ServiceProcess, count: int) -> list[float]:
    """Seconds per GET /metrics, each on a new connection so both workers answer some."""
    seconds = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        seconds.append(time.perf_counter() - started)
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics answered {response.status}")
        time.sleep(0.05)
    return seconds


def measure(
    server: ServiceProcess, path: str, script: Path, connections: int, seconds: float, threads: int = 2
) -> Run:
    cpu_before = server.worker_cpu_seconds()
    result = run_wrk(server.url + path, script, connections, seconds, threads)
    return Run(result, server.worker_cpu_seconds() - cpu_before)


def best(results: list[Run]) -> Run:
    """The fastest of repeated runs: on a shared machine, noise only ever slows a run down."""
    return max(results, key=lambda result: result.requests_per_second)


def run(args: argparse.Namespace, workdir: Path) -> Measurements:
    say = print if not args.quiet else (lambda *a, **k: None)
    predict_lua = workdir / "predict.lua"
    predict_lua.write_text(post_json_lua(SAMPLE_BODY))
    batch_lua = workdir / "batch.lua"
    batch_lua.write_text(post_json_lua(batch_body(args.model_dir, args.batch_rows)))

    def start(name: str, command: tuple[str, ...], **settings: str) -> ServiceProcess:
        run_dir = workdir / name
        run_dir.mkdir()
        env = service_env(
            args.model_dir.resolve(), run_dir, free_port(), workers=str(args.workers), **settings
        )
        return start_service(env, run_dir / "output.txt", command, name, cwd=REPO_ROOT)

    log_file = workdir / "instrumented" / "predictions.log"
    servers: dict[str, ServiceProcess] = {}
    served_by_instrumented = 0
    try:
        servers["bare"] = start("bare", ("bench.bare_app",))
        servers["model"] = start("bare-onnxruntime", ("bench.bare_app", "model"))
        servers["off"] = start(
            "uninstrumented", SERVE, metrics_enabled="false", prediction_log_enabled="false"
        )
        servers["on"] = start("instrumented", SERVE, log_file=str(log_file), log_max_bytes=str(LOG_MAX_BYTES))
        for name, server in servers.items():
            bare = name in ("bare", "model")
            # only the instrumented service writes the metric files that tell when each worker has loaded
            server.wait_for_workers(
                args.workers, STARTUP_SECONDS, ready_path="/" if bare else "/ready", metric_files=name == "on"
            )
        for name, server in servers.items():
            warm_up = run_wrk(server.url + "/predict", predict_lua, args.connections, WARM_UP_SECONDS)
            if name == "on":
                served_by_instrumented += warm_up.requests
        deadline = time.monotonic() + ROTATION_WARM_UP_SECONDS
        while not list(log_file.parent.glob("predictions.log.*.gz")) and time.monotonic() < deadline:
            warm_up = run_wrk(servers["on"].url + "/predict", predict_lua, args.connections, WARM_UP_SECONDS)
            served_by_instrumented += warm_up.requests
        rss_before = servers["on"].worker_rss_bytes()

        runs: dict[str, list[Run]] = {name: [] for name in servers}
        for round_number in range(1, args.rounds + 1):
            for name, server in servers.items():
                say(f"round {round_number}/{args.rounds}: {server.name}, {args.connections} connections")
                runs[name].append(measure(server, "/predict", predict_lua, args.connections, args.duration))
        single: dict[str, Run] = {}
        for name, server in servers.items():
            if name == "model":
                continue  # its 32-connection figure is the one compared
            say(f"{server.name}, 1 connection")
            single[name] = measure(server, "/predict", predict_lua, 1, args.duration, threads=1)
        served_by_instrumented += sum(run.wrk.requests for run in runs["on"]) + single["on"].wrk.requests
        if served_by_instrumented < args.scrape_after:
            missing = args.scrape_after - served_by_instrumented
            say(f"instrumented: {missing} more requests before the scrape")
            top_up_lua = workdir / "top_up.lua"
            top_up_lua.write_text(post_json_lua(SAMPLE_BODY) + stop_after_lua(missing, 2))
            top_up = run_wrk(servers["on"].url + "/predict", top_up_lua, args.connections, 120)
            served_by_instrumented += top_up.requests
        rss_after = servers["on"].worker_rss_bytes()
        scrapes = time_scrapes(servers["on"], SCRAPES)
        say(f"instrumented: /predict/batch with {args.batch_rows} rows")
        batch = measure(servers["on"], "/predict/batch", batch_lua, 4, args.duration)
        rss_after_batch = servers["on"].worker_rss_bytes()
    finally:
        for server in servers.values():
            server.stop()

    say("in-process predict")
    inprocess = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", str(args.model_dir.resolve())],
        capture_output=True,
        check=True,
        timeout=300,
    )
    timings = orjson.loads(inprocess.stdout)
    return Measurements(
        predict_32=best(runs["on"]),
        predict_1=single["on"],
        uninstrumented_32=best(runs["off"]),
        uninstrumented_1=single["off"],
        paired_32=list(zip(runs["on"], runs["off"], strict=True)),
        bare_32=best(runs["bare"]),
        bare_1=single["bare"],
        model_ceiling_32=best(runs["model"]),
        batch=batch,
        batch_rows=args.batch_rows,
        raw_seconds=timings["raw_seconds"],
        predict_seconds=timings["predict_seconds"],
        request_path_seconds=timings["request_path_seconds"],
        asgi_instrumented_seconds=timings["asgi_instrumented_seconds"],
        asgi_uninstrumented_seconds=timings["asgi_uninstrumented_seconds"],
        requests_before_scrape=served_by_instrumented,
        scrape_seconds=scrapes,
        rss_before_bytes=rss_before,
        rss_after_bytes=rss_after,
        rss_after_batch_bytes=rss_after_batch,
    )


def report(table: str, args: argparse.Namespace, started: datetime, elapsed_seconds: float) -> str:
    return (
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine_description()}.\n"
        f"Command: `{' '.join(['python -m bench', *sys.argv[1:]])}` ({elapsed_seconds:.0f} s); "
        f"wrk and the servers share the same cores; {args.workers} workers; {args.duration:g} s per wrk "
        f"run, best of {args.rounds} rounds at {args.connections} connections.\n\n{table}"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    root.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default: 10)")
    root.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="repeats of the 32-connection runs; the best counts (default: 3)",
    )
    root.add_argument("--connections", type=int, default=32, help="connections for throughput (default: 32)")
    root.add_argument("--workers", type=int, default=2, help="gunicorn workers per server (default: 2)")
    root.add_argument("--batch-rows", type=int, default=1000, help="rows per batch request (default: 1000)")
    root.add_argument(
        "--scrape-after",
        type=int,
        default=100_000,
        help="requests the instrumented server has served before /metrics is timed (default: 100000)",
    )
    root.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="trained models (default: models)"
    )
    root.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).parent / "results" / "latest.md",
        help="where the table is written too (default: bench/results/latest.md)",
    )
    root.add_argument("--quiet", action="store_true", help="print only the table")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (args.model_dir / "metadata.json").exists():
        print(f"error: no models in {args.model_dir}; run `python -m service train`", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("error: wrk is not installed; `make bench` installs it (Debian package wrk)", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        measurements = run(args, Path(workdir))
    table = build_table(measurements)
    text = report(table, args, started, time.monotonic() - clock)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    missed = misses(table)
    if missed:
        print(f"{missed} target(s) missed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
