"""The rule files the simulation evaluates: recording rules in dependency levels, model-quality alerts.

Expressions are taken from the YAML as written. Groups without `interval:` use the global
`evaluation_interval` of prometheus/prometheus.yml, as Prometheus does.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.alerts.notifications import parse_duration

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
CATEGORY = "model_quality"
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
RANGE = re.compile(r"\[\s*([0-9a-z]+)\s*(?::\s*[0-9a-z]*\s*)?\]")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


@dataclass(frozen=True, slots=True)
class RecordingRule:
    record: str
    expr: str
    labels: tuple[tuple[str, str], ...]
    interval: float
    group: str


@dataclass(frozen=True, slots=True)
class AlertingRule:
    alert: str
    expr: str
    hold: float  # `for`
    keep_firing_for: float
    labels: tuple[tuple[str, str], ...]
    interval: float
    group: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    directory: Path
    levels: tuple[tuple[RecordingRule, ...], ...]  # each level reads only raw series and earlier levels
    alerts: tuple[AlertingRule, ...]

    @property
    def record_names(self) -> set[str]:
        return {rule.record for level in self.levels for rule in level}

    @property
    def referenced_names(self) -> set[str]:
        """Every identifier in the expressions: a superset of the metric names the rules read."""
        exprs = [rule.expr for level in self.levels for rule in level] + [a.expr for a in self.alerts]
        return {name for expr in exprs for name in identifiers(expr)}

    @property
    def longest_range_seconds(self) -> float:
        exprs = [rule.expr for level in self.levels for rule in level] + [a.expr for a in self.alerts]
        return max((parse_duration(text) for expr in exprs for text in RANGE.findall(expr)), default=0.0)


def identifiers(expr: str) -> set[str]:
    return set(IDENTIFIER.findall(QUOTED.sub("", expr)))


def default_evaluation_interval(config_file: Path = PROMETHEUS_CONFIG) -> float:
    config = yaml.safe_load(config_file.read_text())
    return parse_duration(config.get("global", {}).get("evaluation_interval", "1m"))


def load_rule_set(name: str, directory: Path, default_interval: float) -> RuleSet:
    """The model-quality alerts of every *.yml in `directory` and the recording rules they depend on."""
    files = sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no rule files (*.yml) in {directory}")
    records: dict[str, list[RecordingRule]] = {}
    alerts: list[AlertingRule] = []
    for path in files:
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            interval = parse_duration(group["interval"]) if "interval" in group else default_interval
            for rule in group["rules"]:
                labels = tuple(sorted((k, str(v)) for k, v in (rule.get("labels") or {}).items()))
                if "record" in rule:
                    records.setdefault(rule["record"], []).append(
                        RecordingRule(rule["record"], rule["expr"], labels, interval, group["name"])
                    )
                elif dict(labels).get("category") == CATEGORY:
                    if any("{{" in value for _, value in labels):
                        raise ValueError(f"{path}: alert {rule['alert']} has templated labels: not simulated")
                    alerts.append(
                        AlertingRule(
                            rule["alert"],
                            rule["expr"],
                            parse_duration(rule.get("for", "0s")),
                            parse_duration(rule.get("keep_firing_for", "0s")),
                            labels,
                            interval,
                            group["name"],
                        )
                    )
    if not alerts:
        raise ValueError(f"no alerting rule with category={CATEGORY} in {directory}")
    alert_exprs = [alert.expr for alert in alerts]
    return RuleSet(name, directory, _levels(_inlined(records, alert_exprs), alert_exprs), tuple(alerts))


def _bare_use(name: str) -> re.Pattern[str]:
    """`name` used as a plain selector: no label matchers, range, offset or @ after it."""
    return re.compile(rf"(?<![a-zA-Z0-9_:]){re.escape(name)}(?![a-zA-Z0-9_:])(?!\s*(?:\{{|\[|offset\b|@))")


def _inlined(
    records: dict[str, list[RecordingRule]], alert_exprs: list[str]
) -> dict[str, list[RecordingRule]]:
    """The records to evaluate, with each record that only one rule of its own group reads (by plain name)
    written into that rule's expression instead of being stored.

    Exact: Prometheus evaluates a group's rules in order at one timestamp, so a later rule reads the value
    the earlier one has just recorded, which is the earlier expression's value at that timestamp. It spares
    storing and reloading series that only feed the next rule (e.g. per-bucket counts feeding a chi-square).
    """
    readers: dict[str, list[RecordingRule | None]] = {name: [] for name in records}  # None: an alert
    for rules in records.values():
        for rule in rules:
            for used in identifiers(rule.expr) & readers.keys():
                readers[used].append(rule)
    for expr in alert_exprs:
        for used in identifiers(expr) & readers.keys():
            readers[used].append(None)

    def inlinable(name: str) -> bool:
        [rule, *others] = records[name]
        consumers = readers[name]
        if others or rule.labels or len(consumers) != 1 or consumers[0] is None:
            return False
        consumer = consumers[0]
        text = QUOTED.sub('""', consumer.expr)
        return consumer.group == rule.group and len(_bare_use(name).findall(text)) == text.count(name)

    inline = {name for name in records if inlinable(name)}

    def expanded(expr: str, seen: tuple[str, ...] = ()) -> str:
        for name in sorted(identifiers(expr) & inline, key=len, reverse=True):
            if name in seen:
                raise ValueError(f"recording rules depend on each other in a cycle: {' -> '.join(seen)}")
            body = "(" + expanded(records[name][0].expr, (*seen, name)).strip() + ")"
            expr = _bare_use(name).sub(body.replace("\\", "\\\\"), expr)  # a template: escape backslashes
        return expr

    return {
        name: [
            RecordingRule(rule.record, expanded(rule.expr), rule.labels, rule.interval, rule.group)
            for rule in rules
        ]
        for name, rules in records.items()
        if name not in inline
    }


def _levels(
    records: dict[str, list[RecordingRule]], alert_exprs: list[str]
) -> tuple[tuple[RecordingRule, ...], ...]:
    """The recording rules the alerts need, directly or through other records, in dependency levels."""
    needed: set[str] = set()
    todo = [name for expr in alert_exprs for name in identifiers(expr) if name in records]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(dep for rule in records[name] for dep in identifiers(rule.expr) if dep in records)
    level_of: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise ValueError(
                f"recording rules depend on each other in a cycle: {' -> '.join(seen + (name,))}"
            )
        if name not in level_of:
            deps = {d for rule in records[name] for d in identifiers(rule.expr) if d in records and d != name}
            level_of[name] = 1 + max((level(d, seen + (name,)) for d in deps), default=-1)
        return level_of[name]

    for name in needed:
        level(name)
    depth = max(level_of.values(), default=-1) + 1
    return tuple(
        tuple(rule for name in sorted(needed) if level_of[name] == index for rule in records[name])
        for index in range(depth)
    )
