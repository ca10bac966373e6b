"""The benchmark's one table: absolute figures, ratios against the anchor, and the targets met or missed."""

from collections.abc import Callable
from dataclasses import dataclass

from bench.wrk import WrkResult

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Anchor:
    """The book's reference implementation on this kind of 2-core machine (from the issue)."""

    requests_per_second_32: float = 3900.0
    p99_seconds_32: float = 0.040
    p50_seconds_1: float = 0.00053
    predict_seconds: float = 33e-6
    raw_seconds: float = 9e-6


@dataclass(frozen=True, slots=True)
class Targets:
    speedup_vs_anchor: float = 3.0  # req/s at 32 connections, and p99 at most 1/3
    fraction_of_bare: float = 0.60
    max_instrumentation_overhead: float = 0.05
    max_predict_over_raw: float = 1.5
    min_batch_rows_per_second: float = 200_000.0
    max_scrape_seconds: float = 0.010
    max_rss_growth_bytes: int = 5 * MIB  # "flat": allocator noise, not a leak


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run, and the CPU time the server's workers spent during it."""

    wrk: WrkResult
    worker_cpu_seconds: float

    @property
    def requests_per_second(self) -> float:
        return self.wrk.requests_per_second

    @property
    def p50_seconds(self) -> float:
        return self.wrk.p50_seconds

    @property
    def p99_seconds(self) -> float:
        return self.wrk.p99_seconds

    @property
    def worker_cpu_per_request_seconds(self) -> float:
        return self.worker_cpu_seconds / self.wrk.requests


@dataclass(frozen=True, slots=True)
class Measurements:
    predict_32: Run  # instrumented: metrics and prediction log on
    predict_1: Run
    uninstrumented_32: Run  # metrics and prediction log off by settings
    uninstrumented_1: Run
    # (instrumented, uninstrumented) of each round, run one after the other: their ratio is steadier than
    # the ratio of the two best runs, which may come from different rounds
    paired_32: list[tuple[Run, Run]]
    bare_32: Run
    bare_1: Run
    model_ceiling_32: Run  # the bare app plus the two raw onnxruntime runs
    batch: Run
    batch_rows: int
    raw_seconds: float
    predict_seconds: float
    request_path_seconds: float
    asgi_instrumented_seconds: float  # POST /predict through the whole app, fake receive and send
    asgi_uninstrumented_seconds: float
    requests_before_scrape: int
    scrape_seconds: list[float]
    rss_before_bytes: list[int]  # per worker, after warm-up
    rss_after_bytes: list[int]  # per worker, after `requests_before_scrape` requests
    rss_after_batch_bytes: list[int]  # per worker, after the batch run (its log lines are ~65 kB each)


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _mib(values: list[int]) -> str:
    return " / ".join(f"{value / MIB:.1f}" for value in values) + " MiB"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _status(met: bool) -> str:
    return "PASS" if met else "MISS"


def build_table(m: Measurements, anchor: Anchor = Anchor(), targets: Targets = Targets()) -> str:
    """A markdown table; ratios where figures compare, because these machines are shared and noisy."""
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(
        name: str,
        result: str,
        anchor_value: str = "",
        versus_anchor: str = "",
        target: str = "",
        met: Callable[[], bool] | None = None,
    ) -> None:
        rows.append((name, result, anchor_value, versus_anchor, target, _status(met()) if met else ""))

    speedup = targets.speedup_vs_anchor
    rps = m.predict_32.requests_per_second
    p99 = m.predict_32.p99_seconds
    row(
        "1. POST /predict, 32 connections: req/s",
        _rate(rps),
        _rate(anchor.requests_per_second_32),
        _ratio(rps / anchor.requests_per_second_32),
        f"≥ {_rate(anchor.requests_per_second_32 * speedup)} ({speedup:g}× anchor)",
        lambda: rps >= anchor.requests_per_second_32 * speedup,
    )
    row(
        "1. POST /predict, 32 connections: p99",
        _ms(p99),
        _ms(anchor.p99_seconds_32),
        _ratio(p99 / anchor.p99_seconds_32),
        f"≤ {_ms(anchor.p99_seconds_32 / speedup)} (anchor / {speedup:g})",
        lambda: p99 <= anchor.p99_seconds_32 / speedup,
    )
    row("1. POST /predict, 32 connections: p50", _ms(m.predict_32.p50_seconds))
    row(
        "1. POST /predict, 1 connection: p50",
        _ms(m.predict_1.p50_seconds),
        _ms(anchor.p50_seconds_1),
        _ratio(m.predict_1.p50_seconds / anchor.p50_seconds_1),
    )
    row(
        "1. POST /predict, 1 connection: req/s / p99",
        f"{_rate(m.predict_1.requests_per_second)} / {_ms(m.predict_1.p99_seconds)}",
    )
    off = m.uninstrumented_32.requests_per_second
    row(
        "2. metrics and log off, 32 connections: req/s / p99",
        f"{_rate(off)} / {_ms(m.uninstrumented_32.p99_seconds)}",
    )
    row(
        "2. metrics and log off, 1 connection: p50",
        _ms(m.uninstrumented_1.p50_seconds),
    )
    overheads = [1 - on.requests_per_second / off.requests_per_second for on, off in m.paired_32]
    overhead = _median(overheads)
    row(
        "2. instrumentation overhead (1 − on/off req/s, 32 conn.): median of the rounds (each round)",
        f"{_percent(overhead)} ({', '.join(_percent(value) for value in overheads)})",
        target=f"≤ {_percent(targets.max_instrumentation_overhead)}",
        met=lambda: overhead <= targets.max_instrumentation_overhead,
    )
    on_cpu = _median([on.worker_cpu_per_request_seconds for on, _ in m.paired_32])
    off_cpu = _median([off.worker_cpu_per_request_seconds for _, off in m.paired_32])
    row(
        "2. worker CPU per request, 32 conn., median of the rounds: on / off (instrumentation share)",
        f"{_us(on_cpu)} / {_us(off_cpu)} ({_percent(1 - off_cpu / on_cpu)})",
    )
    bare = m.bare_32.requests_per_second
    row(
        "3. bare endpoint, 32 connections: req/s / p99",
        f"{_rate(bare)} / {_ms(m.bare_32.p99_seconds)}",
    )
    row(
        "3. bare endpoint, 32 connections: worker CPU per request",
        _us(m.bare_32.worker_cpu_per_request_seconds),
    )
    row("3. bare endpoint, 1 connection: p50", _ms(m.bare_1.p50_seconds))
    row(
        "3. /predict (instrumented) as a fraction of bare",
        _percent(rps / bare),
        target=f"≥ {_percent(targets.fraction_of_bare)}",
        met=lambda: rps / bare >= targets.fraction_of_bare,
    )
    ceiling = m.model_ceiling_32.requests_per_second
    row(
        "3. bare + onnxruntime (bare endpoint running the two raw sessions), 32 conn.: req/s / worker CPU",
        f"{_rate(ceiling)} / {_us(m.model_ceiling_32.worker_cpu_per_request_seconds)}",
    )
    row("3. bare + onnxruntime: /predict (instrumented) as a fraction of it", _percent(rps / ceiling))
    batch_rows_per_second = m.batch.requests_per_second * m.batch_rows
    row(
        f"4. POST /predict/batch, {m.batch_rows:,} rows a request: rows/s",
        _rate(batch_rows_per_second),
        target=f"≥ {_rate(targets.min_batch_rows_per_second)}",
        met=lambda: batch_rows_per_second >= targets.min_batch_rows_per_second,
    )
    row(
        "5. raw onnxruntime: classifier + detector `session.run`",
        _us(m.raw_seconds),
        _us(anchor.raw_seconds),
    )
    predict_over_raw = m.predict_seconds / m.raw_seconds
    row(
        "5. in-process predict (`Model.predict`, 1 row) / raw",
        f"{_us(m.predict_seconds)} = {_ratio(predict_over_raw)}",
        f"{_us(anchor.predict_seconds)} = {_ratio(anchor.predict_seconds / anchor.raw_seconds)}",
        target=f"≤ {_ratio(targets.max_predict_over_raw)}",
        met=lambda: predict_over_raw <= targets.max_predict_over_raw,
    )
    row(
        "5. request path in-process (validate, predict, metrics, log record) / raw",
        f"{_us(m.request_path_seconds)} = {_ratio(m.request_path_seconds / m.raw_seconds)}",
    )
    on_asgi, off_asgi = m.asgi_instrumented_seconds, m.asgi_uninstrumented_seconds
    row(
        "5. POST /predict through the app in-process (fake receive/send): on / off (instrumentation share)",
        f"{_us(on_asgi)} / {_us(off_asgi)} ({_percent(1 - off_asgi / on_asgi)})",
    )
    scrape = _median(m.scrape_seconds)
    row(
        f"6. GET /metrics, 2 workers, after {m.requests_before_scrape:,} requests: median (max)",
        f"{_ms(scrape)} ({_ms(max(m.scrape_seconds))})",
        target=f"< {_ms(targets.max_scrape_seconds)}",
        met=lambda: scrape < targets.max_scrape_seconds,
    )
    growth = max(after - before for before, after in zip(m.rss_before_bytes, m.rss_after_bytes, strict=True))
    row(
        f"6. RSS per worker: after warm-up → after {m.requests_before_scrape:,} requests",
        f"{_mib(m.rss_before_bytes)} → {_mib(m.rss_after_bytes)}",
        target=f"growth ≤ {targets.max_rss_growth_bytes / MIB:g} MiB",
        met=lambda: growth <= targets.max_rss_growth_bytes,
    )
    row("6. RSS per worker after the batch run (4.)", _mib(m.rss_after_batch_bytes))

    header = ("measurement", "result", "anchor", "vs anchor", "target", "status")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def misses(table: str) -> int:
    return sum(line.rstrip().endswith("| MISS |") for line in table.splitlines())
