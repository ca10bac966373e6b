"""Run-time copies of the shipped Prometheus and Alertmanager configs for a local stack.

Only what differs per machine changes: target addresses, ports, the external labels the alerts' links are
built from, and the Slack secret's path. Relative paths (rule files, templates) are made absolute because
the copies live elsewhere. The rules themselves are never copied or edited: Prometheus reads the files in
prometheus/rules/ (a test may name other rule files).
"""

from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
BLACKBOX_CONFIG = REPO_ROOT / "blackbox" / "blackbox.yml"


def render_prometheus_config(
    addresses: dict[str, str],
    output: Path,
    external_labels: dict[str, str],
    scrape_targets: dict[str, str] | None = None,
    rule_files: list[Path] | None = None,
) -> Path:
    """Write prometheus.yml with every shipped address (`localhost:8000`, ...) replaced by `addresses[it]`,
    `external_labels` in place of the shipped ones, the jobs in `scrape_targets` scraping the address given
    there instead (a service that serves /metrics on SERVICE_METRICS_PORT, apart from the API its probes
    call) and, if given, `rule_files` in place of the shipped.

    Addresses appear as scrape targets, inside the blackbox probes' target URLs, as the exporter address a
    relabelling sets, and as Alertmanager's target; one the mapping lacks is an error.
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["external_labels"] = external_labels
    scrape_targets = scrape_targets or {}

    def moved(target: str) -> str:
        address = urlsplit(target).netloc if "://" in target else target
        if address not in addresses:
            raise KeyError(f"no address given for {address!r} (in {target!r})")
        return target.replace(address, addresses[address], 1)

    for scrape in config["scrape_configs"]:
        for static in scrape["static_configs"]:
            static["targets"] = [moved(target) for target in static["targets"]]
        if scrape["job_name"] in scrape_targets:
            scrape["static_configs"] = [{"targets": [scrape_targets[scrape["job_name"]]]}]
        for relabel in scrape.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__":
                relabel["replacement"] = moved(relabel["replacement"])
    for alerting in config["alerting"]["alertmanagers"]:
        for static in alerting["static_configs"]:
            static["targets"] = [moved(target) for target in static["targets"]]
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
