"""A label review in its own MLflow run: its settings, how many cells it checked and flagged,
the review table (CSV) and the gallery of the most doubtful cells."""

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from cnn.config import LabelIssuesConfig, TrainConfig
from cnn.curation.issues import ReviewSummary
from cnn.data.dataset import Dataset
from tracking.runs import link_to_run
from tracking.training import flatten_params

REVIEW_ARTIFACT = "label_issues/review.csv"
GALLERY_ARTIFACT = "label_issues/gallery.png"


def log_label_review(
    run_id: str,
    dataset: Dataset,
    config: LabelIssuesConfig,
    training: TrainConfig,
    review: pd.DataFrame,
    summary: ReviewSummary,
    gallery: Figure,
) -> str:
    """Log the review into the run `run_id`; return the gallery's artifact URI."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(
            {
                **config.model_dump(),
                **flatten_params(training.model_dump(), "training."),
                "dataset": dataset.name,
            }
        )
        mlflow.log_metrics(
            {
                "cells_checked": summary.cells_checked,
                "flagged": summary.flagged,
                "flagged_share": summary.flagged_share,
                "reused": int(summary.reused),
                **{f"flagged_{name}": count for name, count in summary.flagged_by_label.items()},
            }
        )
        mlflow.log_text(review.to_csv(index=False), REVIEW_ARTIFACT)
        mlflow.log_figure(gallery, GALLERY_ARTIFACT)
        return mlflow.get_artifact_uri(GALLERY_ARTIFACT)


def review_markdown(summary: ReviewSummary, tracking_uri: str, run_id: str, gallery: str) -> str:
    """A Prefect summary of the review: counts, where the table and gallery are."""
    counts = ", ".join(f"{count} {name}" for name, count in summary.flagged_by_label.items())
    return "\n".join(
        [
            "# Labels worth a second look",
            "",
            f"- dataset: `{summary.dataset}`",
            f"- {summary.flagged} of {summary.cells_checked} train and validation cells "
            f"flagged ({summary.flagged_share:.1%}; given labels: {counts})",
            f"- review table: `{summary.review_table}` (and `{REVIEW_ARTIFACT}` in the run)"
            + (", reused: same dataset, same settings" if summary.reused else ""),
            f"- gallery: `{gallery}`",
            f"- MLflow run: {link_to_run(tracking_uri, run_id)}",
            "",
            "Train without them: `--exclude-label-issues` (training field exclude_label_issues).",
        ]
    )
