"""`python -m bench.alerts`: how often the model-quality alerts page for nothing, and how fast they page for
something, with the real rules, the real models and metric code, and a real Prometheus, on this machine.

Simulates the traffic of issue #10's table at each rate (bench.alerts.scenarios), writes the service's own
metric samples every 10 simulated seconds (bench.alerts.samples) into a TSDB with promtool, evaluates the
recording rules and the model-quality alerts of two rule sets over the whole range with a Prometheus 2.42
(bench.alerts.evaluate), applies `for`/`keep_firing_for` and Alertmanager's grouping
(bench.alerts.notifications) and prints one table, before #10 and now side by side; the same goes to a
markdown file for the README.
"""

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.alerts import scenarios
from bench.alerts.notifications import route_for
from bench.alerts.report import build_tables, warm_up_false_alarms
from bench.alerts.rules import REPO_ROOT, default_evaluation_interval, load_rule_set
from bench.alerts.simulation import ALERTMANAGER_CONFIG, Clock, Simulation, simulate

BEFORE_RULES = REPO_ROOT / "bench" / "alert_rules_before_10"
BEFORE, CURRENT = "before #10", "current"
WARM_UP_MARGIN_SECONDS = 600.0  # beyond the longest window, so that it is full well before the change
QUICK = scenarios.Durations(6 * 3600.0, 2 * 3600.0, 0.0, 3600.0)  # warm-up 0: the rules' longest window


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.alerts",
        description=(
            "Simulate normal and changed traffic at 0.2 ... 1000 requests/s through the real models and "
            "metric code, load the samples into a real Prometheus and evaluate the model-quality alerts of "
            "the current rules and of the rules before issue #10: time to fire, false alarms over a "
            "simulated week, notifications per hour at a steady share at the threshold. Prints one table."
        ),
    )
    parser.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="trained models (default: models)"
    )
    parser.add_argument(
        "--rules", type=Path, default=REPO_ROOT / "prometheus" / "rules", help="current rules"
    )
    parser.add_argument(
        "--before-rules", type=Path, default=BEFORE_RULES, help="rules before #10, compared with"
    )
    parser.add_argument("--alertmanager-config", type=Path, default=ALERTMANAGER_CONFIG)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rates, 6 h normal, 1 h after changes"
    )
    parser.add_argument("--rates", type=float, nargs="+", help="requests/s to simulate (default: all six)")
    parser.add_argument(
        "--normal-days",
        type=float,
        help="simulated days of the normal case at each rate (default 7; the warm-ups add normal traffic)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="TEXT", help="only traffic whose key contains one of these"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file for the table (default: bench/results/alerts.md, none with --quick)",
    )
    parser.add_argument("--keep-dir", type=Path, help="keep samples, blocks and logs in this directory")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def chosen_cases(args: argparse.Namespace, warm_up: float) -> list[scenarios.Case]:
    durations = QUICK if args.quick else scenarios.FULL
    durations = scenarios.Durations(
        args.normal_days * 86400 if args.normal_days else durations.normal_seconds,
        durations.steady_seconds,
        max(durations.warm_up_seconds, warm_up),
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # on SIGTERM too, unwind so that Prometheus is stopped and the work directory removed
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    output = args.output or (None if args.quick else REPO_ROOT / "bench" / "results" / "alerts.md")
    started = datetime.now(UTC)
    clock = Clock(args.quiet)
    clock.phase("rules")
    interval = default_evaluation_interval()
    rule_sets = [
        load_rule_set(BEFORE, args.before_rules, interval),
        load_rule_set(CURRENT, args.rules, interval),
    ]
    longest = max(rule_set.longest_range_seconds for rule_set in rule_sets)
    cases = chosen_cases(args, longest + WARM_UP_MARGIN_SECONDS)
    if not cases:
        print("no case chosen: check --rates and --only", file=sys.stderr)
        return 2
    warm_up = max(case.warm_up_seconds for case in cases)
    clock.say(f"{len(cases)} cases; longest window {longest:g} s; warm-up {warm_up:g} s")
    work = args.keep_dir or Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    try:
        route = route_for(args.alertmanager_config, {"category": "model_quality"})
        simulation = simulate(rule_sets, cases, args.model_dir, work, clock, route)
    finally:
        if args.keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    wall, cpu = clock.finish()
    rates = tuple(sorted({case.rate for case in simulation.cases}))
    table = build_tables(simulation.cases, simulation.results[BEFORE], simulation.results[CURRENT], rates)
    text = describe(started, wall, cpu, clock, simulation) + "\n\n" + table + "\n"
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}", file=sys.stderr)
    return 0


def describe(started: datetime, wall: float, cpu: float, clock: Clock, simulation: Simulation) -> str:
    command = " ".join(["python -m bench.alerts", *sys.argv[1:]])
    phases = ", ".join(f"{name} {seconds:.0f} s ({cpu_s:.0f} s CPU)" for name, seconds, cpu_s in clock.phases)
    pools = simulation.pools
    shares = ", ".join(
        f"{key} {pools[key].outlier_share:.1%}" for key in pools if key == "normal" or "outliers" in key
    )
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}: `{command}` took {wall:.0f} s, {cpu:.0f} s CPU "
        f"(with promtool and Prometheus): {phases}.",
        f"{len(simulation.cases)} cases, {simulation.samples / 1e6:.1f}M samples. Share of the pool rows the "
        f"real detector flags as outliers: {shares}.",
    ]
    for name, result in simulation.results.items():
        fired, hours = warm_up_false_alarms(result)
        lines.append(f"{name}: {fired} alerts in {hours:.0f} hours of normal traffic in the warm-ups.")
    lines.append(
        "Cells: rules before #10 → current rules. Time from the change to the first model-quality alert "
        "firing (O outlier ratio, M feature mean, D feature distribution, C class share); for normal traffic "
        "the alerts fired in the normal case and the warm-ups at that rate, and their hours; ✓/✗ the issue's "
        "target where one applies."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
