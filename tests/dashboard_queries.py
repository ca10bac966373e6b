"""Every PromQL query of the Grafana dashboards, with Grafana's macros and variables replaced.

`dashboard_queries()` reads the provisioned JSON in grafana/dashboards/ (what Grafana loads), so a test can
run each query against a real Prometheus exactly as a dashboard would with its default variable values.
"""

import json
import re
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


def load_dashboards() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in dashboard_files()]


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


def raw_dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) as written in the JSON, variables unreplaced."""
    queries = []
    for dashboard in load_dashboards():
        uid = dashboard["uid"]
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
    """(dashboard uid, panel title, PromQL) for every panel target and every query variable.

    Template variable queries `label_values(m, l)` become `m`; macros and variables are substituted (see
    SUBSTITUTIONS). Note: the "Firing alerts" query legitimately returns nothing while no alert fires.
    """
    return [(uid, title, substitute(expr)) for uid, title, expr in raw_dashboard_queries()]
