"""Run-time copies of the shipped Prometheus and Alertmanager configs for a local stack.

Only what differs per machine changes: target addresses, ports, the external labels the alerts' links are
built from, and the Slack secret's path. Relative paths (rule files, templates) are made absolute because
the copies live elsewhere. The rules themselves are never copied or edited: Prometheus reads the files in
prometheus/rules/ (a test may name other rule files).
"""

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"


def render_prometheus_config(
    targets_by_job: dict[str, str],
    alertmanager: str,
    output: Path,
    external_labels: dict[str, str],
    rule_files: list[Path] | None = None,
) -> Path:
    """Write prometheus.yml with each job scraping `targets_by_job[job]`, alerts sent to `alertmanager`,
    `external_labels` in place of the shipped ones and, if given, `rule_files` in place of the shipped."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["external_labels"] = external_labels
    for scrape in config["scrape_configs"]:
        target = targets_by_job.get(scrape["job_name"])
        if target is None:
            raise KeyError(f"no address given for scrape job {scrape['job_name']!r}")
        scrape["static_configs"] = [{"targets": [target]}]
    for alerting in config["alerting"]["alertmanagers"]:
        alerting["static_configs"] = [{"targets": [alertmanager]}]
    if rule_files is None:
        rule_files = [PROMETHEUS_CONFIG.parent / path for path in config["rule_files"]]
    config["rule_files"] = [str(path) for path in rule_files]
    output.write_text(yaml.safe_dump(config, sort_keys=False))
    return output


def render_alertmanager_config(slack_webhook_url_file: Path, output: Path) -> Path:
    """Write alertmanager.yml reading the Slack webhook URL from `slack_webhook_url_file`."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["global"]["slack_api_url_file"] = str(slack_webhook_url_file)
    config["templates"] = [str(ALERTMANAGER_CONFIG.parent / path) for path in config["templates"]]
    output.write_text(yaml.safe_dump(config, sort_keys=False))
    return output
