"""Label-issue tasks: review a dataset's labels into its MLflow run and Prefect artifacts, and
the dataset to train on without the flagged ones."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cnn.config import LabelIssuesConfig, TrainConfig
from cnn.curation.exclusion import EXCLUDED_FIELD, without_label_issues
from cnn.curation.issues import ReviewSummary, current_review, review_location
from cnn.data.dataset import images_at, open_dataset
from cnn.reports.figures import label_issue_gallery
from cnn.settings import data_dir, datasets_dir
from tasks.locks import data_locks
from tasks.progress import TaskProgress
from tasks.retry import IO_RETRIES
from tracking.label_issues import log_label_review, review_markdown
from tracking.store import tracking_uri

TABLE_ROWS = 50
"""Flagged cells listed in the Prefect table artifact (all of them are in the review table)."""
TABLE_COLUMNS = [
    "source_id",
    "group",
    "split",
    "label_name",
    "parasitized_probability",
    "label_quality",
]


@task(name="review-labels", **IO_RETRIES)
def review_dataset_labels(
    dataset_path: str, config: LabelIssuesConfig, training: TrainConfig, run_id: str
) -> ReviewSummary:
    """Score every train and validation cell out of fold, flag likely label errors, write the
    review table beside the data (or reuse the one there, made of the same dataset with the
    same settings), log it and the gallery to the run `run_id`, and leave the `label-issues`
    table and `label-issues-summary` markdown artifacts."""
    dataset, folder = open_dataset(dataset_path), data_dir()
    described = f"Share of {config.folds} folds of {dataset.name} trained and scored"
    with TaskProgress("label-issues-progress", "label issues", described) as progress:
        review, reused = current_review(dataset, config, training, folder, progress)
        progress.finish()
    where = review_location(folder, dataset.name)
    summary = ReviewSummary.of(review, dataset, where, reused)
    top = review.head(config.gallery_size)
    gallery = label_issue_gallery(
        images_at(dataset, top["row"]), top["label"], top["parasitized_probability"]
    )
    gallery_uri = log_label_review(run_id, dataset, config, training, review, summary, gallery)
    _review_artifacts(review, summary, run_id, gallery_uri)
    state = "reused" if reused else "written"
    get_run_logger().info(
        "%d of %d labels flagged → %s (%s)", summary.flagged, len(review), where.uri, state
    )
    return summary


def _review_artifacts(review, summary: ReviewSummary, run_id: str, gallery_uri: str) -> None:
    """A table of the most doubtful flagged cells, and a summary that links the run."""
    flagged = review[review["flagged"]].head(TABLE_ROWS)
    create_table_artifact(
        key="label-issues",
        table=flagged[TABLE_COLUMNS].round(4).to_dict(orient="records"),
        description=f"The {len(flagged)} most doubtful of {summary.flagged} flagged labels",
    )
    create_markdown_artifact(
        key="label-issues-summary",
        markdown=review_markdown(summary, tracking_uri(), run_id, gallery_uri),
    )


@task(name="exclude-label-issues", **IO_RETRIES)
def dataset_without_label_issues(dataset_path: str) -> str:
    """The dataset to train on instead: the given one without the cells its label review
    flagged (made once and then found); a dataset already without them as it is."""
    folder = datasets_dir()
    dataset = without_label_issues(
        open_dataset(dataset_path), data_dir(), folder, data_locks(folder)
    )
    excluded = dataset.manifest.model_extra[EXCLUDED_FIELD]
    get_run_logger().info(
        "Training on %s: %d flagged label(s) of %s left out (review %s)",
        *(dataset.uri, excluded["cells"], excluded["dataset"], excluded["review_table"]),
    )
    return dataset.uri
