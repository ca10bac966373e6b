"""What is simulated: the traffic of the issue's table at each rate, and the targets it is held to.

Every case is one Prometheus `job`. Apart from the 7-day normal week and the steady 21% day (both from the
start), a case runs normal traffic for a warm-up that fills the rules' longest window, then changes to its
traffic; times to fire count from the change.
"""

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import traffic
from service.model import Model

RATES = (0.2, 1.0, 5.0, 20.0, 100.0, 1000.0)
QUICK_RATES = (1.0, 20.0)
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DRIFT_FACTORS = (1.05, 1.08, 1.20)
SPREAD_FACTOR = 1.5
OUTLIER_FRACTIONS = (0.3, 0.4)
STEADY_OUTLIER_SHARE = 0.21  # of the rows the real detector flags, like the book's load file (20.7%)
STEADY_RATE = 20.0
SKEWED_LABEL = "setosa"
SKEWED_SHARE = 0.8
NORMAL_POOL_ROWS = 20_000  # the pool behind every warm-up and the normal week: mean bias ≤ 0.5% (1σ)
POOL_ROWS = 5_000

MEAN_DRIFT = "ModelInputFeatureMeanDrift"
DISTRIBUTION_DRIFT = "ModelInputFeatureDistributionDrift"
OUTLIER_RATIO = "ModelOutlierRatioHigh"
CLASS_SHARE = "ModelPredictedClassShareDrift"
SHORT_NAMES = {OUTLIER_RATIO: "O", MEAN_DRIFT: "M", DISTRIBUTION_DRIFT: "D", CLASS_SHARE: "C"}


@dataclass(frozen=True)
class Traffic:
    """One kind of traffic (one pool of rows); `kind` is normal, drift, spread, outliers, steady or skew."""

    key: str
    title: str
    kind: str
    scenario: traffic.Scenario | None  # None: the steady share, composed here (steady_outlier_rows)
    target_alerts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Case:
    traffic: Traffic
    rate: float
    warm_up_seconds: float  # normal traffic before the change
    seconds: float  # after the change

    @property
    def job(self) -> str:
        return f"{self.traffic.key}_r{self.rate:g}"

    @property
    def end_seconds(self) -> float:
        return self.warm_up_seconds + self.seconds

    @property
    def seed(self) -> int:
        return zlib.crc32(self.job.encode())


def traffics() -> list[Traffic]:
    both_drifts = frozenset({MEAN_DRIFT, DISTRIBUTION_DRIFT})
    kinds = [Traffic("normal", "normal", "normal", traffic.Scenario("normal"))]
    for feature in FEATURES:
        for factor in DRIFT_FACTORS:
            percent = round((factor - 1) * 100)
            scenario = traffic.Scenario(name="drift", feature=feature, factor=factor)
            kinds.append(
                Traffic(
                    f"drift_{feature}_x{factor:g}", f"{feature} +{percent}%", "drift", scenario, both_drifts
                )
            )
    for feature in FEATURES:
        scenario = traffic.Scenario(name="spread", feature=feature, factor=SPREAD_FACTOR)
        title = f"{feature} spread ×{SPREAD_FACTOR:g}, mean kept"
        kinds.append(
            Traffic(
                f"spread_{feature}_x{SPREAD_FACTOR:g}",
                title,
                "spread",
                scenario,
                frozenset({DISTRIBUTION_DRIFT}),
            )
        )
    for fraction in OUTLIER_FRACTIONS:
        scenario = traffic.Scenario(name="outliers", outlier_fraction=fraction)
        title = f"{fraction:.0%} outliers"
        kinds.append(
            Traffic(f"outliers_{fraction:g}", title, "outliers", scenario, frozenset({OUTLIER_RATIO}))
        )
    kinds.append(
        Traffic(
            "steady_outliers_0.21",
            f"steady {STEADY_OUTLIER_SHARE:.0%} outliers, from the start",
            "steady",
            None,
        )
    )
    scenario = traffic.Scenario(name="class-share", label=SKEWED_LABEL, share=SKEWED_SHARE)
    title = f"{SKEWED_LABEL} {SKEWED_SHARE:.0%} of the traffic"
    kinds.append(
        Traffic(f"class_{SKEWED_LABEL}_{SKEWED_SHARE:g}", title, "skew", scenario, frozenset({CLASS_SHARE}))
    )
    return kinds


@dataclass(frozen=True)
class Durations:
    normal_seconds: float  # the normal week
    steady_seconds: float  # the steady outlier share
    warm_up_seconds: float
    after_change_seconds: float


FULL = Durations(7 * 86400.0, 86400.0, 6 * 3600.0, 3 * 3600.0)


def cases(durations: Durations, rates: tuple[float, ...]) -> list[Case]:
    result = []
    for kind in traffics():
        if kind.kind == "normal":
            result += [Case(kind, rate, 0.0, durations.normal_seconds) for rate in rates]
        elif kind.kind == "steady":
            result.append(Case(kind, STEADY_RATE, 0.0, durations.steady_seconds))
        else:
            after = durations.after_change_seconds
            result += [Case(kind, rate, durations.warm_up_seconds, after) for rate in rates]
    return result


def scenario_rows(model_dir: Path, scenario: traffic.Scenario, seed: int, count: int) -> np.ndarray:
    """`count` rows of `scenario` from service.traffic's RowSource."""
    return traffic.RowSource(traffic.load_training_data(model_dir), scenario, seed).rows(count)


def steady_outlier_rows(model: Model, model_dir: Path, seed: int, count: int) -> np.ndarray:
    """Normal rows plus just enough outlier rows (in mirrored pairs) that the real detector flags
    STEADY_OUTLIER_SHARE of them, to within one row."""
    normal = scenario_rows(model_dir, traffic.Scenario("normal"), seed, count)
    flagged = int(model.predict(normal.astype(np.float32)).is_outlier.sum())
    extra = 2 * round((STEADY_OUTLIER_SHARE * count - flagged) / (1 - STEADY_OUTLIER_SHARE) / 2)
    outliers = scenario_rows(
        model_dir, traffic.Scenario("outliers", outlier_fraction=1.0), seed + 1, max(extra, 0)
    )
    if len(outliers) and not model.predict(outliers.astype(np.float32)).is_outlier.all():
        raise AssertionError("an outlier row of service.traffic is not flagged by the detector")
    return np.vstack([normal, outliers])
