import numpy as np
import pytest

from cnn.metrics import BinaryEvaluation, evaluate_predictions


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
    uninfected_probability = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    evaluation = evaluate_predictions(labels, uninfected_probability)
    # rows true:yes / true:no, columns pred:yes / pred:no
    assert evaluation.confusion_matrix == [[2, 1], [1, 1]]
    assert evaluation.precision == pytest.approx(2 / 3)


def test_perfect_scores_and_auc():
    labels = np.array([0, 1, 0, 1])
    evaluation = evaluate_predictions(labels, np.array([0.0, 1.0, 0.2, 0.7]))
    assert evaluation.accuracy == 1.0 and evaluation.roc_auc == 1.0 and evaluation.f1 == 1.0


def test_auc_is_left_out_when_only_one_class_is_present():
    evaluation = evaluate_predictions(np.array([1, 1]), np.array([0.9, 0.4]))
    assert evaluation.roc_auc is None and "roc_auc" not in evaluation.scores()


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        evaluate_predictions(np.array([0, 1]), np.array([0.5]))
