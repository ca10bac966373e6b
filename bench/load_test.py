"""`python -m bench.load_test`: the production server under steady load, with the rotating prediction log on.

1. Starts `python -m service serve` on a free loopback port, logging predictions to a file rotated every
   --log-max-bytes (small, so that the run rotates it many times).
2. Measures the maximum rate: wrk for 10 s with 32 connections, as fast as it can (skipped with --max-rate).
3. Sends --rate-fraction of that rate for --duration seconds. Debian's wrk has no rate option (-R), so a
   Lua script paces it: each connection waits before its next request, and once a second the wait is
   corrected towards the target rate.
4. Every 10 s: the resident memory (RSS) of each worker, and a scrape of /metrics, as Prometheus would.
5. Stops the server gracefully and reports: requests, errors (non-2xx and socket errors), RSS at the start
   and end of the steady run, and the prediction log's lines (live file plus every .gz) against the
   requests the service counted.

Loopback only; it stops by itself (wrk runs for a fixed time; the server is stopped in any case).
"""

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.wrk import WrkResult, parse_wrk_output
from stack.processes import free_port
from stack.service_process import ServiceProcess, rss_bytes, service_env, start_service

BODY = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
SAMPLE_SECONDS = 10.0
STARTUP_SECONDS = 60.0
PREDICTION_HANDLERS = {"/predict", "/predict/label", "/predict/batch"}

POST_LUA = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{BODY}'
"""
# wrk calls delay() before each request and response() after each answer, per thread. os.time() has
# one-second resolution: enough to correct the wait once a second.
PACED_LUA = """
local target = {rate_per_thread}
local connections = {connections_per_thread}
local delay_ms = {initial_delay_ms}
local second = os.time()
local answered = 0
function delay()
  return delay_ms
end
function response(status, headers, body)
  answered = answered + 1
  local now = os.time()
  if now > second then
    local rate = answered / (now - second)
    if rate > 0 then
      -- each connection's cycle is latency + delay; move the delay by half the error of the cycle
      local cycle = 1000 * connections / rate
      local wanted = 1000 * connections / target
      delay_ms = math.max(0, delay_ms + (wanted - cycle) / 2)
    end
    second = now
    answered = 0
  end
end
"""


def run_wrk(url: str, script: str, seconds: float, connections: int, scratch: Path) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    lua = scratch / "load.lua"
    lua.write_text(script)
    limits = [f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s"]
    command = [wrk, "-t1", *limits, "--latency", "-s", str(lua), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk_output(output)


def paced_script(rate: float, connections: int) -> str:
    initial_delay_ms = max(0.0, 1000 * connections / rate - 1.0)  # guess: 1 ms of latency
    return POST_LUA + PACED_LUA.format(
        rate_per_thread=rate, connections_per_thread=connections, initial_delay_ms=initial_delay_ms
    )


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: each worker's RSS and the time a /metrics scrape takes."""

    def __init__(self, service: ServiceProcess) -> None:
        super().__init__(name="sampler", daemon=True)
        self.service = service
        self.rss_by_pid: dict[int, list[int]] = {}
        self.scrape_seconds: list[float] = []
        self.worker_sets: list[frozenset[int]] = []
        self._stop_event = threading.Event()

    def sample(self) -> None:
        workers = frozenset(self.service.worker_pids())
        self.worker_sets.append(workers)
        for pid in workers:
            self.rss_by_pid.setdefault(pid, []).append(rss_bytes(pid))
        started = time.monotonic()
        httpx.get(self.service.url + "/metrics", timeout=10.0).raise_for_status()
        self.scrape_seconds.append(time.monotonic() - started)

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def requests_counted_by_the_service(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10.0).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_requests_total" and sample.labels.get("handler") in PREDICTION_HANDLERS
        )
    )


def count_log_lines(log_file: Path) -> tuple[int, int]:
    """Lines in the live log file and in every rotated .gz file; and how many .gz files there are."""
    lines = log_file.read_bytes().count(b"\n") if log_file.exists() else 0
    rotated = sorted(log_file.parent.glob(log_file.name + ".*.gz"))
    for path in rotated:
        with gzip.open(path, "rb") as compressed:
            while chunk := compressed.read(1 << 20):
                lines += chunk.count(b"\n")
    return lines, len(rotated)


def megabytes(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="load-test-") as scratch_name:
        scratch = Path(scratch_name)
        log_file = scratch / "predictions.jsonl"
        env = service_env(
            args.model_dir.resolve(),
            scratch,
            free_port(),
            workers=str(args.workers),
            log_file=str(log_file),
            log_max_bytes=str(args.log_max_bytes),
            log_backup_count=str(args.log_backup_count),
        )
        service = start_service(env, scratch / "server-output.txt")
        try:
            service.wait_for_workers(args.workers, STARTUP_SECONDS)
            url = service.url + "/predict"
            if args.max_rate:
                max_rate, burst = args.max_rate, None
            else:
                burst = run_wrk(url, POST_LUA, 10, 32, scratch)
                max_rate = burst.requests_per_second
                print(
                    f"maximum: {max_rate:.0f} requests/s (wrk, 10 s, 32 connections), {burst.errors} errors"
                )
            target = args.rate_fraction * max_rate
            print(
                f"steady: {target:.0f} requests/s for {args.duration:.0f} s ({args.connections} connections)"
            )
            sys.stdout.flush()

            sampler = Sampler(service)
            sampler.sample()
            sampler.start()
            steady = run_wrk(
                url, paced_script(target, args.connections), args.duration, args.connections, scratch
            )
            sampler.stop()
            sampler.sample()

            counted = requests_counted_by_the_service(service.url)
            exit_code = service.stop()
            log_lines, rotated_files = count_log_lines(log_file)
        finally:
            service.stop()

        burst_requests = burst.requests if burst else 0
        sent = burst_requests + steady.requests
        start_rss = {pid: values[0] for pid, values in sampler.rss_by_pid.items() if len(values) > 1}
        end_rss = {pid: sampler.rss_by_pid[pid][-1] for pid in start_rss}
        total_start, total_end = sum(start_rss.values()), sum(end_rss.values())
        growth = 100.0 * (total_end - total_start) / total_start if total_start else float("nan")
        scrapes = sorted(sampler.scrape_seconds)
        rows = [
            (
                "requests (steady)",
                f"{steady.requests} in {steady.seconds:.0f} s = {steady.requests_per_second:.0f}/s",
            ),
            ("errors (steady)", f"{steady.errors} (non-2xx {steady.non_2xx}, socket {steady.socket_errors})"),
            *(
                (f"RSS worker {pid}", f"{megabytes(start_rss[pid])} -> {megabytes(end_rss[pid])}")
                for pid in sorted(start_rss)
            ),
            ("RSS workers", f"{megabytes(total_start)} -> {megabytes(total_end)} ({growth:+.1f}%)"),
            ("workers replaced", str(len(set().union(*sampler.worker_sets)) - args.workers)),
            (
                "/metrics scrape",
                f"median {1000 * scrapes[len(scrapes) // 2]:.1f} ms, max {1000 * scrapes[-1]:.1f} ms",
            ),
            ("requests sent (wrk)", f"{sent} (burst {burst_requests} + steady {steady.requests})"),
            ("requests counted", f"{counted} (the service's http_requests_total of the prediction handlers)"),
            ("log lines", f"{log_lines} (live file and {rotated_files} rotated .gz files)"),
            ("server exit code", str(exit_code)),
        ]
        print()
        for label, value in rows:
            print(f"{label:<22} {value}")
        complete = rotated_files < args.log_backup_count
        if not complete:
            print("log lines cannot be checked: rotation dropped old files (raise --log-backup-count)")
        # wrk does not count the requests in flight when it stops; the service answered them.
        in_flight = 32 + args.connections
        ok = (
            steady.errors == 0
            and growth < 10.0
            and complete
            and log_lines == counted
            and 0 <= counted - sent <= in_flight
        )
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m bench.load_test",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--duration", type=float, default=300.0, help="seconds of steady load (default: 300)")
    root.add_argument(
        "--rate-fraction", type=float, default=0.8, help="share of the measured maximum rate (default: 0.8)"
    )
    root.add_argument(
        "--max-rate", type=float, help="skip the measurement and take this as the maximum (req/s)"
    )
    root.add_argument(
        "--connections", type=int, default=32, help="connections of the steady load (default: 32)"
    )
    root.add_argument("--workers", type=int, default=2, help="gunicorn workers (default: 2)")
    root.add_argument(
        "--log-max-bytes",
        type=int,
        default=5_000_000,
        help="rotate the prediction log at this size (default: 5 MB)",
    )
    root.add_argument(
        "--log-backup-count",
        type=int,
        default=10_000,
        help="rotated files kept; high, so that every line can be counted (default: 10000)",
    )
    root.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="trained models (default: models)"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
