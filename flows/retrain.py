"""Retrain flow: the scheduled job. Ingest (a cache hit when nothing changed), train, evaluate,
promote; then a `retrain-summary` artifact, and a webhook post if it promoted or failed."""

from prefect import flow

from cnn.config import (
    DEFAULT_VARIANTS,
    IngestConfig,
    LabelIssuesConfig,
    PromotionConfig,
    TrainConfig,
    VariantNames,
)
from flows import names
from flows.pipeline import PipelineResult, run_pipeline
from flows.train import parent_run
from tasks.notify import notify_failure, post_notification
from tasks.registry import find_champion
from tasks.summary import summarize_retrain
from tracking.config import TrackingConfig
from tracking.registry import promoted, promotion_outcome
from tracking.store import require_tracking_server


@flow(
    name="retrain",
    flow_run_name=names.retrain_run_name,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
def retrain(
    data: IngestConfig = IngestConfig(),
    variants: VariantNames = DEFAULT_VARIANTS,
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
    work_pool: str | None = None,
    find_label_issues: bool = False,
    label_issues: LabelIssuesConfig = LabelIssuesConfig(),
) -> PipelineResult:
    """Retrain on the current data; `champion` moves only to a model that beats it.

    Args:
        data: Where the images come from and how they become a dataset.
        variants: CNN variants to train, one MLflow run each (`malaria variants` lists them).
        training: Epochs, schedule, augmentation, operating point, ensemble size, and
            whether to leave out the labels a label review flagged.
        tracking: MLflow experiment and registered model name.
        promotion: The score a new model must beat the champion's on, and by how much.
        work_pool: Train each variant on this work pool's workers (unset: here, in turn).
        find_label_issues: Review the labels after the ingest (the label-issues stage: one
            training per fold) and train without the flagged ones.
        label_issues: How the labels are reviewed: folds, variant, cleanlab's filter.
    """
    require_tracking_server()
    champion_before = find_champion(tracking.registered_model)
    with parent_run(tracking, None) as parent_run_id:
        review = label_issues if find_label_issues else None
        result = run_pipeline(
            data, variants, training, tracking, promotion, work_pool, parent_run_id, review
        )
        summarize_retrain(result.dataset, result.runs, champion_before, result.champion)
    if promoted(champion_before, result.champion):
        post_notification(
            "promoted",
            f"malaria retrain: {promotion_outcome(champion_before, result.champion)}",
            {"champion": result.champion.model_dump(), "dataset": result.dataset.name},
        )
    return result
