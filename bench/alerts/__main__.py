"""`python -m bench.alerts`: how often the model-quality alerts page for nothing, and how fast they page for
something, with the real rules, the real models and metric code, and a real Prometheus, on this machine.

Simulates the traffic of issue #10's table at each rate (bench.alerts.scenarios), writes the service's own
metric samples every 10 simulated seconds (bench.alerts.samples) into a TSDB with promtool, evaluates the
recording rules and the model-quality alerts of two rule sets over the whole range with a Prometheus 2.42
(bench.alerts.evaluate), applies `for`/`keep_firing_for` and Alertmanager's grouping (bench.alerts.notifications)
and prints one table, before #10 and now side by side; the same goes to a markdown file for the README.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.alerts import scenarios
from bench.alerts.evaluate import alert_firings, backfill_records
from bench.alerts.notifications import route_for
from bench.alerts.report import build_tables, case_results, warm_up_false_alarms
from bench.alerts.rules import REPO_ROOT, RuleSet, default_evaluation_interval, load_rule_set
from bench.alerts.samples import GAUGE_EVERY_SCRAPES, SCRAPE_SECONDS, Phase, Pool, build_pool, scrapes
from bench.alerts.tsdb import Prometheus, create_blocks, series_text, write_series
from service.model import Model

START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # simulated time zero (any fixed past instant)
INSTANCE = "sim:8000"
BEFORE_RULES = REPO_ROOT / "bench" / "alert_rules_before_10"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
QUICK = scenarios.Durations(6 * 3600.0, 2 * 3600.0, 0.0, 3600.0)  # warm-up 0: the rules' longest window


class Clock:
    """Progress on stderr (phase, what, elapsed) and the time each phase took."""

    def __init__(self, quiet: bool) -> None:
        self._started = time.monotonic()
        self._phase_started = self._started
        self._phase = ""
        self._quiet = quiet
        self.phases: list[tuple[str, float]] = []

    def phase(self, name: str) -> None:
        self._close()
        self._phase, self._phase_started = name, time.monotonic()
        self.say("start")

    def _close(self) -> None:
        if self._phase:
            self.phases.append((self._phase, time.monotonic() - self._phase_started))

    def say(self, message: str) -> None:
        if not self._quiet:
            print(f"[{time.monotonic() - self._started:7.1f}s] {self._phase}: {message}", file=sys.stderr, flush=True)

    def finish(self) -> float:
        self._close()
        self._phase = ""
        return time.monotonic() - self._started


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.alerts",
        description=(
            "Simulate normal and changed traffic at 0.2 ... 1000 requests/s through the real models and metric "
            "code, load the samples into a real Prometheus and evaluate the model-quality alerts of the current "
            "rules and of the rules before issue #10: time to fire, false alarms over a simulated week, "
            "notifications per hour at a steady share at the threshold. Prints one table."
        ),
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="trained models (default: models)")
    parser.add_argument("--rules", type=Path, default=REPO_ROOT / "prometheus" / "rules", help="current rules")
    parser.add_argument("--before-rules", type=Path, default=BEFORE_RULES, help="rules before #10, compared with")
    parser.add_argument("--alertmanager-config", type=Path, default=ALERTMANAGER_CONFIG)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rates, 6 h normal, 1 h after changes")
    parser.add_argument("--rates", type=float, nargs="+", help="requests/s to simulate (default: all six)")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only traffic whose key contains one of these")
    parser.add_argument("--output", type=Path, help="markdown file for the table (default: bench/results/alerts.md, "
                        "none with --quick)")
    parser.add_argument("--keep-dir", type=Path, help="keep samples, blocks and logs in this directory")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def chosen_cases(args: argparse.Namespace, warm_up: float) -> list[scenarios.Case]:
    durations = QUICK if args.quick else scenarios.FULL
    durations = scenarios.Durations(
        durations.normal_seconds, durations.steady_seconds, max(durations.warm_up_seconds, warm_up),
        durations.after_change_seconds,
    )
    rates = tuple(args.rates) if args.rates else (scenarios.QUICK_RATES if args.quick else scenarios.RATES)
    chosen = [
        case
        for case in scenarios.cases(durations, rates)
        if case.rate in rates or case.traffic.kind == "steady"
    ]
    if args.only:
        chosen = [case for case in chosen if any(text in case.traffic.key for text in args.only)]
    return chosen


def build_pools(
    cases: list[scenarios.Case], model: Model, model_dir: Path, wanted: set[str], clock: Clock
) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    needed = {"normal": scenarios.traffics()[0]} | {case.traffic.key: case.traffic for case in cases}
    for key, kind in needed.items():
        if kind.kind != "steady" and kind.scenario is None:
            continue
        seed = scenarios.Case(kind, 0.0, 0.0, 0.0).seed
        if kind.kind == "steady":
            rows = scenarios.steady_outlier_rows(model, model_dir, seed, scenarios.POOL_ROWS)
        else:
            count = scenarios.NORMAL_POOL_ROWS if kind.kind == "normal" else scenarios.POOL_ROWS
            rows = scenarios.scenario_rows(model_dir, kind.scenario, seed, count)
        pools[key] = build_pool(model, rows, wanted)
        clock.say(f"{key}: {len(rows)} rows, {pools[key].outlier_share:.1%} flagged as outliers")
    return pools


def phases_of(case: scenarios.Case, pools: dict[str, Pool]) -> list[Phase]:
    if case.traffic.kind in ("normal", "steady"):
        return [Phase(pools[case.traffic.key], case.seconds)]
    return [Phase(pools["normal"], case.warm_up_seconds), Phase(pools[case.traffic.key], case.seconds)]


def write_samples(cases: list[scenarios.Case], pools: dict[str, Pool], path: Path, clock: Clock) -> int:
    """Every case's scrapes as OpenMetrics (series by series, in time order); returns the sample count."""
    samples = 0
    with path.open("w") as out:
        for number, case in enumerate(cases, 1):
            blocks = list(scrapes(phases_of(case, pools), case.rate, case.seed))
            values = np.vstack([block for _, block in blocks])
            timestamps = START + SCRAPE_SECONDS * np.arange(len(values), dtype=np.float64)
            series = pools["normal"].series
            for column, one in enumerate(series):
                labels = [("job", case.job), ("instance", INSTANCE), *one.labels]
                every = GAUGE_EVERY_SCRAPES if one.is_gauge else 1
                write_series(out, series_text(one.name, labels), timestamps[::every], values[::every, column])
                samples += len(timestamps[::every])
            if number % 10 == 0 or number == len(cases):
                clock.say(f"{number}/{len(cases)} cases, {samples / 1e6:.1f}M samples")
        out.write("# EOF\n")
    return samples


def evaluate(rule_set: RuleSet, raw_blocks: Path, work: Path, end: float, clock: Clock) -> list:
    data = work / f"data-{rule_set.name}"
    shutil.copytree(raw_blocks, data, copy_function=os.link)  # blocks are immutable: share the files
    record_intervals = [rule.interval for level in rule_set.levels for rule in level]
    lookback = max([SCRAPE_SECONDS * GAUGE_EVERY_SCRAPES, *record_intervals]) + SCRAPE_SECONDS
    prometheus = Prometheus(data, work, lookback)
    try:
        prometheus.start()
        clock.phase(f"{rule_set.name}: recording rules")
        backfill_records(rule_set, prometheus, START, end, work, clock.say)
        clock.phase(f"{rule_set.name}: alerts")
        return alert_firings(rule_set, prometheus, START, end, clock.say)
    finally:
        prometheus.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    output = args.output or (None if args.quick else REPO_ROOT / "bench" / "results" / "alerts.md")
    started = datetime.now(UTC)
    clock = Clock(args.quiet)
    clock.phase("rules")
    interval = default_evaluation_interval()
    rule_sets = [
        load_rule_set("before #10", args.before_rules, interval),
        load_rule_set("current", args.rules, interval),
    ]
    longest = max(rule_set.longest_range_seconds for rule_set in rule_sets)
    cases = chosen_cases(args, longest + 600)
    if not cases:
        print("no case chosen: check --rates and --only", file=sys.stderr)
        return 2
    wanted = set().union(*(rule_set.referenced_names for rule_set in rule_sets))
    route = route_for(args.alertmanager_config, {"category": "model_quality"})
    clock.say(f"{len(cases)} cases; longest window {longest:g}s; warm-up {cases[-1].warm_up_seconds:g}s")

    work = Path(tempfile.mkdtemp(prefix="bench-alerts-")) if args.keep_dir is None else args.keep_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        clock.phase("pools")
        model = Model(args.model_dir)
        pools = build_pools(cases, model, args.model_dir, wanted, clock)
        skipped = [case for case in cases if case.traffic.key not in pools]
        cases = [case for case in cases if case.traffic.key in pools]
        clock.phase("samples")
        raw = work / "samples.om"
        samples = write_samples(cases, pools, raw, clock)
        clock.phase("blocks")
        create_blocks(raw, work / "blocks")
        clock.say(f"{raw.stat().st_size / 1e9:.2f} GB of OpenMetrics")
        raw.unlink()
        end = START + max(case.end_seconds for case in cases)
        results = {}
        for rule_set in rule_sets:
            found = evaluate(rule_set, work / "blocks", work, end, clock)
            results[rule_set.name] = case_results(cases, found, route, START)
        clock.phase("report")
        rates = tuple(sorted({case.rate for case in cases}))
        table = build_tables(cases, results["before #10"], results["current"], rates)
        total = clock.finish()
    finally:
        if args.keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    text = describe(args, started, total, clock, samples, cases, skipped, pools, results) + "\n\n" + table + "\n"
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}", file=sys.stderr)
    return 0


def describe(args, started, total, clock, samples, cases, skipped, pools, results) -> str:
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, Python {platform.python_version()}: "
        f"`python -m bench.alerts{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` in {total:.0f} s "
        f"({', '.join(f'{name} {seconds:.0f} s' for name, seconds in clock.phases)}).",
        f"{len(cases)} cases, {samples / 1e6:.1f}M samples. Pools (rows through the real models): "
        + ", ".join(f"{key} {pool.outlier_share:.1%} outliers" for key, pool in pools.items() if key in
                    ("normal", "outliers_0.3", "outliers_0.4", "steady_outliers_0.21"))
        + ".",
    ]
    for name, result in results.items():
        fired, hours = warm_up_false_alarms(result)
        lines.append(f"{name}: {fired} alerts during {hours:.0f} hours of normal warm-up traffic.")
    if skipped:
        lines.append("Not simulated (service.traffic has no such scenario yet): "
                     + ", ".join(sorted({case.traffic.title for case in skipped})) + ".")
    lines.append(
        "Cells: before #10 → current rules; time from the change to the first model-quality alert firing "
        "(O outlier ratio, M feature mean, D feature distribution, C class share); ✓/✗ the issue's target."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
