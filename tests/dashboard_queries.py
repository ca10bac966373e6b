"""Every PromQL query of the Grafana dashboards, with Grafana's macros and variables replaced.

`dashboard_queries()` reads the provisioned JSON in grafana/dashboards/ (what Grafana loads), so a test can
run each query against a real Prometheus exactly as a dashboard would with its default variable values.
`alerts_on_dashboards()` runs the queries that show alerts (annotations and firing-alert tables) and says
which alerts each panel shows, for the end-to-end alert story.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"

# Grafana's macros with values for a 15s scrape interval and a dashboard's default variable values. "All"
# of a variable becomes its allValue `.*`, a regex: such variables must be used with `=~`.
SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "job": "prediction-service",
    "instance": ".*",
    "model_version": ".*",
}
VARIABLE_PATTERN = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES_PATTERN = re.compile(
    r"^\s*label_values\(\s*(?P<metric>.+),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL
)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def all_dashboards() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in dashboard_files()]


def is_log_dashboard(dashboard: dict) -> bool:
    """The Prediction log dashboard reads Loki (LogQL), not Prometheus."""
    return all(panel["datasource"]["type"] == "loki" for panel in data_panels(dashboard))


def load_dashboards() -> list[dict]:
    """The dashboards of metrics (PromQL): every one but the log dashboards."""
    return [dashboard for dashboard in all_dashboards() if not is_log_dashboard(dashboard)]


def log_dashboards() -> list[dict]:
    return [dashboard for dashboard in all_dashboards() if is_log_dashboard(dashboard)]


def data_panels(dashboard: dict) -> list[dict]:
    """Every panel that queries data (rows only group panels), including those inside collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def variable_query(variable: dict) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else query or ""


def label_values_to_promql(query: str) -> str:
    """`label_values(metric{...}, label)` → `metric{...}`: the series whose label values Grafana lists."""
    match = LABEL_VALUES_PATTERN.match(query)
    if match is None:
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return match["metric"].strip()


def substitute(expr: str) -> str:
    """Replace `$name` / `${name}` by the values in SUBSTITUTIONS; an unknown variable raises KeyError."""

    def replace(match: re.Match) -> str:
        name = match[1] or match[2]
        if name not in SUBSTITUTIONS:
            raise KeyError(f"no substitution for ${name} in {expr!r}")
        return SUBSTITUTIONS[name]

    return VARIABLE_PATTERN.sub(replace, expr)


def annotations(dashboard: dict) -> list[dict]:
    """The dashboard's query annotations (Grafana adds its built-in one itself)."""
    return [item for item in dashboard.get("annotations", {}).get("list", []) if not item.get("builtIn")]


def annotation_title(annotation: dict) -> str:
    return f"annotation {annotation['name']}"


def raw_dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title or "annotation NAME", expr) as in the JSON, variables unreplaced."""
    queries = []
    for dashboard in load_dashboards():
        uid = dashboard["uid"]
        for annotation in annotations(dashboard):
            queries.append((uid, annotation_title(annotation), annotation["target"]["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                queries.append(
                    (uid, f"variable {variable['name']}", label_values_to_promql(variable_query(variable)))
                )
        for panel in data_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append((uid, panel["title"], target["expr"]))
    return queries


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title or "annotation NAME", PromQL) for every annotation, panel target and
    query variable.

    Template variable queries `label_values(m, l)` become `m`; macros and variables are substituted (see
    SUBSTITUTIONS). The queries of alert_queries() legitimately return nothing while no alert fires.
    """
    return [(uid, title, substitute(expr)) for uid, title, expr in raw_dashboard_queries()]


def reads_alerts(expr: str) -> bool:
    return re.search(r"\bALERTS(_FOR_STATE)?\b", expr) is not None


def alert_queries() -> list[tuple[str, str, str]]:
    """The queries that show alerts (annotations, firing-alert tables): empty while nothing fires."""
    return [query for query in dashboard_queries() if reads_alerts(query[2])]


def alerts_on_dashboards(query: Callable[[str], list[dict]]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(dashboard uid, panel title) → {(alertname, feature or "")} that the panel shows now: the alerts a
    table lists, or that the annotations drawn on a graph shade. `query` runs an instant PromQL query."""
    shown: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def add(uid: str, title: str, expr: str) -> None:
        alerts = {(item["metric"]["alertname"], item["metric"].get("feature", "")) for item in query(expr)}
        if alerts:
            shown.setdefault((uid, title), set()).update(alerts)

    for dashboard in load_dashboards():
        uid = dashboard["uid"]
        titles = {panel["id"]: panel["title"] for panel in data_panels(dashboard)}
        for annotation in annotations(dashboard):
            expr = substitute(annotation["target"]["expr"])
            for panel_id in annotation["filter"]["ids"]:
                add(uid, titles[panel_id], expr)
        for panel in data_panels(dashboard):
            for panel_target in panel["targets"]:
                if reads_alerts(panel_target["expr"]):
                    add(uid, panel["title"], substitute(panel_target["expr"]))
    return shown


def assert_dashboards_show_no_alert(query: Callable[[str], list[dict]]) -> None:
    """While traffic is normal: no table lists an alert and no annotation shades a panel."""
    shown = alerts_on_dashboards(query)
    assert shown == {}, f"alerts shown on the dashboards while none should fire: {shown}"


def assert_dashboards_show(
    query: Callable[[str], list[dict]], alertname: str, watched_panel: str, feature: str = ""
) -> None:
    """While `alertname` (for `feature`, if it has one) fires: every firing-alert table lists it, the
    annotations of `watched_panel` shade it, and no panel of another feature shows it."""
    shown = alerts_on_dashboards(query)
    alert = (alertname, feature)
    tables = [(uid, title) for uid, title, expr in raw_dashboard_queries() if title == "Firing alerts"]
    assert tables and all(alert in shown.get(table, set()) for table in tables), (alert, shown)
    watched = [key for key in shown if key[1] == watched_panel]
    assert watched and all(alert in shown[key] for key in watched), (alert, watched_panel, shown)
    for (_uid, title), alerts in shown.items():
        panel_feature = re.match(r"(\w+): ", title)  # the per-feature panels: "petal_length: ..."
        if feature and panel_feature and panel_feature[1] != feature:
            assert alert not in alerts, f"{alert} shown on {title}"
