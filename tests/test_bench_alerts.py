"""The alert simulation (python -m bench.alerts): the `for`/`keep_firing_for` state machine and the
Alertmanager notification count on hand-computed sequences, and the whole harness at a tiny size with the
real models, promtool and Prometheus on a hand-written rule with a known threshold.

Times here are simulated seconds, computed by hand; nothing is timed.
"""

from pathlib import Path

import pytest

from bench.alerts.alert_state import Firing, firings
from bench.alerts.notifications import InhibitRule, Matcher, Route, notifications, per_hour, route_for

STEP = 10.0
A = (("alertname", "A"), ("job", "j"))
B = (("alertname", "A"), ("job", "j"), ("feature", "x"))


def evaluations(present_at: dict[float, set], until: float) -> list[tuple[float, set]]:
    """Evaluations every STEP from 0 to `until`, with the label sets present at each."""
    steps = int(until // STEP) + 1
    return [(i * STEP, present_at.get(i * STEP, set())) for i in range(steps)]


def present(labels: tuple, *ranges: tuple[float, float]) -> dict[float, set]:
    """`labels` present at every evaluation in each [first, last] range."""
    result: dict[float, set] = {}
    for first, last in ranges:
        t = first
        while t <= last:
            result.setdefault(t, set()).add(labels)
            t += STEP
    return result


# -------------------------------------------------------------------------------- for / keep_firing_for


def test_an_alert_fires_once_pending_for_its_for_duration_and_resolves_when_absent():
    result = firings(evaluations(present(A, (0, 50)), 100), hold_seconds=30, keep_firing_for_seconds=0)
    assert result == [Firing(A, active_at=0, fired_at=30, resolved_at=60)]


def test_a_pending_alert_that_disappears_never_fires_even_with_keep_firing_for():
    result = firings(evaluations(present(A, (0, 20)), 100), hold_seconds=30, keep_firing_for_seconds=60)
    assert result == []


def test_for_zero_fires_at_the_first_true_evaluation():
    result = firings(evaluations(present(A, (20, 20)), 100), hold_seconds=0, keep_firing_for_seconds=0)
    assert result == [Firing(A, 20, 20, 30)]


def test_keep_firing_for_holds_a_firing_alert_and_restarts_when_the_condition_returns():
    # true 0..50 (fires at 30), false 60..80 (kept: 0, 10, 20 s < 30 s), true at 90 (clock cleared),
    # false from 100: kept at 100, 110, 120, resolved at 130 (130 - 100 = 30 s is not < 30 s)
    timeline = present(A, (0, 50), (90, 90))
    result = firings(evaluations(timeline, 200), hold_seconds=30, keep_firing_for_seconds=30)
    assert result == [Firing(A, 0, 30, 130)]


def test_without_keep_firing_for_the_same_timeline_flaps():
    timeline = present(A, (0, 50), (90, 130))
    result = firings(evaluations(timeline, 200), hold_seconds=0, keep_firing_for_seconds=0)
    assert result == [Firing(A, 0, 0, 60), Firing(A, 90, 90, 140)]


def test_label_sets_are_separate_alerts():
    timeline = present(A, (0, 50))
    for t, labels in present(B, (20, 80)).items():
        timeline.setdefault(t, set()).update(labels)
    result = firings(evaluations(timeline, 200), hold_seconds=30, keep_firing_for_seconds=0)
    assert result == [Firing(A, 0, 30, 60), Firing(B, 20, 50, 90)]


def test_an_alert_still_firing_at_the_end_has_no_resolved_time():
    result = firings(evaluations(present(A, (0, 100)), 100), hold_seconds=30, keep_firing_for_seconds=0)
    assert result == [Firing(A, 0, 30, None)]


# --------------------------------------------------------------------------------------- notifications

ROUTE = Route(
    group_by=("alertname", "job"), group_wait=10, group_interval=30, repeat_interval=14400, send_resolved=True
)


def fired(labels: tuple, at: float, until: float | None) -> Firing:
    return Firing(labels, at, at, until)


def times(sent) -> list[tuple[float, int, int]]:
    return [(n.at, n.firing, n.resolved) for n in sent]


def test_one_firing_gives_one_message_after_group_wait_and_one_resolved_message():
    # flushes at 110, 140, ..., 500: at 500 the alert (resolved at 500) is resolved
    sent = notifications([fired(A, 100, 500)], ROUTE, until=10_000)
    assert times(sent) == [(110, 1, 0), (500, 0, 1)]


def test_a_firing_alert_is_repeated_after_repeat_interval():
    # the first flush with 110 < now - 14400 is 110 + 30·481 = 14540
    sent = notifications([fired(A, 100, None)], ROUTE, until=14_600)
    assert times(sent) == [(110, 1, 0), (14540, 1, 0)]


def test_resolving_and_firing_again_between_two_flushes_sends_nothing():
    sent = notifications([fired(A, 100, 115), fired(A, 120, 400)], ROUTE, until=10_000)
    assert times(sent) == [(110, 1, 0), (410, 0, 1)]


def test_an_alert_joining_a_group_is_sent_at_the_next_group_interval():
    sent = notifications([fired(A, 100, None), fired(B, 195, None)], ROUTE, until=1000)
    assert times(sent) == [(110, 1, 0), (200, 2, 0)]


def test_one_of_two_alerts_resolving_is_sent_only_with_send_resolved():
    both = [fired(A, 100, None), fired(B, 100, 300)]
    assert times(notifications(both, ROUTE, until=1000)) == [(110, 2, 0), (320, 1, 1)]
    quiet = Route(ROUTE.group_by, 10, 30, 14400, send_resolved=False)
    assert times(notifications(both, quiet, until=1000)) == [(110, 2, 0)]


def test_an_emptied_group_is_deleted_and_the_next_firing_waits_group_wait_again():
    sent = notifications([fired(A, 100, 200), fired(A, 1000, 1100)], ROUTE, until=10_000)
    assert times(sent) == [(110, 1, 0), (200, 0, 1), (1010, 1, 0), (1100, 0, 1)]


def test_groups_are_counted_separately():
    other_job = (("alertname", "A"), ("job", "k"))
    sent = notifications([fired(A, 100, None), fired(other_job, 105, None)], ROUTE, until=200)
    assert times(sent) == [(110, 1, 0), (115, 1, 0)]


def test_a_critical_alert_inhibits_the_warning_of_the_same_name_and_job():
    rule = InhibitRule(
        (Matcher.parse('severity="critical"'),), (Matcher.parse('severity="warning"'),), ("alertname", "job")
    )
    route = Route(ROUTE.group_by, 10, 30, 14400, True, (rule,))
    warning = (*A, ("severity", "warning"))
    critical = (*A, ("severity", "critical"))
    sent = notifications([fired(warning, 100, None), fired(critical, 100, None)], route, until=200)
    assert times(sent) == [(110, 1, 0)]


def test_per_hour_counts_whole_hours():
    sent = notifications([fired(A, 100, 500), fired(A, 3700, 3800)], ROUTE, until=7200)
    assert per_hour(sent, 0, 7200) == [2, 2]


def test_the_model_quality_route_of_the_shipped_config():
    config = Path(__file__).parents[1] / "alertmanager" / "alertmanager.yml"
    route = route_for(config, {"category": "model_quality"})
    assert route.group_by == ("alertname", "job")
    assert (route.group_wait, route.group_interval, route.repeat_interval) == (10, 30, 14400)
    assert route.send_resolved


# ----------------------------------------------------------------------------------- the whole harness

SMOKE_RULES = """\
groups:
  - name: smoke.rules
    interval: 10s
    rules:
      - record: job_model_version:model_outliers:ratio_rate2m
        expr: |
          sum by (job, model_version) (rate(model_outliers_total[2m]))
          / (sum by (job, model_version) (rate(model_predictions_total[2m])) > 0)
  - name: smoke.alerts
    interval: 10s
    rules:
      - alert: SmokeOutlierRatioHigh
        expr: job_model_version:model_outliers:ratio_rate2m > 0.5
        for: 30s
        labels:
          severity: critical
          category: model_quality
"""


@pytest.mark.e2e
def test_the_harness_fires_when_and_only_when_the_rule_says(model_dir: Path, tmp_path: Path):
    from bench.alerts.rules import load_rule_set
    from bench.alerts.scenarios import Case, Traffic
    from bench.alerts.simulation import Clock, simulate
    from service.traffic import Scenario

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "smoke.yml").write_text(SMOKE_RULES)
    rule_set = load_rule_set("smoke", rules, default_interval=10)
    normal = Traffic("normal", "normal", "normal", Scenario("normal"))
    all_outliers = Traffic(
        "all_outliers",
        "all outliers",
        "outliers",
        Scenario("outliers", outlier_fraction=1.0),
        frozenset({"SmokeOutlierRatioHigh"}),
    )
    cases = [Case(normal, 20.0, 0.0, 1800.0), Case(all_outliers, 20.0, 600.0, 600.0)]
    results = simulate([rule_set], cases, model_dir, tmp_path / "work", Clock(quiet=True)).results["smoke"]

    quiet, changed = results[cases[0].job], results[cases[1].job]
    assert quiet.alerts_fired == 0
    assert changed.warm_up_alerts_fired == 0
    # Normal traffic has q ≈ 12% outliers. After the change the 2-minute ratio is q(1 - x) + x for the
    # share x of the window after the change: it passes 0.5 at x = (0.5 - q)/(1 - q) ≈ 0.43, i.e. after
    # about 52 s (a scrape later at most: 62 s), and the alert fires 30 s (for) later, at the next 10-s
    # evaluation: between 82 and 102 s after the change.
    assert changed.first_alert == "SmokeOutlierRatioHigh"
    assert 80 <= changed.first_seconds <= 105
    assert changed.target_seconds == changed.first_seconds
    assert [n.firing for n in changed.notifications][:1] == [1]


# ------------------------------------------------------------------------------------------- rule files

CHAINED_RULES = """\
groups:
  - name: fast
    interval: 10s
    rules:
      - record: job:x:rate2m
        expr: sum by (job) (rate(x_total[2m]))
      - record: job:x:doubled
        expr: job:x:rate2m * 2
      - record: job:x:verdict
        expr: job:x:doubled > 1
        labels:
          window: 2m
      - record: job:y:rate2m
        expr: sum by (job) (rate(y_total[2m]))
      - record: job:y:shifted
        expr: job:y:rate2m + 1
      - record: job:y:scaled
        expr: job:y:rate2m * 3
  - name: slow
    interval: 1m
    rules:
      - record: job:x:slow
        expr: job:x:rate2m{job="a"} + job:y:shifted + job:y:scaled
  - name: alerts
    rules:
      - alert: Verdict
        expr: job:x:verdict or job:x:slow > 0
        labels:
          category: model_quality
"""


def test_records_read_by_one_rule_of_their_group_are_written_into_it(tmp_path: Path):
    from bench.alerts.rules import load_rule_set

    (tmp_path / "rules.yml").write_text(CHAINED_RULES)
    rule_set = load_rule_set("chained", tmp_path, default_interval=10)
    by_name = {rule.record: rule for level in rule_set.levels for rule in level}
    # doubled has one reader in its group (verdict): inlined, and rate2m with it. rate2m is also read with
    # a matcher by another group, y's rate by two rules, shifted and scaled by another group: all stored.
    assert set(by_name) == {
        "job:x:rate2m",
        "job:x:verdict",
        "job:y:rate2m",
        "job:y:shifted",
        "job:y:scaled",
        "job:x:slow",
    }
    assert by_name["job:x:verdict"].expr.strip() == "(job:x:rate2m * 2) > 1"
    assert [sorted(rule.record for rule in level) for level in rule_set.levels] == [
        ["job:x:rate2m", "job:y:rate2m"],
        ["job:x:verdict", "job:y:scaled", "job:y:shifted"],
        ["job:x:slow"],
    ]
    assert by_name["job:x:slow"].interval == 60
    assert rule_set.longest_range_seconds == 120
