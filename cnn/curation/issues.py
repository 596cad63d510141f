"""Likely label errors among a dataset's train and validation cells: cleanlab's
`find_label_issues` on out-of-fold P(parasitized), as a review table, most doubtful first,
kept beside the datasets (`<data dir>/label-issues/<dataset name>.parquet`)."""

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from cnn.config import FOLD_TRAINING_IGNORES, LabelIssueFilter, LabelIssuesConfig, TrainConfig
from cnn.curation.folds import LabelPool, assign_folds, label_pool, out_of_fold_probabilities
from cnn.data.dataset import Dataset
from cnn.io.storage import Location
from cnn.labels import LABEL_NAMES, PARASITIZED, UNINFECTED
from cnn.progress import Progress

REVIEW_DIR = "label-issues"
"""Under the data folder: one review table per dataset, and the folds' scratch datasets."""
REVIEW_METADATA_KEY = b"malaria.label_issues"
"""The review table's Parquet metadata: which dataset it reviewed, and how."""


def review_location(data_dir: Location, dataset_name: str) -> Location:
    """Where the review table of the dataset `dataset_name` is kept."""
    return data_dir / REVIEW_DIR / f"{dataset_name}.parquet"


def class_probabilities(parasitized_probability: np.ndarray) -> np.ndarray:
    """cleanlab's `pred_probs`: one column per class index of `cnn.labels`, made from
    P(parasitized). The one place where the uninfected column is derived."""
    parasitized = np.clip(np.asarray(parasitized_probability, dtype=np.float64).ravel(), 0, 1)
    columns = np.empty((len(parasitized), len(LABEL_NAMES)))
    columns[:, PARASITIZED] = parasitized
    columns[:, UNINFECTED] = 1.0 - parasitized
    return columns


def flag_label_issues(
    labels: np.ndarray, parasitized_probability: np.ndarray, filter_by: LabelIssueFilter
) -> tuple[np.ndarray, np.ndarray]:
    """Which cells cleanlab flags as likely mislabelled, and each cell's label quality (its
    self-confidence: the probability of its given label; low is doubtful)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=int).ravel()
    pred_probs = class_probabilities(parasitized_probability)
    # n_jobs=1: cleanlab's process pool forks, and a fork of this threaded process (Keras,
    # Prefect) can hang in its child; on tens of thousands of cells one process is enough
    flagged = find_label_issues(labels, pred_probs, filter_by=filter_by, n_jobs=1)
    return np.asarray(flagged, dtype=bool), get_label_quality_scores(labels, pred_probs)


def current_review(
    dataset: Dataset,
    config: LabelIssuesConfig,
    training: TrainConfig,
    data_dir: Location,
    on_progress: Progress | None = None,
) -> tuple[pd.DataFrame, bool]:
    """The dataset's review table and whether it was reused: the one kept beside the data is
    read back when it reviewed this very dataset (its fingerprint) with these settings; else
    the labels are reviewed (one training per fold) and the new table written in its place."""
    where = review_location(data_dir, dataset.name)
    settings = _review_settings(config, training)
    if where.is_file():
        table, reviewed = read_review(where)
        if reviewed == _reviewed(dataset, settings):
            return table, True
    table = review_labels(dataset, config, training, data_dir / REVIEW_DIR / "folds", on_progress)
    write_review(table, where, dataset, settings)
    return table, False


def _review_settings(config: LabelIssuesConfig, training: TrainConfig) -> dict[str, Any]:
    """What a review's outcome depends on besides the dataset: its own settings and how
    its fold models train."""
    return {
        "review": config.model_dump(mode="json"),
        "training": training.model_dump(mode="json", exclude=set(FOLD_TRAINING_IGNORES)),
    }


def review_labels(
    dataset: Dataset,
    config: LabelIssuesConfig,
    training: TrainConfig,
    scratch: Location,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """The review table of the dataset's train and validation cells: out-of-fold scores from
    `config.folds` patient-grouped folds, cleanlab's flags, flagged cells first, each part
    most doubtful (lowest label quality) first."""
    pool = label_pool(dataset)
    fold_of = assign_folds(pool.labels, pool.groups, config.folds, config.seed)
    probability = out_of_fold_probabilities(
        dataset, pool, fold_of, config.variant, training, config.seed, scratch, on_progress
    )
    flagged, quality = flag_label_issues(pool.labels, probability, config.filter_by)
    return review_table(pool, probability, quality, flagged, fold_of)


def review_table(
    pool: LabelPool,
    probability: np.ndarray,
    quality: np.ndarray,
    flagged: np.ndarray,
    fold_of: np.ndarray,
) -> pd.DataFrame:
    """The review table's columns for the pool's cells, ranked by `rank_review`."""
    table = pd.DataFrame(
        {
            "row": pool.rows,
            "source_id": pool.source_ids,
            "group": pool.groups,
            "split": pool.splits,
            "label": pool.labels,
            "label_name": np.asarray(LABEL_NAMES)[pool.labels],
            "parasitized_probability": probability,
            "label_quality": quality,
            "flagged": flagged,
            "fold": fold_of,
        }
    )
    return rank_review(table)


def rank_review(table: pd.DataFrame) -> pd.DataFrame:
    """Flagged cells first, each part most doubtful first; ties in dataset order."""
    ranked = table.sort_values(["flagged", "label_quality", "row"], ascending=[False, True, True])
    return ranked.reset_index(drop=True)


class ReviewSummary(BaseModel):
    """What a label review found, and where its table is."""

    dataset: str
    review_table: str
    cells_checked: int
    flagged: int
    flagged_share: float
    flagged_by_label: dict[str, int]
    reused: bool = False
    """The review kept beside the data was read back (same dataset, same settings)."""

    @classmethod
    def of(
        cls, table: pd.DataFrame, dataset: Dataset, where: Location, reused: bool = False
    ) -> "ReviewSummary":
        flagged = table[table["flagged"]]
        return cls(
            dataset=dataset.uri,
            review_table=where.uri,
            reused=reused,
            cells_checked=len(table),
            flagged=len(flagged),
            flagged_share=round(len(flagged) / max(len(table), 1), 6),
            flagged_by_label={
                name: int((flagged["label_name"] == name).sum()) for name in LABEL_NAMES
            },
        )


def write_review(
    table: pd.DataFrame, where: Location, dataset: Dataset, settings: dict[str, Any]
) -> None:
    """Write the review table at `where` at once (atomically), recording the dataset it
    reviewed (name and fingerprint) and the `settings` it was made with."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    reviewed = json.dumps(_reviewed(dataset, settings))
    metadata = {**(arrow.schema.metadata or {}), REVIEW_METADATA_KEY: reviewed}
    buffer = pa.BufferOutputStream()
    pq.write_table(arrow.replace_schema_metadata(metadata), buffer)
    where.write_bytes(buffer.getvalue().to_pybytes())


def _reviewed(dataset: Dataset, settings: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset.name, "fingerprint": dataset.manifest.fingerprint, **settings}


def read_review(where: Location) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The review table at `where` and what it records of its making."""
    arrow = pq.read_table(io.BytesIO(where.read_bytes()))
    reviewed = json.loads((arrow.schema.metadata or {}).get(REVIEW_METADATA_KEY, b"{}"))
    return arrow.to_pandas(), reviewed
