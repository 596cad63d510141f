"""Train / validation / test assignment, grouped by patient so no patient leaks across splits."""

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cnn.config import SplitStrategy

SPLITS: tuple[str, str, str] = ("train", "validation", "test")


class SplitError(ValueError):
    """The records cannot be split as asked (for example: too few patients)."""


def assign_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    strategy: SplitStrategy,
    test_fraction: float,
    validation_fraction: float,
    seed: int,
) -> np.ndarray:
    """Return each record's split name.

    `test_fraction` of all records go to test; `validation_fraction` of the rest to validation
    (as Keras' `validation_split`). `patient` keeps every group inside one split and stratifies
    by label as far as the groups allow; `random` is the lecture's stratified random split.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    splits = np.full(len(labels), "train", dtype=object)
    test = _hold_out(labels, groups, test_fraction, strategy, seed)
    splits[test] = "test"
    rest = np.flatnonzero(splits == "train")
    validation = _hold_out(labels[rest], groups[rest], validation_fraction, strategy, seed + 1)
    splits[rest[validation]] = "validation"
    return splits


def _hold_out(
    labels: np.ndarray, groups: np.ndarray, fraction: float, strategy: SplitStrategy, seed: int
) -> np.ndarray:
    """Indices of a held-out share of about `fraction` of the records."""
    indices = np.arange(len(labels))
    if strategy == "random":
        _, held = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
        return np.sort(held)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise SplitError(
            f"a patient split needs at least 2 patients to hold {fraction:.0%} out, "
            f"found {n_groups}; use split='random' or more images"
        )
    # One fold of k holds out about 1/k; with few patients the fold is one patient, larger.
    n_folds = min(max(2, round(1 / fraction)), n_groups)
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held = next(folds.split(indices, labels, groups))
    return held
