"""Patient-grouped folds over a dataset's train and validation cells, and the out-of-fold
P(parasitized) of each of them: scored by a model that never saw its patient.

Each fold is a derived dataset (`cnn.curation.derived`): the fold's cells are its `test`
split, the other folds' cells its `train` and `validation` splits (a patient-grouped tenth of
their patients validates), the dataset's own test cells are left out of every fold.
"""

from dataclasses import dataclass

import numpy as np

from cnn.config import TrainConfig
from cnn.curation.derived import dataset_column, derive_dataset
from cnn.data.dataset import Dataset
from cnn.errors import InputError
from cnn.evaluation.scoring import predict_split
from cnn.io.storage import Location
from cnn.progress import Progress
from cnn.training.train import fit_variant

POOL_SPLITS = ("train", "validation")
"""The splits whose labels are checked; the test split is never trained on nor changed."""
HELD_OUT = "test"
"""The split of a fold's dataset that holds the fold's cells (what its model scores)."""
INNER_VALIDATION_FOLDS = 10
"""A fold's model validates on one of this many patient-grouped parts of its training cells."""


class FoldError(InputError):
    """The cells cannot be split into the folds asked for (too few patients)."""


@dataclass(frozen=True)
class LabelPool:
    """The train and validation cells of a dataset, in its row order."""

    rows: np.ndarray
    """Each cell's position among all the dataset's rows."""
    labels: np.ndarray
    groups: np.ndarray
    source_ids: np.ndarray
    splits: np.ndarray


def label_pool(dataset: Dataset) -> LabelPool:
    """The dataset's train and validation cells (small columns only, no pixels)."""
    splits = dataset_column(dataset, "split")
    rows = np.flatnonzero(np.isin(splits, POOL_SPLITS))
    columns = {name: dataset_column(dataset, name)[rows] for name in ("label", "group")}
    return LabelPool(
        rows=rows,
        labels=columns["label"].astype(int),
        groups=columns["group"].astype(str),
        source_ids=dataset_column(dataset, "source_id")[rows].astype(str),
        splits=splits[rows].astype(str),
    )


def assign_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each cell's fold (0 … folds − 1): stratified by label as far as patients allow, and
    every patient's cells in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    patients = len(np.unique(groups))
    if patients < max(folds, 3):
        raise FoldError(_too_few(folds, patients))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(labels), -1)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[held] = fold
        if len(np.unique(np.delete(groups, held))) < 2:  # its model: train and validation
            raise FoldError(_too_few(folds, patients))
    return fold_of


def _too_few(folds: int, patients: int) -> str:
    return (
        f"{folds} patient-grouped folds need more patients than the {patients} among the "
        "dataset's train and validation cells (each fold's model trains and validates on "
        "patients of the other folds): lower folds"
    )


def fold_splits(
    labels: np.ndarray, groups: np.ndarray, fold_of: np.ndarray, fold: int, seed: int
) -> np.ndarray:
    """The split of each cell in fold `fold`'s dataset: its own cells `test`, a patient-grouped
    part of the others' patients `validation`, the rest `train`."""
    from sklearn.model_selection import StratifiedGroupKFold

    splits = np.where(fold_of == fold, HELD_OUT, "train").astype(object)
    rest = np.flatnonzero(fold_of != fold)
    parts = min(INNER_VALIDATION_FOLDS, len(np.unique(groups[rest])))
    inner = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    _, validation = next(inner.split(rest, labels[rest], groups[rest]))
    splits[rest[validation]] = "validation"
    return splits


def out_of_fold_probabilities(
    dataset: Dataset,
    pool: LabelPool,
    fold_of: np.ndarray,
    variant: str,
    training: TrainConfig,
    seed: int,
    scratch: Location,
    on_progress: Progress | None = None,
) -> np.ndarray:
    """P(parasitized) of every pool cell from the model trained on the other folds (its served
    model: calibrated, test-time augmented as `training` says). Each fold's dataset is
    written under `scratch` and deleted once scored."""
    folds = int(fold_of.max()) + 1
    probability = np.full(len(pool.rows), np.nan, dtype=np.float32)
    for fold in range(folds):
        splits = np.full(dataset.rows, None, dtype=object)
        splits[pool.rows] = fold_splits(pool.labels, pool.groups, fold_of, fold, seed)
        where = scratch / f"{dataset.name}-fold-{fold}"
        note = f"fold {fold + 1} of {folds} of {dataset.name}'s train and validation cells"
        fold_dataset = derive_dataset(dataset, where, splits, f"{dataset.name}-fold-{fold}", note)
        try:
            report = _fold_share(on_progress, fold, folds)
            result = fit_variant(fold_dataset, variant, training, on_progress=report)
            scores = predict_split(result.operating_point.served, fold_dataset, HELD_OUT)
        finally:
            where.delete()
        held = np.flatnonzero(fold_of == fold)
        if not np.array_equal(scores.labels, pool.labels[held]):
            raise RuntimeError(f"fold {fold}'s scores are not in its cells' order")
        probability[held] = scores.parasitized_probability
    return probability


def _fold_share(on_progress: Progress | None, fold: int, folds: int) -> Progress | None:
    """The share of all folds done, told to `on_progress` as fold `fold`'s training goes."""
    if on_progress is None:
        return None
    return lambda share: on_progress((fold + share) / folds)
