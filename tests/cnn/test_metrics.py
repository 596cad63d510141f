import numpy as np
import pytest

from cnn.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    BinaryEvaluation,
    evaluate_predictions,
    predicted_labels,
    threshold_for_sensitivity,
)
from cnn.labels import PARASITIZED, UNINFECTED


def test_the_lectures_confusion_matrix_gives_its_766_accuracy():
    lecture = BinaryEvaluation(
        true_positive=191, false_negative=71, false_positive=46, true_negative=192
    )
    assert lecture.confusion_matrix == [[191, 71], [46, 192]]
    assert lecture.accuracy == pytest.approx(0.766)
    assert lecture.sensitivity == pytest.approx(191 / 262)
    assert lecture.specificity == pytest.approx(192 / 238)


def test_parasitized_label_zero_is_the_positive_class():
    labels = np.array([0, 0, 0, 1, 1])  # 0 = parasitized
    parasitized_probability = np.array([0.9, 0.8, 0.1, 0.2, 0.7])
    evaluation = evaluate_predictions(labels, parasitized_probability)
    # rows true:yes / true:no, columns pred:yes / pred:no
    assert evaluation.confusion_matrix == [[2, 1], [1, 1]]
    assert evaluation.precision == pytest.approx(2 / 3)


def test_perfect_scores_and_auc():
    labels = np.array([0, 1, 0, 1])
    evaluation = evaluate_predictions(labels, np.array([1.0, 0.0, 0.8, 0.3]))
    assert evaluation.accuracy == 1.0 and evaluation.roc_auc == 1.0 and evaluation.f1 == 1.0


def test_auc_is_left_out_when_only_one_class_is_present():
    evaluation = evaluate_predictions(np.array([1, 1]), np.array([0.1, 0.6]))
    assert evaluation.roc_auc is None and "roc_auc" not in evaluation.scores()


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        evaluate_predictions(np.array([0, 1]), np.array([0.5]))


def test_threshold_for_sensitivity_finds_the_target_share_of_parasitized_cells():
    rng = np.random.default_rng(0)
    labels = np.repeat([PARASITIZED, UNINFECTED], 200)
    noise = rng.normal(0, 0.2, 400)
    parasitized = np.clip(np.where(labels == PARASITIZED, 0.7, 0.3) + noise, 0, 1)
    for target in (0.9, 0.97, 0.99):
        threshold = threshold_for_sensitivity(labels, parasitized, target)
        sensitivity = evaluate_predictions(labels, parasitized, threshold).sensitivity
        assert target <= sensitivity < target + 0.01, (target, sensitivity)


def test_the_operating_point_never_calls_fewer_parasitized_cells_than_half():
    labels = np.repeat([PARASITIZED, UNINFECTED], 100)
    certain = np.where(labels == PARASITIZED, np.linspace(1.0, 0.9, 200), 0.05)
    assert threshold_for_sensitivity(labels, certain, 0.97) == DEFAULT_THRESHOLD


def test_tied_scores_still_reach_the_target():
    labels = np.array([PARASITIZED] * 4 + [UNINFECTED] * 2)
    parasitized = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    threshold = threshold_for_sensitivity(labels, parasitized, 0.97)
    assert evaluate_predictions(labels, parasitized, threshold).sensitivity == 1.0


def test_a_target_needs_parasitized_cells_and_a_share():
    with pytest.raises(ValueError, match="parasitized"):
        threshold_for_sensitivity(np.array([UNINFECTED]), np.array([0.1]), 0.97)
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(np.array([PARASITIZED]), np.array([0.9]), 1.5)


def test_labels_follow_the_threshold():
    parasitized = np.array([0.95, 0.6, 0.4, 0.05])
    assert predicted_labels(parasitized).tolist() == [PARASITIZED, PARASITIZED, 1, 1]
    assert predicted_labels(parasitized, threshold=0.3).tolist() == [PARASITIZED] * 3 + [1]
