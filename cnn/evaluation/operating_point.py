"""The decision rule chosen on the validation split: an optional temperature, the threshold
for a target sensitivity on the (calibrated) scores, and the error rates there."""

from dataclasses import dataclass

import numpy as np

from cnn.evaluation.calibration import fit_temperature, with_temperature
from cnn.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    evaluate_predictions,
    threshold_for_sensitivity,
)


@dataclass(frozen=True)
class ValidationChoice:
    """What the validation split decides: temperature (None: none), threshold, and the
    sensitivity and specificity there."""

    temperature: float | None
    threshold: float
    sensitivity: float
    specificity: float


def choose_on_validation(
    labels: np.ndarray, parasitized_probability: np.ndarray, calibrate: bool, target: float | None
) -> ValidationChoice:
    """A temperature fitted on these cells when `calibrate`, the threshold that finds `target`
    of their parasitized cells on the calibrated scores (`DEFAULT_THRESHOLD` without a
    target), and the sensitivity and specificity at it."""
    temperature = fit_temperature(labels, parasitized_probability) if calibrate else None
    probability = parasitized_probability
    if temperature is not None:
        probability = with_temperature(probability, temperature)
    threshold = (
        DEFAULT_THRESHOLD
        if target is None
        else threshold_for_sensitivity(labels, probability, target)
    )
    at_threshold = evaluate_predictions(labels, probability, threshold)
    return ValidationChoice(
        temperature, threshold, at_threshold.sensitivity, at_threshold.specificity
    )
