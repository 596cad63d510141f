"""What a lab reads of a model's test scores beyond the confusion matrix: whether its
probabilities mean what they say (calibration), and per patient the parasitemia it estimates
against the labelled one."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cnn.evaluation.calibration import Reliability, reliability, without_temperature
from cnn.evaluation.metrics import predicted_labels
from cnn.evaluation.parasitemia import ErrorRates, evaluated_patients, parasitemia_error
from cnn.labels import PARASITIZED


@dataclass(frozen=True)
class LabScores:
    """Calibration of the served scores (and of the scores before the model's temperature),
    and the per-patient parasitemia table with its mean absolute error."""

    calibrated: Reliability
    uncalibrated: Reliability | None
    """None when the model applies no temperature."""
    patients: pd.DataFrame
    parasitemia_mae: float

    def metrics(self) -> dict[str, float]:
        """The scores to log (prefixed `test_` by the caller)."""
        metrics = {
            "ece": self.calibrated.expected_calibration_error,
            "brier": self.calibrated.brier_score,
            "parasitemia_mae": self.parasitemia_mae,
        }
        if self.uncalibrated is not None:
            metrics["ece_uncalibrated"] = self.uncalibrated.expected_calibration_error
            metrics["brier_uncalibrated"] = self.uncalibrated.brier_score
        return metrics

    def curves(self) -> dict[str, Reliability]:
        """The reliability curves to draw, by name."""
        if self.uncalibrated is None:
            return {"model": self.calibrated}
        return {"before temperature": self.uncalibrated, "served (calibrated)": self.calibrated}


def lab_scores(
    labels: np.ndarray,
    parasitized_probability: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    temperature: float | None,
    rates: ErrorRates,
) -> LabScores:
    """Calibration and per-patient parasitemia of one split's served scores."""
    probability = np.asarray(parasitized_probability, dtype=np.float64)
    called = predicted_labels(probability, threshold) == PARASITIZED
    patients = evaluated_patients(groups, labels, called, rates)
    before = without_temperature(probability, temperature) if temperature else None
    return LabScores(
        calibrated=reliability(labels, probability),
        uncalibrated=None if before is None else reliability(labels, before),
        patients=patients,
        parasitemia_mae=parasitemia_error(patients),
    )
