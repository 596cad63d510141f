"""Label-issues flow: likely label errors among a dataset's train and validation cells, found
by cleanlab in out-of-fold scores of patient-grouped folds, in their own MLflow run."""

from prefect import flow

from cnn.config import LabelIssuesConfig, TrainConfig
from cnn.curation.issues import ReviewSummary
from flows import names
from tasks.label_issues import review_dataset_labels
from tracking.config import TrackingConfig
from tracking.runs import tracked_run
from tracking.store import require_tracking_server


@flow(name="label-issues", flow_run_name=names.label_issues_run_name, log_prints=True)
def label_issues(
    dataset: str,
    config: LabelIssuesConfig = LabelIssuesConfig(),
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    parent_run_id: str | None = None,
) -> ReviewSummary:
    """Review the labels of the dataset's train and validation cells: each is scored by a
    model trained on the other folds' patients, cleanlab flags the likely errors, and the
    review table (kept beside the data, for `exclude_label_issues`) and a gallery of the
    most doubtful cells go to an MLflow run of their own and to Prefect artifacts.

    Args:
        dataset: Path of an ingested dataset (`malaria ingest` prints it).
        config: Folds, the variant trained on each, cleanlab's filter, gallery size.
        training: How each fold's model trains (epochs, augmentation…).
        tracking: MLflow experiment the review's run goes to.
        parent_run_id: MLflow run to nest the review's run under (unset: a top-level run).
    """
    require_tracking_server()
    tags = {"stage": "label-issues", "dataset": dataset, **names.mlflow_tags()}
    with tracked_run(tracking.experiment, "label-issues", tags, parent_run_id) as run_id:
        return review_dataset_labels(dataset, config, training, run_id)
