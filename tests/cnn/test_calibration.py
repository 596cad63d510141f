"""Calibration: temperature scaling, the reliability bins, ECE and Brier on synthetic scores."""

import numpy as np
import pytest

from cnn.evaluation.calibration import (
    fit_temperature,
    logit,
    reliability,
    with_temperature,
    without_temperature,
)
from cnn.labels import PARASITIZED, UNINFECTED


def overconfident_scores(count: int, sharpness: float, seed: int = 0):
    """Labels drawn from calibrated probabilities, reported with logits `sharpness` times too
    large (a model that is too sure of itself)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 2.0, count)
    truth = rng.random(count) < 1 / (1 + np.exp(-true_logits))
    labels = np.where(truth, PARASITIZED, UNINFECTED)
    return labels, 1 / (1 + np.exp(-true_logits * sharpness))


def test_temperature_scaling_lowers_the_error_of_an_overconfident_model():
    labels, scores = overconfident_scores(20_000, sharpness=3.0)
    held_labels, held_scores = overconfident_scores(20_000, sharpness=3.0, seed=1)
    temperature = fit_temperature(labels, scores)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = reliability(held_labels, held_scores)
    after = reliability(held_labels, with_temperature(held_scores, temperature))
    assert before.expected_calibration_error > 0.08
    assert after.expected_calibration_error < 0.02
    assert after.brier_score < before.brier_score


def test_a_calibrated_model_keeps_a_temperature_near_one():
    labels, scores = overconfident_scores(20_000, sharpness=1.0)
    assert fit_temperature(labels, scores) == pytest.approx(1.0, abs=0.1)
    assert reliability(labels, scores).expected_calibration_error < 0.02


def test_temperature_keeps_the_order_of_the_scores():
    scores = np.array([0.01, 0.2, 0.5, 0.7, 0.999])
    scaled = with_temperature(scores, 2.5)
    assert np.all(np.diff(scaled) > 0)
    assert scaled[2] == pytest.approx(0.5)
    assert logit(scaled) == pytest.approx(logit(scores) / 2.5)
    assert without_temperature(scaled, 2.5) == pytest.approx(scores)


def test_reliability_bins_count_every_cell_and_give_known_errors():
    labels = np.array([PARASITIZED] * 3 + [UNINFECTED] + [UNINFECTED] * 4)
    scores = np.array([0.9] * 4 + [0.1] * 4)  # 3 of 4 at 0.9, 0 of 4 at 0.1
    result = reliability(labels, scores, bins=10)
    assert result.counts.sum() == 8
    assert result.counts[9] == 4 and result.counts[1] == 4
    assert result.parasitized_share[9] == pytest.approx(0.75)
    assert result.expected_calibration_error == pytest.approx((4 * 0.15 + 4 * 0.1) / 8)
    assert result.brier_score == pytest.approx((3 * 0.01 + 0.81 + 4 * 0.01) / 8)
    assert np.isnan(result.mean_probability[5])


def test_reliability_refuses_mismatched_input():
    with pytest.raises(ValueError, match="equal length"):
        reliability(np.array([0, 1]), np.array([0.5]))
