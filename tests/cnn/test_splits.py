import numpy as np
import pytest

from cnn.ingest.splits import SplitError, assign_splits


def _patients(count: int, cells_per_patient: int = 20):
    groups = np.repeat([f"C{i}P{i}ThinF" for i in range(count)], cells_per_patient)
    labels = np.random.default_rng(0).integers(0, 2, size=len(groups))
    return labels, groups


def test_patient_split_keeps_every_patient_in_one_split():
    labels, groups = _patients(60)
    splits = assign_splits(labels, groups, "patient", 0.2, 0.1, seed=3)
    for group in np.unique(groups):
        assert len(set(splits[groups == group])) == 1, group
    shares = {name: np.mean(splits == name) for name in ("train", "validation", "test")}
    assert 0.15 <= shares["test"] <= 0.25
    assert 0.05 <= shares["validation"] <= 0.12


def test_random_split_is_stratified_and_seeded():
    labels, groups = _patients(50)
    first = assign_splits(labels, groups, "random", 0.2, 0.1, seed=7)
    again = assign_splits(labels, groups, "random", 0.2, 0.1, seed=7)
    np.testing.assert_array_equal(first, again)
    assert np.sum(first == "test") == 200
    test_labels = labels[first == "test"]
    assert abs(test_labels.mean() - labels.mean()) < 0.02


def test_patient_split_with_too_few_patients_says_what_to_do():
    labels, groups = _patients(1)
    with pytest.raises(SplitError, match="split='random'"):
        assign_splits(labels, groups, "patient", 0.2, 0.1, seed=0)


def test_few_patients_still_split_by_patient():
    labels, groups = _patients(4)
    splits = assign_splits(labels, groups, "patient", 0.2, 0.1, seed=0)
    assert set(splits) == {"train", "validation", "test"}
    for group in np.unique(groups):
        assert len(set(splits[groups == group])) == 1


def test_too_few_images_for_a_random_split_say_how_many_are_needed():
    labels = np.arange(13) % 2
    with pytest.raises(SplitError, match=r"too few images for a random split: 13; .* least 14"):
        assign_splits(labels, labels.astype(str), "random", 0.2, 0.1, seed=0)
    labels = np.arange(14) % 2
    splits = assign_splits(labels, labels.astype(str), "random", 0.2, 0.1, seed=0)
    for split in ("train", "validation", "test"):
        assert set(labels[splits == split]) == {0, 1}, split


def test_a_label_too_rare_to_stratify_is_a_split_error():
    labels = np.array([0] * 30 + [1])
    with pytest.raises(SplitError, match="random split cannot hold out 20% of 31 images"):
        assign_splits(labels, labels.astype(str), "random", 0.2, 0.1, seed=0)


def test_the_largest_seed_splits():
    labels, groups = _patients(10)
    for strategy in ("random", "patient"):
        splits = assign_splits(labels, groups, strategy, 0.2, 0.1, seed=2**32 - 1)
        assert set(splits) == {"train", "validation", "test"}
