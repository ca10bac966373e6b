"""`for` and `keep_firing_for` applied to an alert expression's results, step by step as Prometheus 2.42's
`AlertingRule.Eval` does.

At every evaluation: a label set in the result that has no active alert (or only a resolved one) becomes
pending, active from that evaluation; a pending alert fires at the first evaluation at least `for` after it
became active (the same evaluation when `for` is 0); a label set missing from the result drops its pending
alert at once, and resolves a firing one, unless `keep_firing_for` is set: then it keeps firing until an
evaluation at least `keep_firing_for` after the first evaluation it was missing from. A label set present
again before that clears the keep-firing clock.
"""

from collections.abc import Iterable
from dataclasses import dataclass

LabelSet = tuple[tuple[str, str], ...]  # an alert instance is identified by its label set (sorted pairs)


@dataclass(frozen=True, slots=True)
class Firing:
    """One firing of one alert instance, in seconds; resolved_at is None if still firing at the end."""

    labels: LabelSet
    active_at: float
    fired_at: float
    resolved_at: float | None


@dataclass(slots=True)
class _Active:
    active_at: float
    fired_at: float | None = None
    keep_firing_since: float | None = None


def firings(
    evaluations: Iterable[tuple[float, set[LabelSet]]], hold_seconds: float, keep_firing_for_seconds: float
) -> list[Firing]:
    """Every firing, in the order they end, from (evaluation time, label sets in the result) in time order."""
    active: dict[LabelSet, _Active] = {}
    done: list[Firing] = []
    for timestamp, present in evaluations:
        for labels in present:
            if labels not in active:
                active[labels] = _Active(active_at=timestamp)
        for labels, alert in list(active.items()):
            if labels not in present:
                keep_firing = False
                if alert.fired_at is not None and keep_firing_for_seconds > 0:
                    if alert.keep_firing_since is None:
                        alert.keep_firing_since = timestamp
                    keep_firing = timestamp - alert.keep_firing_since < keep_firing_for_seconds
                if not keep_firing:
                    if alert.fired_at is not None:
                        done.append(Firing(labels, alert.active_at, alert.fired_at, timestamp))
                    del active[labels]
                    continue
            else:
                alert.keep_firing_since = None
            if alert.fired_at is None and timestamp - alert.active_at >= hold_seconds:
                alert.fired_at = timestamp
    for labels, alert in active.items():
        if alert.fired_at is not None:
            done.append(Firing(labels, alert.active_at, alert.fired_at, None))
    return done
