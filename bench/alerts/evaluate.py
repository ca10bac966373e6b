"""The rules of one rule set over the whole simulated range, by a real Prometheus.

Recording rules are evaluated with query_range at their group's interval, level after level (a level reads
only raw series and earlier levels): each level's results are written as OpenMetrics, turned into blocks by
promtool and moved into the data directory before Prometheus restarts for the next level, which is what
`promtool tsdb create-blocks-from rules` does, in one block per level instead of one per rule and 2 hours.
A series that a rule stops producing gets a NaN at the first evaluation it is missing from, standing in for
the staleness marker Prometheus writes then: NaN fails every comparison, and an alert sample that is NaN is
taken as no sample (the queries' lookback, just above the longest interval, ends the NaN soon after).
Records that read only gauges (the training baselines) are constant: they are evaluated every
`GAUGE_SECONDS` instead of every interval, which changes no lookup (lookback > GAUGE_SECONDS).
Alert expressions are then evaluated the same way at their group's interval, and `for`/`keep_firing_for`
applied (bench.alerts.alert_state).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from bench.alerts.alert_state import Firing, firings
from bench.alerts.rules import AlertingRule, RecordingRule, RuleSet, identifiers
from bench.alerts.samples import GAUGE_SECONDS
from bench.alerts.tsdb import Prometheus, create_blocks, series_text, write_series

# Groups are evaluated at different offsets, as Prometheus spreads groups over their interval; scrapes
# are at whole multiples of 10 s.
RECORD_OFFSET_SECONDS = 3.0
ALERT_OFFSET_SECONDS = 6.0

Progress = Callable[[str], None]


def grid_start(start: float, interval: float, offset: float) -> float:
    return start + offset % interval


def _record_samples(
    rule: RecordingRule, step: float, prometheus: Prometheus, start: float, end: float, out: TextIO
) -> int:
    first = grid_start(start, rule.interval, RECORD_OFFSET_SECONDS)
    written = 0
    for result in prometheus.query_range(rule.expr, first, end, step):
        labels = {k: v for k, v in result.labels.items() if k != "__name__"} | dict(rule.labels)
        timestamps, values = result.timestamps, result.values
        following = timestamps + step
        missing_next = np.append(np.diff(timestamps) > 1.5 * step, timestamps[-1] + step <= end)
        if missing_next.any():
            timestamps = np.concatenate([timestamps, following[missing_next]])
            values = np.concatenate([values, np.full(int(missing_next.sum()), np.nan)])
            order = np.argsort(timestamps, kind="stable")
            timestamps, values = timestamps[order], values[order]
        write_series(out, series_text(rule.record, sorted(labels.items())), timestamps, values)
        written += len(timestamps)
    return written


def backfill_records(
    rule_set: RuleSet,
    prometheus: Prometheus,
    start: float,
    end: float,
    work_dir: Path,
    metrics: set[str],
    gauges: set[str],
    say: Progress,
) -> None:
    """`metrics`: the raw series names; `gauges`: those that are constant gauges."""
    constant = set(gauges)
    for index, level in enumerate(rule_set.levels):
        path = work_dir / f"records-{index}.om"
        written = 0
        with path.open("w") as out:
            for rule in level:
                names = identifiers(rule.expr) & (metrics | rule_set.record_names)
                if names and names <= constant and "[" not in rule.expr and "time(" not in rule.expr:
                    constant.add(rule.record)
                    step = max(rule.interval, GAUGE_SECONDS)
                else:
                    step = rule.interval
                say(f"level {index + 1}/{len(rule_set.levels)}: {rule.record} every {step:g}s")
                written += _record_samples(rule, step, prometheus, start, end, out)
            out.write("# EOF\n")
        if written:
            prometheus.add_blocks(create_blocks(path, work_dir / f"{rule_set.name}-blocks-{index}"))
        path.unlink()


@dataclass(frozen=True)
class AlertFiring:
    rule: AlertingRule
    firing: Firing

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.firing.labels)


def alert_firings(
    rule_set: RuleSet, prometheus: Prometheus, start: float, end: float, say: Progress
) -> list[AlertFiring]:
    found: list[AlertFiring] = []
    for rule in rule_set.alerts:
        say(f"{rule.alert} every {rule.interval:g}s")
        first = grid_start(start, rule.interval, ALERT_OFFSET_SECONDS)
        steps = int((end - first) // rule.interval) + 1
        present: dict[int, set] = {}
        for result in prometheus.query_range(rule.expr, first, end, rule.interval):
            labels = {k: v for k, v in result.labels.items() if k != "__name__"} | dict(rule.labels)
            key = tuple(sorted((labels | {"alertname": rule.alert}).items()))
            stamps = result.timestamps[~np.isnan(result.values)]  # NaN: a stale record (see above)
            for step in np.rint((stamps - first) / rule.interval).astype(int).tolist():
                present.setdefault(step, set()).add(key)
        nothing: set = set()
        evaluations = ((first + step * rule.interval, present.get(step, nothing)) for step in range(steps))
        found += [AlertFiring(rule, f) for f in firings(evaluations, rule.hold, rule.keep_firing_for)]
    return found
