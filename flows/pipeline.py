"""The whole pipeline: ingest, then train and evaluate every variant."""

from prefect import flow
from pydantic import BaseModel, Field

from cnn.config import (
    DEFAULT_VARIANTS,
    IngestConfig,
    LabelIssuesConfig,
    PromotionConfig,
    TrainConfig,
    VariantNames,
)
from cnn.data.dataset import DatasetRef
from flows import names
from flows.ingest import ingest
from flows.label_issues import label_issues
from flows.train import parent_run, train
from tasks.registry import find_champion
from tracking.config import TrackingConfig
from tracking.registry import ChampionRef
from tracking.runs import VariantRun
from tracking.store import require_tracking_server


class PipelineResult(BaseModel):
    """The dataset a pipeline run used and every variant's tracked run."""

    dataset: DatasetRef
    runs: list[VariantRun]
    best: VariantRun = Field(description="The run with the highest test accuracy")
    champion: ChampionRef | None = Field(
        description="The registered model's champion after this run (may be an older version)"
    )


@flow(name="pipeline", flow_run_name=names.pipeline_run_name, log_prints=True)
def pipeline(
    data: IngestConfig = IngestConfig(),
    variants: VariantNames = DEFAULT_VARIANTS,
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
    work_pool: str | None = None,
) -> PipelineResult:
    """Images in, tracked and evaluated models out.

    Args:
        data: Where the images come from and how they become a dataset.
        variants: CNN variants to train, one MLflow run each (`malaria variants` lists them).
        training: Epochs, schedule, augmentation, operating point, ensemble size, and
            whether to leave out the labels a label review flagged.
        tracking: MLflow experiment and registered model name.
        promotion: The score a new model must beat the champion's on, and by how much.
        work_pool: Train each variant on this work pool's workers (unset: here, in turn).
    """
    require_tracking_server()  # fail now, not after the ingest, if MLflow is away
    with parent_run(tracking, None) as parent_run_id:
        return run_pipeline(data, variants, training, tracking, promotion, work_pool, parent_run_id)


def run_pipeline(
    data: IngestConfig,
    variants: list[str],
    training: TrainConfig,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
    work_pool: str | None,
    parent_run_id: str,
    label_review: LabelIssuesConfig | None = None,
) -> PipelineResult:
    """The pipeline's steps, its variants' MLflow runs nested under `parent_run_id`; with a
    `label_review`, the labels are reviewed after the ingest and the flagged ones left out."""
    dataset = ingest(data)
    if label_review is not None:
        label_issues(dataset.path, label_review, training, tracking, parent_run_id)
        training = training.model_copy(update={"exclude_label_issues": True})
    runs = train(dataset.path, variants, training, tracking, promotion, work_pool, parent_run_id)
    best = max(runs, key=lambda run: run.test_accuracy)
    champion = find_champion(tracking.registered_model)
    return PipelineResult(dataset=dataset, runs=runs, best=best, champion=champion)
