"""Patient-grouped folds for the accuracy benchmarks, with a leave-slides-out stain check.

Every row of a dataset gets a split name per fold: `train`, `validation` or `test` (the
outer patient-grouped stratified folds; validation a further patient-grouped tenth of each
fold's training patients), or `atypical`: the patients whose cells' mean colour lies
farthest from the others', held out of every fold's training and scored by every fold's
model, so that their score says how the recipe holds on a stain it has not seen.
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ATYPICAL = "atypical"
EXCLUDED = "excluded"
BACKGROUND_LEVEL = 30
"""A pixel whose channels sum to at most this is the black border around a cell."""


def patient_colours(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's mean cell colour (RGB of the pixels inside the cells) and the patients."""
    from cnn.data.dataset import images_from_column

    table = pq.read_table(dataset.shard_paths, columns=["image", "group"])
    images = images_from_column(table["image"], dataset.image_shape).astype(np.float32)
    inside = images.sum(axis=3) > BACKGROUND_LEVEL
    cell_colours = (images * inside[..., None]).sum((1, 2)) / inside.sum((1, 2))[:, None]
    groups = np.asarray(table["group"].to_pylist())
    patients = np.unique(groups)
    colours = np.stack([cell_colours[groups == patient].mean(0) for patient in patients])
    return colours, patients


def atypical_patients(dataset, share: float) -> list[str]:
    """The `share` of patients whose mean cell colour is farthest from the median patient's
    (each channel scaled by its median absolute deviation over patients)."""
    if share <= 0:
        return []
    colours, patients = patient_colours(dataset)
    centre = np.median(colours, axis=0)
    spread = np.median(np.abs(colours - centre), axis=0)
    distance = np.linalg.norm((colours - centre) / spread, axis=1)
    count = max(1, round(share * len(patients)))
    return sorted(patients[np.argsort(-distance)[:count]].tolist())


def fold_splits(
    dataset, folds: int, seed: int, held_out: list[str] = (), excluded: set[str] = frozenset()
) -> list[np.ndarray]:
    """Each fold's split name per row (in the dataset's row order), patient-grouped; the rows
    of the `held_out` patients are `atypical` in every fold; the `excluded` source ids are
    left out of training and validation (`excluded`), never out of a test split. The folds
    do not depend on `excluded`."""
    from sklearn.model_selection import StratifiedGroupKFold

    table = pq.read_table(dataset.shard_paths, columns=["label", "group", "source_id"])
    left_out = np.isin(np.asarray(table["source_id"].to_pylist()), list(excluded))
    labels, groups = table["label"].to_numpy(), table["group"].to_numpy(zero_copy_only=False)
    kept = np.flatnonzero(~np.isin(groups, list(held_out)))
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignments = []
    for rest, test in outer.split(kept, labels[kept], groups[kept]):
        rest, test = kept[rest], kept[test]
        splits = np.full(len(labels), ATYPICAL, dtype=object)
        splits[rest] = "train"
        splits[test] = "test"
        inner = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
        _, validation = next(inner.split(rest, labels[rest], groups[rest]))
        splits[rest[validation]] = "validation"
        splits[left_out & np.isin(splits, ["train", "validation"])] = EXCLUDED
        assignments.append(splits)
    return assignments


def with_splits(dataset, splits: np.ndarray, path: Path):
    """A copy of `dataset` at `path` whose rows carry `splits` (new counts)."""
    from cnn.curation.derived import derive_dataset
    from cnn.io.storage import location

    return derive_dataset(dataset, location(path), splits, path.name, "benchmark fold")
