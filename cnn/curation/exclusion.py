"""Training without the flagged labels: a derived dataset whose flagged train and validation
cells are left out, under its own name and fingerprint, its manifest saying what was left out
and from which review table. Training needs no special case, and checkpoints and caches keyed
by the dataset stay right. Test cells are never left out: scores stay comparable."""

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from cnn.curation.derived import dataset_column, derive_dataset
from cnn.curation.folds import POOL_SPLITS
from cnn.curation.issues import read_review, review_location
from cnn.data.dataset import Dataset, open_dataset
from cnn.data.manifest import manifest_path
from cnn.errors import InputError
from cnn.io.locks import Locks, folder_locks
from cnn.io.storage import Location

EXCLUDED_FIELD = "label_issues_excluded"
"""The manifest field of a dataset without its flagged labels: what was left out, and why."""
NAME_PART = "no-label-issues"
"""In the derived dataset's name: `synthetic-64px-no-label-issues-<fingerprint>`."""


class LabelReviewMissingError(InputError):
    """Training without flagged labels was asked for, and the dataset has no usable review."""


def without_label_issues(
    dataset: Dataset, data_dir: Location, datasets_dir: Location, locks: Locks | None = None
) -> Dataset:
    """The dataset without the cells its review table flagged (made once, then found by its
    name); a dataset that is already such a copy is returned as it is."""
    if EXCLUDED_FIELD in (dataset.manifest.model_extra or {}):
        return dataset
    review, reviewed, where = label_review_of(dataset, data_dir)
    flagged = review[review["flagged"]]
    splits = dataset_column(dataset, "split").astype(object)
    rows = np.sort(flagged["row"].to_numpy(dtype=int))
    rows = rows[np.isin(splits[rows], POOL_SPLITS)]  # never a test cell
    digest = _fingerprint(dataset, rows)
    stem = dataset.name.rpartition("-")[0] or dataset.name
    final = datasets_dir / f"{stem}-{NAME_PART}-{digest}"
    with (locks or folder_locks(datasets_dir))(f"dataset-{final.name}", None):
        if manifest_path(final):
            return open_dataset(final)
        splits[rows] = None
        excluded = {
            "dataset": dataset.name,
            "review_table": where.uri,
            "settings": reviewed,
            "cells": len(rows),
            "source_ids": sorted(flagged.set_index("row").loc[rows, "source_id"].tolist()),
        }
        note = f"{dataset.manifest.split_note}; {len(rows)} flagged label(s) left out"
        return derive_dataset(dataset, final, splits, digest, note, {EXCLUDED_FIELD: excluded})


def label_review_of(
    dataset: Dataset, data_dir: Location
) -> tuple[pd.DataFrame, dict[str, Any], Location]:
    """The dataset's review table, what it records of its making, and where it is; a
    `LabelReviewMissingError` naming the command to run when there is none of this dataset."""
    where = review_location(data_dir, dataset.name)
    if not where.is_file():
        raise LabelReviewMissingError(
            f"dataset {dataset.name!r} has no label review ({where.uri}): run `malaria "
            f"label-issues --dataset {dataset.uri}` first, or train without exclude_label_issues"
        )
    review, reviewed = read_review(where)
    if reviewed.get("fingerprint") != dataset.manifest.fingerprint:
        raise LabelReviewMissingError(
            f"the label review {where.uri} is not of dataset {dataset.name!r} (its fingerprint "
            f"differs): run `malaria label-issues --dataset {dataset.uri}` again"
        )
    return review, reviewed, where


def _fingerprint(dataset: Dataset, rows: np.ndarray) -> str:
    """A digest of the dataset and the rows left out of it."""
    payload = {"dataset": dataset.manifest.fingerprint, "left_out": rows.tolist()}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
