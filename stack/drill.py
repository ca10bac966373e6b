"""`python -m stack.drill`: measure what the alerting promises, with the shipped settings.

It starts the service, Prometheus and Alertmanager on free 127.0.0.1 ports with a local Slack stand-in,
sends normal traffic for `--normal-minutes` and counts the model quality alerts that reach Slack (the
target is zero), then switches to 40% outliers and measures the seconds until the ModelOutlierRatioHigh
message arrives. Bounded: every phase has a deadline and the traffic stops by itself.
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from service.traffic import RowSource, Scenario, load_training_data
from stack.processes import stack_on_free_ports
from stack.slack_receiver import SlackReceiver

NORMAL = Scenario("normal")
MODEL_QUALITY_ALERTS = (
    "ModelOutlierRatioHigh",
    "ModelInputFeatureMeanDrift",
    "ModelInputFeatureDistributionDrift",
    "ModelPredictedClassShareDrift",
)


class SteadyTraffic(threading.Thread):
    """Single-row POST /predict at a steady rate from a switchable scenario, for at most `max_seconds`."""

    def __init__(
        self,
        url: str,
        model_dir: Path,
        rate: float,
        max_seconds: float,
        scenario: Scenario = NORMAL,
    ) -> None:
        super().__init__(name="traffic", daemon=True)
        self._training = load_training_data(model_dir)
        self._source = RowSource(self._training, scenario, seed=1)
        self._url = url
        self._rate = rate
        self._max_seconds = max_seconds
        self._stop_event = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    @property
    def failed(self) -> int:
        return len(self.failures)

    def switch(self, scenario: Scenario) -> None:
        self._source = RowSource(self._training, scenario, seed=self.sent)

    def run(self) -> None:
        started = time.monotonic()
        with httpx.Client(base_url=self._url, timeout=5.0) as client:
            while not self._stop_event.is_set() and time.monotonic() - started < self._max_seconds:
                try:
                    response = client.post("/predict", json={"data": [self._source.next_row()]})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                self.sent += 1
                # pace by the schedule so the rate holds whatever each request costs
                self._stop_event.wait(max(0.0, started + self.sent / self._rate - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def alert_title(message: dict) -> str:
    return message["payload"]["attachments"][0]["title"]


def is_model_quality(message: dict) -> bool:
    return any(name in alert_title(message) for name in MODEL_QUALITY_ALERTS)


def drill(model_dir: Path, normal_minutes: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="drill-") as run_dir, SlackReceiver() as receiver:
        stack = stack_on_free_ports(Path(run_dir), model_dir, receiver.url)
        stack.start()
        traffic = SteadyTraffic(stack.url("service"), model_dir, rate, normal_minutes * 60 + 300)
        try:
            traffic.start()
            normal_until = time.monotonic() + normal_minutes * 60
            while time.monotonic() < normal_until:
                time.sleep(1.0)  # the phase lasts a fixed time by definition
            false_alarms = [alert_title(m) for m in receiver.messages if is_model_quality(m)]
            traffic.switch(Scenario("outliers", outlier_fraction=0.4))
            burst_started = time.monotonic()
            receiver.wait_for(
                lambda m: "[FIRING" in alert_title(m) and "ModelOutlierRatioHigh" in alert_title(m),
                timeout=240,
            )
            seconds_to_slack = time.monotonic() - burst_started
        finally:
            traffic.stop()
            stack.stop()
    return {
        "normal_minutes": normal_minutes,
        "rate_per_second": rate,
        "model_quality_messages_during_normal_traffic": len(false_alarms),
        "false_alarm_titles": false_alarms,
        "seconds_from_outlier_burst_to_slack": round(seconds_to_slack, 1),
        "requests": traffic.sent,
        "failed_requests": traffic.failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.drill", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="trained models")
    parser.add_argument("--normal-minutes", type=float, default=10.0, help="minutes of normal traffic")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (default: 25)")
    args = parser.parse_args(argv)
    print(json.dumps(drill(args.model_dir.resolve(), args.normal_minutes, args.rate), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
