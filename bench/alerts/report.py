"""From firings to the one table: per case the first alert and its time to fire, alert counts for normal
traffic, notifications per hour for the steady share, and the issue's targets met or missed."""

from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.alerts.evaluate import AlertFiring
from bench.alerts.notifications import Notification, Route, notifications, per_hour
from bench.alerts.scenarios import SHORT_NAMES, Case


@dataclass(frozen=True)
class CaseResult:
    case: Case
    first_alert: str | None  # the first model-quality alert firing after the change
    first_seconds: float | None  # after the change (0: already firing at the change)
    target_seconds: float | None  # the first of the case's target alerts, after the change
    alerts_fired: int  # firings from the start to the end of the case
    warm_up_alerts_fired: int
    notifications: tuple[Notification, ...]
    # normal cases: with the warm-ups of every case at the same rate (normal traffic too)
    normal_alerts_fired: int = 0
    normal_hours: float = 0.0

    @property
    def notifications_per_hour(self) -> list[int]:
        return per_hour(self.notifications, 0.0, self.case.end_seconds)


def case_results(
    cases: list[Case], found: list[AlertFiring], route: Route, start: float
) -> dict[str, CaseResult]:
    """Times relative to `start` (the simulated time zero)."""
    by_job: dict[str, list[AlertFiring]] = {}
    for item in found:
        by_job.setdefault(item.labels.get("job", ""), []).append(item)
    results = {}
    for case in cases:
        change = start + case.warm_up_seconds
        end = start + case.end_seconds
        mine = [item for item in by_job.get(case.job, []) if item.firing.fired_at <= end]
        after = [
            (max(item.firing.fired_at - change, 0.0), item.rule.alert)
            for item in mine
            if item.firing.resolved_at is None or item.firing.resolved_at > change
        ]
        first = min(after, default=None)
        target = min((s for s, name in after if name in case.traffic.target_alerts), default=None)
        sent = notifications([item.firing for item in mine], route, end)
        relative = tuple(Notification(n.at - start, n.group, n.firing, n.resolved) for n in sent)
        results[case.job] = CaseResult(
            case,
            first[1] if first else None,
            first[0] if first else None,
            target,
            len(mine),
            sum(1 for item in mine if item.firing.fired_at < change),
            relative,
        )
    for job, result in results.items():
        if result.case.traffic.kind == "normal":
            same_rate = [r for r in results.values() if r.case.rate == result.case.rate and r is not result]
            results[job] = replace(
                result,
                normal_alerts_fired=result.alerts_fired + sum(r.warm_up_alerts_fired for r in same_rate),
                normal_hours=(result.case.seconds + sum(r.case.warm_up_seconds for r in same_rate)) / 3600,
            )
    return results


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Target:
    text: str
    applies: Callable[[Case], bool]
    figure: Callable[[CaseResult], float | None]  # None: never happened
    limit: float
    unit: str  # "s" (time to fire), "alerts", "notifications/h"

    def met(self, value: float | None) -> bool:
        return value is not None and value <= self.limit

    def show(self, value: float | None) -> str:
        if self.unit == "s":
            return duration_text(value)
        return "never" if value is None else f"{value:g}"


def _drift(factor: float, rate: Callable[[float], bool]) -> Callable[[Case], bool]:
    return lambda case: (
        case.traffic.kind == "drift" and case.traffic.key.endswith(f"_x{factor:g}") and rate(case.rate)
    )


def _kind(kind: str, key_part: str, rate: Callable[[float], bool]) -> Callable[[Case], bool]:
    return lambda case: case.traffic.kind == kind and key_part in case.traffic.key and rate(case.rate)


def _to_target(result: CaseResult) -> float | None:
    return result.target_seconds


def _max_per_hour(result: CaseResult) -> float | None:
    return float(max(result.notifications_per_hour, default=0))


TARGETS = (
    Target(
        "normal traffic, every rate: 0 model-quality alerts",
        lambda c: c.traffic.kind == "normal",
        lambda r: float(r.normal_alerts_fired),
        0,
        "alerts",
    ),
    Target(
        "one feature +8%, ≥ 20 requests/s: fires within 3 minutes",
        _drift(1.08, lambda r: r >= 20),
        _to_target,
        180,
        "s",
    ),
    Target(
        "one feature +8%, 1 request/s: fires within 1 hour",
        _drift(1.08, lambda r: r == 1),
        _to_target,
        3600,
        "s",
    ),
    Target(
        "one feature +20%, 0.2 requests/s: fires within 2 hours",
        _drift(1.2, lambda r: r == 0.2),
        _to_target,
        7200,
        "s",
    ),
    Target(
        "40% outliers, 1 request/s: within 10 minutes",
        _kind("outliers", "0.4", lambda r: r == 1),
        _to_target,
        600,
        "s",
    ),
    Target(
        "40% outliers, ≥ 20 requests/s: within 90 seconds",
        _kind("outliers", "0.4", lambda r: r >= 20),
        _to_target,
        90,
        "s",
    ),
    Target(
        "steady 21% outliers, 20 requests/s: at most 2 notifications an hour",
        _kind("steady", "", lambda r: True),
        _max_per_hour,
        2,
        "notifications/h",
    ),
    Target(
        "spread ×1.5, mean kept, 5 requests/s: distribution alert within 15 minutes",
        _kind("spread", "", lambda r: r == 5),
        _to_target,
        900,
        "s",
    ),
    Target(
        "one class at 80%, 5 requests/s: class-share alert within 15 minutes",
        _kind("skew", "", lambda r: r == 5),
        _to_target,
        900,
        "s",
    ),
)


def _worst(target: Target, results: dict[str, CaseResult]) -> tuple[float | None, bool, int] | None:
    """(worst figure, all met, cases) over the cases the target applies to, None if it applies to none."""
    chosen = [r for r in results.values() if target.applies(r.case)]
    if not chosen:
        return None
    figures = [target.figure(r) for r in chosen]
    known = [f for f in figures if f is not None]
    worst = max(known) if len(known) == len(figures) else None
    return worst, all(target.met(f) for f in figures), len(chosen)


def _cell(result: CaseResult | None) -> str:
    if result is None:
        return "–"
    case = result.case
    if case.traffic.kind == "normal":
        return f"{result.normal_alerts_fired} in {result.normal_hours:.0f} h"
    if case.traffic.kind == "steady":
        hours = result.notifications_per_hour
        mean = sum(hours) / len(hours) if hours else 0.0
        return f"{max(hours, default=0)}/h max, {mean:.1f}/h mean"
    if result.first_alert is None:
        return "never"
    return f"{duration_text(result.first_seconds)} {SHORT_NAMES.get(result.first_alert, result.first_alert)}"


def _mark(result: CaseResult | None) -> str:
    if result is None:
        return ""
    for target in TARGETS:
        if target.applies(result.case):
            return " ✓" if target.met(target.figure(result)) else " ✗"
    return ""


def build_tables(
    cases: list[Case], before: dict[str, CaseResult], current: dict[str, CaseResult], rates: tuple[float, ...]
) -> str:
    rows_by_traffic: dict[str, list[Case]] = {}
    for case in cases:
        rows_by_traffic.setdefault(case.traffic.key, []).append(case)
    header = "| traffic | " + " | ".join(f"{rate:g}/s" for rate in rates) + " |"
    lines = [header, "|---|" + "---|" * len(rates)]
    for group in rows_by_traffic.values():
        traffic = group[0].traffic
        by_rate = {case.rate: case for case in group}
        cells = []
        for rate in rates:
            at_rate = by_rate.get(rate)
            if at_rate is None:
                cells.append("")
                continue
            old_result, new_result = before.get(at_rate.job), current.get(at_rate.job)
            cells.append(f"{_cell(old_result)} → {_cell(new_result)}{_mark(new_result)}")
        lines.append(f"| {traffic.title} | " + " | ".join(cells) + " |")

    lines += ["", "| target | before #10 | current rules | |", "|---|---|---|---|"]
    for target in TARGETS:
        old, new = _worst(target, before), _worst(target, current)
        if new is None:
            lines.append(f"| {target.text} | not simulated | not simulated | |")
            continue
        old_text = "–" if old is None else target.show(old[0])
        verdict = "PASS" if new[1] else "FAIL"
        lines.append(
            f"| {target.text} | {old_text} | {target.show(new[0])} (worst of {new[2]}) | {verdict} |"
        )
    return "\n".join(lines)


def warm_up_false_alarms(results: dict[str, CaseResult]) -> tuple[int, float]:
    """Alerts fired during the normal warm-ups, and the hours of normal traffic they span."""
    fired = sum(r.warm_up_alerts_fired for r in results.values())
    hours = sum(r.case.warm_up_seconds for r in results.values()) / 3600
    return fired, hours
