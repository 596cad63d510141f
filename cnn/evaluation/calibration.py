"""Calibration: how far P(parasitized) is from the share of cells that are parasitized, and
temperature scaling (one number fitted on validation) that brings it closer."""

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss

from cnn.labels import PARASITIZED

CALIBRATION_BINS = 15
"""Equal-width probability bins of the reliability diagram and the calibration error."""
TEMPERATURE_RANGE = (0.05, 20.0)
EPSILON = 1e-7


def logit(probability: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)), with p kept inside (0, 1)."""
    p = np.clip(np.asarray(probability, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def with_temperature(probability: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities whose logits are divided by `temperature` (> 1 softens, < 1 sharpens)."""
    return 1.0 / (1.0 + np.exp(-logit(probability) / temperature))


def without_temperature(probability: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a model gave before `with_temperature(…, temperature)`."""
    return with_temperature(probability, 1.0 / temperature)


def fit_temperature(labels: np.ndarray, parasitized_probability: np.ndarray) -> float:
    """The temperature that minimises the binary cross-entropy of P(parasitized) on these
    cells (the validation split's)."""
    truth = (np.asarray(labels).ravel() == PARASITIZED).astype(np.float64)
    logits = logit(parasitized_probability).ravel()

    def loss(temperature: float) -> float:
        scaled = logits / temperature
        return float(np.mean(np.logaddexp(0.0, scaled) - truth * scaled))

    return float(minimize_scalar(loss, bounds=TEMPERATURE_RANGE, method="bounded").x)


@dataclass(frozen=True)
class Reliability:
    """Per probability bin: the cells in it, their mean P(parasitized) and the share of them
    that are parasitized; and the two summary scores."""

    counts: np.ndarray
    mean_probability: np.ndarray
    parasitized_share: np.ndarray
    expected_calibration_error: float
    brier_score: float


def reliability(
    labels: np.ndarray, parasitized_probability: np.ndarray, bins: int = CALIBRATION_BINS
) -> Reliability:
    """The reliability diagram's bins, the expected calibration error (the cell-weighted mean
    gap between a bin's mean probability and its parasitized share) and the Brier score."""
    truth = (np.asarray(labels).ravel() == PARASITIZED).astype(np.float64)
    probability = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    if truth.size == 0 or truth.shape != probability.shape:
        raise ValueError("labels and probabilities must be non-empty and of equal length")
    which = np.minimum((probability * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = np.maximum(counts, 1)
    mean_probability = np.bincount(which, probability, bins) / filled
    share = np.bincount(which, truth, bins) / filled
    gap = np.sum(counts * np.abs(mean_probability - share)) / truth.size
    return Reliability(
        counts=counts,
        mean_probability=np.where(counts > 0, mean_probability, np.nan),
        parasitized_share=np.where(counts > 0, share, np.nan),
        expected_calibration_error=float(gap),
        brier_score=float(brier_score_loss(truth, probability)),
    )
