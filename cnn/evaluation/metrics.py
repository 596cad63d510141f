"""Test metrics with parasitized as the positive class; the confusion matrix has rows true:yes /
true:no and columns pred:yes / pred:no (yes = parasitized)."""

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from cnn.labels import PARASITIZED, UNINFECTED

CONFUSION_ROWS = ("true:yes", "true:no")
CONFUSION_COLUMNS = ("pred:yes", "pred:no")
"""Rows are the true class, columns the predicted one; yes = parasitized."""


@dataclass(frozen=True)
class BinaryEvaluation:
    """Confusion counts and the scores derived from them."""

    true_positive: int
    false_negative: int
    false_positive: int
    true_negative: int
    roc_auc: float | None = None

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """[[TP, FN], [FP, TN]]: rows true:yes / true:no, columns pred:yes / pred:no."""
        return [
            [self.true_positive, self.false_negative],
            [self.false_positive, self.true_negative],
        ]

    @property
    def count(self) -> int:
        return self.true_positive + self.false_negative + self.false_positive + self.true_negative

    @property
    def accuracy(self) -> float:
        return (self.true_positive + self.true_negative) / self.count

    @property
    def sensitivity(self) -> float:
        return _ratio(self.true_positive, self.true_positive + self.false_negative)

    @property
    def specificity(self) -> float:
        return _ratio(self.true_negative, self.true_negative + self.false_positive)

    @property
    def precision(self) -> float:
        return _ratio(self.true_positive, self.true_positive + self.false_positive)

    @property
    def f1(self) -> float:
        return _ratio(
            2 * self.true_positive,
            2 * self.true_positive + self.false_positive + self.false_negative,
        )

    def scores(self) -> dict[str, float]:
        """The named scores, for logging (ROC-AUC only when defined)."""
        scores = {
            "accuracy": self.accuracy,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "precision": self.precision,
            "f1": self.f1,
        }
        if self.roc_auc is not None:
            scores["roc_auc"] = self.roc_auc
        return scores

    def as_dict(self) -> dict:
        return {**asdict(self), **self.scores(), "confusion_matrix": self.confusion_matrix}


DEFAULT_THRESHOLD = 0.5
"""Predicted parasitized when P(parasitized) is above this, unless an operating point says
otherwise."""


def threshold_for_sensitivity(
    labels: np.ndarray, parasitized_probability: np.ndarray, target: float
) -> float:
    """The P(parasitized) threshold that finds at least `target` of the parasitized cells
    here, halfway to the next score so it is not balanced on one cell, and never above
    `DEFAULT_THRESHOLD`: the operating point only trades specificity for sensitivity."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    positives = np.sort(scores[labels == PARASITIZED])[::-1]
    if not 0.0 < target < 1.0 or positives.size == 0:
        raise ValueError(
            f"a target sensitivity in (0, 1) and parasitized cells are needed, got {target} "
            f"and {positives.size} parasitized cells"
        )
    needed = int(np.ceil(target * positives.size))
    lowest_kept = positives[needed - 1]
    below = positives[needed] if needed < positives.size else 0.0
    halfway = (lowest_kept + below) / 2 if below < lowest_kept else np.nextafter(lowest_kept, -1)
    return float(min(DEFAULT_THRESHOLD, halfway))


def predicted_labels(
    parasitized_probability: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Label per image (int8): parasitized where P(parasitized) > `threshold`."""
    scores = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    return np.where(scores > threshold, PARASITIZED, UNINFECTED).astype(np.int8)


def evaluate_predictions(
    labels: np.ndarray,
    parasitized_probability: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> BinaryEvaluation:
    """Score P(parasitized) against true labels; parasitized is predicted where it is above
    `threshold`."""
    labels = np.asarray(labels).ravel()
    parasitized_score = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    if labels.shape != parasitized_score.shape or labels.size == 0:
        raise ValueError("labels and probabilities must be non-empty and of equal length")
    truly_parasitized = labels == PARASITIZED
    predicted_parasitized = predicted_labels(parasitized_score, threshold) == PARASITIZED
    both_classes = 0 < truly_parasitized.sum() < labels.size
    return BinaryEvaluation(
        true_positive=int(np.sum(truly_parasitized & predicted_parasitized)),
        false_negative=int(np.sum(truly_parasitized & ~predicted_parasitized)),
        false_positive=int(np.sum(~truly_parasitized & predicted_parasitized)),
        true_negative=int(np.sum(~truly_parasitized & ~predicted_parasitized)),
        roc_auc=float(roc_auc_score(truly_parasitized, parasitized_score))
        if both_classes
        else None,
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0
