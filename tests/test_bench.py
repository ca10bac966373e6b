"""The benchmark's parsers and table builder on canned wrk output, so `make bench` cannot silently rot.

No timing is measured or asserted here: the figures are made up.
"""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bare_app import BODY, bare_app, model_app
from bench.report import Measurements, Run, Targets, build_table, misses
from bench.wrk import WrkError, WrkResult, parse_wrk_output, post_json_lua, run_wrk, stop_after_lua
from service.settings import Settings

WRK_32_CONNECTIONS = """\
Running 8s test @ http://127.0.0.1:8765/predict
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.87ms    5.09ms  81.95ms   94.41%
    Req/Sec     2.18k   389.92     3.46k    70.62%
  Latency Distribution
     50%    6.69ms
     75%    8.29ms
     90%   10.33ms
     99%   34.53ms
  34758 requests in 8.03s, 11.80MB read
Requests/sec:   4329.24
Transfer/sec:      1.47MB
"""

WRK_1_CONNECTION = """\
Running 3s test @ http://127.0.0.1:8765/predict
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   400.90us  111.29us   3.65ms   95.76%
    Req/Sec     2.51k   170.65     2.77k    73.33%
  Latency Distribution
     50%  394.00us
     75%  430.00us
     90%  471.00us
     99%    1.02s
  7504 requests in 3.00s, 2.55MB read
Requests/sec:   2501.00
Transfer/sec:    869.55KB
"""

WRK_WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:8765/nonexistent
  2 threads and 32 connections
  Latency Distribution
     50%    1.83ms
     75%    2.92ms
     90%    3.23ms
     99%    6.72ms
  43024 requests in 3.10s, 6.32MB read
  Socket errors: connect 0, read 40, write 2, timeout 1
  Non-2xx or 3xx responses: 43024
Requests/sec:  13876.46
Transfer/sec:      2.04MB
"""


def test_wrk_output_gives_requests_rate_and_latency_percentiles_in_seconds() -> None:
    result = parse_wrk_output(WRK_32_CONNECTIONS)
    assert result.requests == 34758
    assert result.seconds == pytest.approx(8.03)
    assert result.requests_per_second == pytest.approx(4329.24)
    assert result.latency_seconds == pytest.approx(
        {50.0: 6.69e-3, 75.0: 8.29e-3, 90.0: 10.33e-3, 99.0: 34.53e-3}
    )
    assert (result.non_2xx, result.socket_errors) == (0, 0)


def test_wrk_latencies_in_microseconds_and_seconds_are_converted() -> None:
    result = parse_wrk_output(WRK_1_CONNECTION)
    assert result.p50_seconds == pytest.approx(394e-6)
    assert result.p99_seconds == pytest.approx(1.02)


def test_wrk_non_2xx_responses_and_socket_errors_are_counted() -> None:
    result = parse_wrk_output(WRK_WITH_ERRORS)
    assert (result.non_2xx, result.socket_errors) == (43024, 43)


def test_wrk_output_without_figures_is_an_error() -> None:
    with pytest.raises(WrkError):
        parse_wrk_output("unable to connect to 127.0.0.1:9 Connection refused\n")


def test_wrk_is_never_pointed_at_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_wrk("http://192.0.2.1:8000/predict", None, 1, 1)


def test_lua_scripts_post_json_and_stop_each_thread_after_its_share() -> None:
    script = post_json_lua({"data": [[5.1, 3.5, 1.4, 0.2]]})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert 'wrk.body = [=[{"data":[[5.1,3.5,1.4,0.2]]}]=]' in script
    assert "local stop_after = 50001" in stop_after_lua(100_001, 2)


def wrk_result(requests_per_second: float, p50_ms: float, p99_ms: float, seconds: float = 10.0) -> WrkResult:
    return WrkResult(
        requests=round(requests_per_second * seconds),
        seconds=seconds,
        requests_per_second=requests_per_second,
        latency_seconds={50.0: p50_ms / 1000, 75.0: p50_ms / 1000, 90.0: p99_ms / 1000, 99.0: p99_ms / 1000},
        non_2xx=0,
        socket_errors=0,
    )


def run(requests_per_second: float, p50_ms: float, p99_ms: float, cpu_us_per_request: float = 100.0) -> Run:
    result = wrk_result(requests_per_second, p50_ms, p99_ms)
    return Run(result, result.requests * cpu_us_per_request * 1e-6)


def measurements(instrumented_rps: float = 12_500.0, scrape_ms: float = 4.0) -> Measurements:
    mib = 1024 * 1024
    return Measurements(
        predict_32=run(instrumented_rps, 2.0, 6.0, 120.0),
        predict_1=run(4000.0, 0.2, 0.4),
        uninstrumented_32=run(13_000.0, 2.0, 5.0, 110.0),
        uninstrumented_1=run(4500.0, 0.18, 0.3),
        paired_32=[
            (run(instrumented_rps, 2.0, 6.0, 120.0), run(13_000.0, 2.0, 5.0, 110.0)),
            (run(instrumented_rps - 500, 2.0, 6.0, 125.0), run(13_000.0, 2.0, 5.0, 115.0)),
            (run(instrumented_rps, 2.0, 6.0, 150.0), run(11_000.0, 2.0, 5.0, 110.0)),
        ],
        bare_32=run(20_000.0, 1.0, 3.0, 25.0),
        bare_1=run(12_000.0, 0.05, 0.1),
        model_ceiling_32=run(16_000.0, 1.5, 4.0, 60.0),
        batch=run(400.0, 10.0, 20.0),
        batch_rows=1000,
        raw_seconds=12e-6,
        predict_seconds=15e-6,
        request_path_seconds=40e-6,
        asgi_instrumented_seconds=50e-6,
        asgi_uninstrumented_seconds=40e-6,
        requests_before_scrape=250_000,
        scrape_seconds=[scrape_ms / 1000] * 19 + [0.05],
        rss_before_bytes=[80 * mib, 81 * mib],
        rss_after_bytes=[82 * mib, 81 * mib],
        rss_after_batch_bytes=[95 * mib, 96 * mib],
    )


def status_of(table: str, measurement: str) -> str:
    (line,) = [line for line in table.splitlines() if line.startswith(f"| {measurement}")]
    return line.rstrip(" |").rsplit("|", 1)[1].strip()


def test_table_is_markdown_with_one_row_per_measurement_and_a_status_column() -> None:
    table = build_table(measurements())
    lines = table.splitlines()
    assert lines[0] == "| measurement | result | anchor | vs anchor | target | status |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])
    assert all(line.count(" | ") == 5 for line in lines[2:])
    for step in "123456":
        assert any(line.startswith(f"| {step}. ") for line in lines), step


def test_targets_met_are_pass_and_ratios_are_against_the_anchor() -> None:
    table = build_table(measurements())
    assert misses(table) == 0
    assert status_of(table, "1. POST /predict, 32 connections: req/s") == "PASS"
    assert "| 12,500 | 3,900 | 3.21× |" in table
    assert status_of(table, "2. instrumentation overhead") == "PASS"
    # per round 1 - on/off: 3.8%, 7.7%, -13.6%; the median is the target's figure
    assert "| 3.8% (3.8%, 7.7%, -13.6%) |" in table
    assert status_of(table, "3. /predict (instrumented) as a fraction of bare") == "PASS"
    assert "| 62.5% |" in table
    assert "| 400,000 |" in table  # batch rows per second
    assert "15.0 µs = 1.25×" in table
    assert "50.0 µs / 40.0 µs (20.0%)" in table  # the app in-process, on / off
    assert "125.0 µs / 110.0 µs (12.0%)" in table  # medians of the rounds' worker CPU per request


def test_targets_missed_are_miss_and_counted() -> None:
    table = build_table(measurements(instrumented_rps=9_000.0, scrape_ms=12.0))
    assert status_of(table, "1. POST /predict, 32 connections: req/s") == "MISS"
    assert status_of(table, "2. instrumentation overhead") == "MISS"
    assert status_of(table, "3. /predict (instrumented) as a fraction of bare") == "MISS"
    assert status_of(table, "6. GET /metrics") == "MISS"
    assert misses(table) == 4


def test_stricter_targets_turn_a_pass_into_a_miss() -> None:
    table = build_table(measurements(), targets=Targets(max_predict_over_raw=1.2))
    assert status_of(table, "5. in-process predict") == "MISS"


def post_to(app, messages: list[dict]) -> list[dict]:
    """Run one POST /predict through an ASGI app; the messages it sent."""
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/predict"}, receive, send))
    return sent


def test_bare_app_reads_the_body_and_answers_a_predict_sized_json_body() -> None:
    messages = [
        {"type": "http.request", "body": b'{"data": ', "more_body": True},
        {"type": "http.request", "body": b"[[1, 2, 3, 4]]}", "more_body": False},
    ]
    sent = post_to(bare_app, messages)
    assert messages == []
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"]) == {
        b"content-length": str(len(BODY)).encode(),
        b"content-type": b"application/json",
    }
    assert sent[1] == {"type": "http.response.body", "body": BODY}


def test_model_app_loads_both_models_and_answers_like_the_bare_app(model_dir: Path) -> None:
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent = post_to(model_app(Settings(model_dir=model_dir)), messages)
    assert messages == []
    assert sent == post_to(bare_app, [{"type": "http.request", "body": b"{}", "more_body": False}])


def test_bench_help_lists_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0
    for option in ("--duration", "--rounds", "--scrape-after", "--output"):
        assert option in result.stdout


def test_bench_without_wrk_says_how_to_install_it(model_dir: Path, tmp_path: Path) -> None:
    environment = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no wrk on it
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--model-dir", str(model_dir), "--output", str(tmp_path / "out.md")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 2 and "wrk is not installed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.md").exists()
