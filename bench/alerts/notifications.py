"""The notifications Alertmanager 0.25 would send for a list of firings: a small model of its dispatcher,
inhibitor and notification log.

- Firing alerts are grouped by the route's `group_by` labels. A group is created when its first alert fires;
  it is flushed `group_wait` later and then every `group_interval` until it holds no alert any more (a
  resolved alert leaves the group at the flush after it resolved; an empty group is deleted, and the next
  firing creates a new one).
- At a flush, inhibited alerts are left out (an `inhibit_rules` source alert firing at that moment with the
  same `equal` labels), then the notification log decides as `DedupStage.needsUpdate` does: send if a firing
  alert was not in the last notification, if every alert resolved after a notification with firing alerts,
  if (with `send_resolved`) an alert resolved since the last notification, or if `repeat_interval` passed.
- Prometheus sends a firing alert at the evaluation it fires and a resolved one at the evaluation it
  resolves; delivery is taken as instant. Every notification is one Slack message.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.alerts.alert_state import Firing

DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
SECONDS_PER_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus/Alertmanager duration such as 1h30m or 10s."""
    parts = DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(number) * SECONDS_PER_UNIT[unit] for number, unit in parts)


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    operator: str
    value: str

    @classmethod
    def parse(cls, text: str) -> "Matcher":
        match = MATCHER.match(text)
        if match is None:
            raise ValueError(f'unsupported matcher {text!r} (expected name="value" and the like)')
        return cls(*match.groups())

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.operator == "=":
            return value == self.value
        if self.operator == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.operator == "=~" else not found


@dataclass(frozen=True, slots=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """What decides the notifications of one receiver: grouping, timing and inhibition."""

    group_by: tuple[str, ...]
    group_wait: float
    group_interval: float
    repeat_interval: float
    send_resolved: bool
    inhibit_rules: tuple[InhibitRule, ...] = ()


def route_for(config_file: Path, labels: dict[str, str]) -> Route:
    """The route (first matching child of the root, else the root) that alerts with `labels` take."""
    config = yaml.safe_load(config_file.read_text())
    root = config["route"]
    chosen = root
    for child in root.get("routes", []):
        if all(Matcher.parse(text).matches(labels) for text in child.get("matchers", [])):
            chosen = child
            break

    def setting(name: str, default: str) -> str:
        return chosen.get(name, root.get(name, default))

    receiver = next(r for r in config["receivers"] if r["name"] == setting("receiver", ""))
    configs = [c for key, value in receiver.items() if key.endswith("_configs") for c in value]
    inhibit = tuple(
        InhibitRule(
            tuple(Matcher.parse(m) for m in rule["source_matchers"]),
            tuple(Matcher.parse(m) for m in rule["target_matchers"]),
            tuple(rule.get("equal", [])),
        )
        for rule in config.get("inhibit_rules", [])
    )
    return Route(
        group_by=tuple(chosen.get("group_by", root.get("group_by", []))),
        group_wait=parse_duration(setting("group_wait", "30s")),
        group_interval=parse_duration(setting("group_interval", "5m")),
        repeat_interval=parse_duration(setting("repeat_interval", "4h")),
        send_resolved=any(c.get("send_resolved", False) for c in configs),
        inhibit_rules=inhibit,
    )


@dataclass(frozen=True, slots=True)
class Notification:
    at: float
    group: tuple[str, ...]
    firing: int  # alerts firing in the message (0: the all-resolved message)
    resolved: int


@dataclass(slots=True)
class _LogEntry:
    firing: frozenset[tuple]
    resolved: frozenset[tuple]
    at: float


class _Alerts:
    """The firings of one receiver's alerts, by alert (label set): an alert that resolves and fires again
    is the same alert to Alertmanager (same fingerprint)."""

    def __init__(self, firings: list[Firing]) -> None:
        self.intervals: dict[tuple, list[tuple[float, float | None]]] = {}
        for firing in firings:
            self.intervals.setdefault(tuple(sorted(dict(firing.labels).items())), []).append(
                (firing.fired_at, firing.resolved_at)
            )
        self.labels = {key: dict(key) for key in self.intervals}

    def firing(self, key: tuple, at: float) -> bool:
        return any(start <= at and (end is None or at < end) for start, end in self.intervals[key])

    def inhibited(self, key: tuple, at: float, rules: tuple[InhibitRule, ...]) -> bool:
        target = self.labels[key]
        for rule in rules:
            if not all(m.matches(target) for m in rule.target):
                continue
            for other, labels in self.labels.items():
                if (
                    other != key
                    and all(m.matches(labels) for m in rule.source)
                    and all(labels.get(name, "") == target.get(name, "") for name in rule.equal)
                    and self.firing(other, at)
                ):
                    return True
        return False


def notifications(firings: list[Firing], route: Route, until: float) -> list[Notification]:
    """Every notification sent until `until`, in time order."""
    alerts = _Alerts(firings)
    starts_by_group: dict[tuple[str, ...], list[tuple[float, tuple]]] = {}
    for key, intervals in alerts.intervals.items():
        group = tuple(alerts.labels[key].get(name, "") for name in route.group_by)
        starts_by_group.setdefault(group, []).extend((start, key) for start, _ in intervals)

    sent: list[Notification] = []
    for group, starts in starts_by_group.items():
        starts.sort()
        log: _LogEntry | None = None
        next_start = 0  # firings not yet in an aggregation group
        while next_start < len(starts):
            flush = starts[next_start][0] + route.group_wait  # a new aggregation group
            members: set[tuple] = set()
            while flush <= until:
                while next_start < len(starts) and starts[next_start][0] <= flush:
                    members.add(starts[next_start][1])
                    next_start += 1
                shown = {key for key in members if not alerts.inhibited(key, flush, route.inhibit_rules)}
                firing = frozenset(key for key in shown if alerts.firing(key, flush))
                resolved = frozenset(shown - firing)
                if _needs_update(log, firing, resolved, route, flush):
                    sent.append(Notification(flush, group, len(firing), len(resolved)))
                    log = _LogEntry(firing, resolved, flush)
                members = {key for key in members if alerts.firing(key, flush)}  # resolved ones leave
                if not members:
                    break  # the empty group is deleted; a later firing starts a new one
                flush += route.group_interval
            else:
                break  # the simulated time ended with the group still open
    return sorted(sent, key=lambda n: (n.at, n.group))


def _needs_update(
    log: _LogEntry | None, firing: frozenset[tuple], resolved: frozenset[tuple], route: Route, now: float
) -> bool:
    if log is None:
        return bool(firing)
    if not firing <= log.firing:
        return True
    if not firing:
        return bool(log.firing)
    if route.send_resolved and not resolved <= log.resolved:
        return True
    return log.at < now - route.repeat_interval


def per_hour(sent: Iterable[Notification], start: float, end: float) -> list[int]:
    """Notifications in each whole hour from start to end."""
    hours = int((end - start) // 3600)
    counts = [0] * hours
    for notification in sent:
        hour = int((notification.at - start) // 3600)
        if 0 <= hour < hours:
            counts[hour] += 1
    return counts
