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
from dataclasses import dataclass, field
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
            raise ValueError(f"unsupported matcher {text!r} (expected name=\"value\" and the like)")
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
    firing: frozenset[int]
    resolved: frozenset[int]
    at: float


@dataclass(slots=True)
class _Group:
    members: list[int] = field(default_factory=list)  # indices into the firings list


def _is_firing(firing: Firing, at: float) -> bool:
    return firing.fired_at <= at and (firing.resolved_at is None or at < firing.resolved_at)


def notifications(firings: list[Firing], route: Route, until: float) -> list[Notification]:
    """Every notification sent until `until`, in time order. Firing labels must be dicts (or pairs)."""
    labels = [dict(f.labels) for f in firings]

    def inhibited(index: int, at: float) -> bool:
        for rule in route.inhibit_rules:
            if not all(m.matches(labels[index]) for m in rule.target):
                continue
            for other, firing in enumerate(firings):
                if (
                    other != index
                    and _is_firing(firing, at)
                    and all(m.matches(labels[other]) for m in rule.source)
                    and all(labels[other].get(name, "") == labels[index].get(name, "") for name in rule.equal)
                ):
                    return True
        return False

    by_group: dict[tuple[str, ...], list[int]] = {}
    for index in sorted(range(len(firings)), key=lambda i: firings[i].fired_at):
        key = tuple(labels[index].get(name, "") for name in route.group_by)
        by_group.setdefault(key, []).append(index)

    sent: list[Notification] = []
    for key, members in by_group.items():
        log: _LogEntry | None = None
        pending = list(members)  # firings not yet in a group, by fired_at
        while pending:
            created = firings[pending[0]].fired_at
            flush = created + route.group_wait
            group: list[int] = []
            while flush <= until:
                while pending and firings[pending[0]].fired_at <= flush:
                    group.append(pending.pop(0))
                shown = [i for i in group if not inhibited(i, flush)]
                firing = frozenset(i for i in shown if _is_firing(firings[i], flush))
                resolved = frozenset(i for i in shown if not _is_firing(firings[i], flush))
                if _needs_update(log, firing, resolved, route, flush):
                    sent.append(Notification(flush, key, len(firing), len(resolved)))
                    log = _LogEntry(firing, resolved, flush)
                # resolved alerts leave the group once flushed
                group = [i for i in group if _is_firing(firings[i], flush)]
                if not group:
                    break
                flush += route.group_interval
            else:
                break  # the simulated time ended with the group still open
    return sorted(sent, key=lambda n: (n.at, n.group))


def _needs_update(
    log: _LogEntry | None, firing: frozenset[int], resolved: frozenset[int], route: Route, now: float
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
