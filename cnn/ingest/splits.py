"""Train / validation / test assignment, grouped by patient so no patient leaks across splits.

scikit-learn is imported where a split needs it: importing it would slow every command's start.
"""

import math
from collections.abc import Sequence

import numpy as np

from cnn.config import MAX_SEED, SplitStrategy
from cnn.errors import InputError


def import_splitters() -> None:
    """Import scikit-learn's splitters now (a second or more that the first split would
    otherwise spend), for a caller with idle time: one waiting for a server, say."""
    import sklearn.model_selection  # noqa: F401


class SplitError(InputError):
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
    by label as far as the groups allow; `random` is a stratified random split of the records.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if strategy == "random":
        _check_random_split(labels, test_fraction, validation_fraction)
    splits = np.full(len(labels), "train", dtype=object)
    test = _hold_out(labels, groups, test_fraction, strategy, seed)
    splits[test] = "test"
    rest = np.flatnonzero(splits == "train")
    validation_seed = (seed + 1) % (MAX_SEED + 1)
    validation = _hold_out(
        labels[rest], groups[rest], validation_fraction, strategy, validation_seed
    )
    splits[rest[validation]] = "validation"
    return splits


def _hold_out(
    labels: np.ndarray, groups: np.ndarray, fraction: float, strategy: SplitStrategy, seed: int
) -> np.ndarray:
    """Indices of a held-out share of about `fraction` of the records."""
    indices = np.arange(len(labels))
    if strategy == "random":
        from sklearn.model_selection import train_test_split

        try:
            _, held = train_test_split(
                indices, test_size=fraction, stratify=labels, random_state=seed
            )
        except ValueError as error:  # e.g. a label with a single image
            raise SplitError(
                f"a random split cannot hold out {fraction:.0%} of {len(labels)} images with "
                f"every label in proportion: {error}"
            ) from error
        return np.sort(held)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise SplitError(
            f"a patient split needs at least 2 patients to hold {fraction:.0%} out, "
            f"found {n_groups}; use split='random' or more images"
        )
    # One fold of k holds out about 1/k; with few patients the fold is one patient, larger.
    n_folds = min(max(2, round(1 / fraction)), n_groups)
    from sklearn.model_selection import StratifiedGroupKFold

    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held = next(folds.split(indices, labels, groups))
    return held


def _check_random_split(
    labels: np.ndarray, test_fraction: float, validation_fraction: float
) -> None:
    """Raise SplitError, saying how many images are needed, when there are too few for every
    split to hold an image of each label (scikit-learn's own error explains nothing)."""
    n_labels = len(np.unique(labels))
    least_validation = _smallest_splittable(validation_fraction, n_labels, n_labels)
    needed = _smallest_splittable(test_fraction, n_labels, least_validation)
    if len(labels) < needed:
        raise SplitError(
            f"too few images for a random split: {len(labels)}; with test_fraction "
            f"{test_fraction:g} and validation_fraction {validation_fraction:g} it needs at "
            f"least {needed}, so that each split can hold an image of each of the {n_labels} "
            "labels; use more images or larger fractions"
        )


def _smallest_splittable(fraction: float, held_needed: int, kept_needed: int) -> int:
    """The fewest records of which `fraction`, rounded up as scikit-learn rounds it, holds at
    least `held_needed` out and keeps at least `kept_needed`."""

    def held(n: int) -> int:
        return math.ceil(fraction * n)

    lower_bound = max((held_needed - 1) / fraction, kept_needed / (1 - fraction))
    n = max(0, math.floor(lower_bound) - 2)
    while held(n) < held_needed or n - held(n) < kept_needed:
        n += 1
    return n
