"""Run Debian's `wrk` against a loopback URL and parse what it prints."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

# wrk reports latencies with a unit suffix: 394.00us, 6.69ms, 1.02s, 2.00m
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")

# Stops each wrk thread after its share of a request count, so a run is bounded by count and by -d.
STOP_AFTER_LUA = """
local stop_after = {per_thread}
local done = 0
function response(status, headers, body)
  done = done + 1
  if done >= stop_after then wrk.thread:stop() end
end
"""


class WrkError(RuntimeError):
    """wrk failed, or its output has no figures (it could not connect, say)."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    latency_seconds: dict[float, float]  # percentile (50.0, 75.0, 90.0, 99.0) -> seconds
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def p50_seconds(self) -> float:
        return self.latency_seconds[50.0]

    @property
    def p99_seconds(self) -> float:
        return self.latency_seconds[99.0]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the output of `wrk --latency`."""
    requests = _REQUESTS.search(text)
    rate = _RATE.search(text)
    percentiles = {
        float(percentile): float(value) * _UNIT_SECONDS[unit]
        for percentile, value, unit in _PERCENTILE.findall(text)
    }
    if requests is None or rate is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkError(f"cannot read wrk's output (was --latency given? did it connect?):\n{text}")
    non_2xx = _NON_2XX.search(text)
    socket_errors = _SOCKET_ERRORS.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=float(requests.group(2)) * _UNIT_SECONDS[requests.group(3)],
        requests_per_second=float(rate.group(1)),
        latency_seconds=percentiles,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(count) for count in socket_errors.groups()) if socket_errors else 0,
    )


def post_json_lua(body: object) -> str:
    """A wrk script that POSTs `body` as JSON."""
    encoded = orjson.dumps(body).decode()
    return (
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [=[{encoded}]=]\n'
    )


def stop_after_lua(requests: int, threads: int) -> str:
    return STOP_AFTER_LUA.format(per_thread=max(1, -(-requests // threads)))


def run_wrk(
    url: str,
    script: Path | None,
    connections: int,
    duration_seconds: float,
    threads: int | None = None,
) -> WrkResult:
    """One bounded wrk run against a loopback URL; raises WrkError if any request failed."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"the benchmark only sends traffic to loopback, not {url}")
    threads = threads or min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_seconds))}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_seconds + 30, check=False
    )
    if completed.returncode != 0:
        raise WrkError(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
    result = parse_wrk_output(completed.stdout)
    if result.non_2xx or result.socket_errors:
        raise WrkError(
            f"{url}: {result.non_2xx} non-2xx responses and {result.socket_errors} socket errors\n"
            + completed.stdout
        )
    return result
