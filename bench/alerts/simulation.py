"""One simulation: pools of rows through the real models, scrapes into a TSDB, each rule set evaluated by a
real Prometheus on its own copy of the blocks, and the results per case."""

import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.alerts import scenarios
from bench.alerts.evaluate import AlertFiring, alert_firings, backfill_records
from bench.alerts.notifications import Route, route_for
from bench.alerts.report import CaseResult, case_results
from bench.alerts.rules import REPO_ROOT, RuleSet
from bench.alerts.samples import (
    GAUGE_EVERY_SCRAPES,
    GAUGE_SECONDS,
    SCRAPE_SECONDS,
    Phase,
    Pool,
    build_pool,
    scrapes,
)
from bench.alerts.tsdb import Prometheus, create_blocks, series_text, write_series
from service.model import Model

START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # simulated time zero (any fixed past instant)
INSTANCE = "sim"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"


def _cpu_seconds() -> float:
    times = os.times()  # children: promtool and the Prometheus runs, once waited for
    return times.user + times.system + times.children_user + times.children_system


class Clock:
    """Progress on stderr (phase, what, elapsed) and the wall and CPU seconds of each phase."""

    def __init__(self, quiet: bool = False) -> None:
        self._started = time.monotonic()
        self._phase = ""
        self._phase_wall = self._phase_cpu = 0.0
        self._quiet = quiet
        self.phases: list[tuple[str, float, float]] = []

    def phase(self, name: str) -> None:
        self._close()
        self._phase, self._phase_wall, self._phase_cpu = name, time.monotonic(), _cpu_seconds()
        self.say("start")

    def _close(self) -> None:
        if self._phase:
            self.phases.append(
                (self._phase, time.monotonic() - self._phase_wall, _cpu_seconds() - self._phase_cpu)
            )
            self._phase = ""

    def say(self, message: str) -> None:
        if not self._quiet:
            elapsed = time.monotonic() - self._started
            print(f"[{elapsed:7.1f}s] {self._phase}: {message}", file=sys.stderr, flush=True)

    def finish(self) -> tuple[float, float]:
        self._close()
        return sum(p[1] for p in self.phases), sum(p[2] for p in self.phases)


@dataclass
class Simulation:
    results: dict[str, dict[str, CaseResult]]  # by rule set name, then job
    cases: list[scenarios.Case]
    pools: dict[str, Pool]
    samples: int


def build_pools(
    cases: list[scenarios.Case], model: Model, model_dir: Path, wanted: set[str], clock: Clock
) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    needed = {"normal": scenarios.traffics()[0]} | {case.traffic.key: case.traffic for case in cases}
    for key, kind in needed.items():
        seed = scenarios.Case(kind, 0.0, 0.0, 0.0).seed
        if kind.scenario is None:
            rows = scenarios.steady_outlier_rows(model, model_dir, seed, scenarios.POOL_ROWS)
        else:
            count = scenarios.NORMAL_POOL_ROWS if kind.kind == "normal" else scenarios.POOL_ROWS
            rows = scenarios.scenario_rows(model_dir, kind.scenario, seed, count)
        pools[key] = build_pool(model, rows, wanted)
        clock.say(f"{key}: {len(rows)} rows, {pools[key].outlier_share:.1%} flagged as outliers")
    return pools


def _phases(case: scenarios.Case, pools: dict[str, Pool]) -> list[Phase]:
    if case.warm_up_seconds == 0:
        return [Phase(pools[case.traffic.key], case.seconds)]
    return [Phase(pools["normal"], case.warm_up_seconds), Phase(pools[case.traffic.key], case.seconds)]


def write_samples(cases: list[scenarios.Case], pools: dict[str, Pool], path: Path, clock: Clock) -> int:
    """Every case's scrapes as OpenMetrics (series by series, in time order); returns the sample count."""
    samples = 0
    series = pools["normal"].series
    with path.open("w") as out:
        for number, case in enumerate(cases, 1):
            values = np.vstack([block for _, block in scrapes(_phases(case, pools), case.rate, case.seed)])
            timestamps = START + SCRAPE_SECONDS * np.arange(len(values), dtype=np.float64)
            for column, one in enumerate(series):
                labels = [("job", case.job), ("instance", INSTANCE), *one.labels]
                every = GAUGE_EVERY_SCRAPES if one.is_gauge else 1
                write_series(out, series_text(one.name, labels), timestamps[::every], values[::every, column])
                samples += len(timestamps[::every])
            if number % 10 == 0 or number == len(cases):
                clock.say(f"{number}/{len(cases)} cases, {samples / 1e6:.1f}M samples")
        out.write("# EOF\n")
    return samples


def _evaluate(
    rule_set: RuleSet,
    raw_blocks: Path,
    work: Path,
    end: float,
    metrics: set[str],
    gauges: set[str],
    clock: Clock,
) -> list[AlertFiring]:
    data = work / f"data-{rule_set.name.replace(' ', '-').replace('#', '')}"
    shutil.copytree(raw_blocks, data, copy_function=os.link)  # blocks are immutable: share their files
    record_intervals = [rule.interval for level in rule_set.levels for rule in level]
    lookback = max([GAUGE_SECONDS, *record_intervals]) + SCRAPE_SECONDS
    prometheus = Prometheus(data, work, lookback)
    try:
        clock.phase(f"{rule_set.name}: recording rules")
        prometheus.start()
        backfill_records(rule_set, prometheus, START, end, work, metrics, gauges, clock.say)
        clock.phase(f"{rule_set.name}: alerts")
        return alert_firings(rule_set, prometheus, START, end, clock.say)
    finally:
        prometheus.close()


def simulate(
    rule_sets: list[RuleSet],
    cases: list[scenarios.Case],
    model_dir: Path,
    work: Path,
    clock: Clock,
    route: Route | None = None,
) -> Simulation:
    route = route or route_for(ALERTMANAGER_CONFIG, {"category": "model_quality"})
    wanted = set().union(*(rule_set.referenced_names for rule_set in rule_sets))
    work.mkdir(parents=True, exist_ok=True)
    clock.phase("pools")
    model = Model(model_dir)
    pools = build_pools(cases, model, model_dir, wanted, clock)
    clock.phase("samples")
    raw = work / "samples.om"
    samples = write_samples(cases, pools, raw, clock)
    clock.phase("blocks")
    clock.say(f"{raw.stat().st_size / 1e9:.2f} GB of OpenMetrics")
    create_blocks(raw, work / "blocks")
    raw.unlink()
    end = START + max(case.end_seconds for case in cases)
    metrics = {series.name for series in pools["normal"].series}
    gauges = {series.name for series in pools["normal"].series if series.is_gauge}
    results = {}
    for rule_set in rule_sets:
        found = _evaluate(rule_set, work / "blocks", work, end, metrics, gauges, clock)
        results[rule_set.name] = case_results(cases, found, route, START)
    return Simulation(results, cases, pools, samples)
