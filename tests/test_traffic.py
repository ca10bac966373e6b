"""The traffic generator's scenarios mean what they say: exact outlier share, means kept or moved as asked.

Every scenario draws 40,000 seeded rows; the tolerances are a few standard errors of that sample.
"""

from pathlib import Path

import numpy as np
import pytest

from service.traffic import RowSource, Scenario, TrainingData, load_training_data

ROWS = 40_000


@pytest.fixture(scope="module")
def training(model_dir: Path) -> TrainingData:
    return load_training_data(model_dir)


def draw(training: TrainingData, scenario: Scenario) -> np.ndarray:
    return RowSource(training, scenario, seed=7).rows(ROWS)


def far_from_training(training: TrainingData, rows: np.ndarray) -> np.ndarray:
    """The generator's outliers sit 4 standard deviations out in every feature; no jittered row does."""
    deviation = np.abs(rows - training.rows.mean(axis=0)) / training.rows.std(axis=0)
    return (deviation > 3.9).all(axis=1)


def test_outlier_fraction_is_the_share_of_outlier_rows_sent(training: TrainingData):
    rows = draw(training, Scenario("outliers", outlier_fraction=0.4))
    share = far_from_training(training, rows).mean()
    # standard error sqrt(0.4 * 0.6 / 40000) = 0.0024: 0.01 is 4 of them (the old generator sent ~0.57)
    assert abs(share - 0.4) < 0.01, share


def test_outliers_keep_every_feature_mean(training: TrainingData):
    rows = draw(training, Scenario("outliers", outlier_fraction=0.4))
    mean, stddev = training.rows.mean(axis=0), training.rows.std(axis=0)
    # mirrored pairs: the outliers' own mean is the training mean; the normal rows' standard error is
    # stddev / sqrt(24000): 0.03 stddev is 4.6 of them
    assert np.all(np.abs(rows.mean(axis=0) - mean) < 0.03 * stddev), rows.mean(axis=0)


def test_drift_multiplies_one_feature_and_leaves_the_others(training: TrainingData):
    rows = draw(training, Scenario("drift", feature="petal_width", factor=1.08))
    ratio = rows.mean(axis=0) / training.rows.mean(axis=0)
    # relative standard error of a 40000-row mean: at most 0.63 / 200 = 0.3%
    assert ratio[3] == pytest.approx(1.08, abs=0.012)
    assert np.all(np.abs(ratio[:3] - 1) < 0.012), ratio


def test_spread_widens_one_feature_around_its_training_mean(training: TrainingData):
    rows = draw(training, Scenario("spread", feature="sepal_width", factor=1.5))
    mean, stddev = training.rows.mean(axis=0), training.rows.std(axis=0)
    assert rows[:, 1].mean() == pytest.approx(mean[1], abs=0.03 * stddev[1])
    # jitter adds 0.05 stddev in quadrature: 1.5 * sqrt(1.0025) = 1.502
    assert rows[:, 1].std() / stddev[1] == pytest.approx(1.5, abs=0.03)
    assert rows[:, 0].std() / stddev[0] == pytest.approx(1.0, abs=0.03)


def test_class_share_draws_the_class_at_the_share_asked(training: TrainingData):
    rows = RowSource(training, Scenario("class-share", label="virginica", share=0.8), seed=7).rows(ROWS)
    petal_length = training.rows[:, 2]
    is_virginica = training.labels == "virginica"
    expected = 0.8 * petal_length[is_virginica].mean() + 0.2 * petal_length[~is_virginica].mean()
    # 5.55 * 0.8 + 2.86 * 0.2 = 5.01 (1/3 each would give 3.76); standard error ~0.006 cm
    assert rows[:, 2].mean() == pytest.approx(expected, abs=0.03)


def test_next_row_draws_from_the_same_stream_as_rows(training: TrainingData):
    first = RowSource(training, Scenario("outliers"), seed=3)
    second = RowSource(training, Scenario("outliers"), seed=3)
    assert [first.next_row() for _ in range(300)][:256] == second.rows(256).tolist()


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (Scenario("drift", feature="leaf_colour"), "unknown feature 'leaf_colour'"),
        (Scenario("class-share", label="rose"), "unknown label 'rose'"),
    ],
)
def test_unknown_feature_or_label_is_refused_with_the_known_ones(training, scenario, message):
    with pytest.raises(ValueError, match=message):
        RowSource(training, scenario, seed=0)


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="unknown scenario 'storm'"):
        Scenario("storm")
