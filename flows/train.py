"""Train flows: one `train-variant` flow run per CNN variant, each its own MLflow run."""

from prefect import flow, tags
from prefect.runtime import flow_run

from cnn.config import (
    DEFAULT_VARIANTS,
    PromotionConfig,
    TrainConfig,
    VariantName,
    VariantNames,
)
from cnn.ensembles import ENSEMBLE, check_ensemble_size
from flows import names
from tasks.ensemble import log_ensemble
from tasks.evaluate import evaluate_model
from tasks.fanout import find_variant_deployment, run_variant_deployment
from tasks.registry import promote_model
from tasks.report import render_report
from tasks.train import check_variant_downloads, find_variant_run, read_variant_run, train_model
from tracking.config import TrackingConfig
from tracking.runs import TrainedModel, VariantRun, tracked_run
from tracking.store import require_tracking_server


@flow(name="train-variant", flow_run_name=names.train_variant_run_name, log_prints=True)
def train_variant(
    dataset: str,
    variant: VariantName = "simple",
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
) -> VariantRun:
    """Train one variant on the dataset, evaluate it on the test split, register it, give it
    `champion` if it beats the current one (else `challenger`), and render its report."""
    tags = {"variant": variant, "dataset": dataset, "prefect_flow_run_id": str(flow_run.id)}
    with tracked_run(tracking.experiment, run_name=variant, tags=tags) as run_id:
        model = train_model(dataset, variant, training, run_id, tracking.registered_model)
        _evaluate_promote_report(model, dataset, run_id, tracking, promotion)
    return read_variant_run(run_id)


@flow(name="train-ensemble", flow_run_name=names.train_ensemble_run_name, log_prints=True)
def train_ensemble(
    dataset: str,
    candidates: list[VariantRun],
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
) -> VariantRun:
    """Average the best `training.ensemble` of the trained variants into one model, then
    evaluate, register, promote and report it as any variant."""
    tags = {"variant": ENSEMBLE, "dataset": dataset, "prefect_flow_run_id": str(flow_run.id)}
    with tracked_run(tracking.experiment, run_name=ENSEMBLE, tags=tags) as run_id:
        model = log_ensemble(dataset, candidates, training, run_id, tracking.registered_model)
        _evaluate_promote_report(model, dataset, run_id, tracking, promotion)
    return read_variant_run(run_id)


def _evaluate_promote_report(
    model: TrainedModel,
    dataset: str,
    run_id: str,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
) -> None:
    """Score a registered model on the test split, decide its alias, render its report."""
    scores = evaluate_model(model.model_uri, dataset, run_id)
    decision = promote_model(
        tracking.registered_model, model.version, dataset, scores, run_id, promotion
    )
    render_report(model.model_uri, dataset, run_id, decision)


@flow(name="train", flow_run_name=names.train_run_name, log_prints=True)
def train(
    dataset: str,
    variants: VariantNames = DEFAULT_VARIANTS,
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
    work_pool: str | None = None,
) -> list[VariantRun]:
    """Train each variant as its own `train-variant` flow run.

    Without a work pool they run here, one after another. With one, each is submitted to the
    pool's `train-variant` deployment at once, and this flow waits for all of them. With
    `training.ensemble` set, the best that many are then averaged into one more model.

    Args:
        dataset: Path of an ingested dataset (`malaria ingest` prints it).
        variants: CNN variants to train, one MLflow run each (`malaria variants` lists them).
        training: Epochs, schedule, augmentation, operating point, ensemble size.
        tracking: MLflow experiment and registered model name.
        promotion: The score a new model must beat the champion's on, and by how much.
        work_pool: Run each variant on this work pool's workers (unset: here, in turn).
    """
    require_tracking_server()
    check_ensemble_size(training.ensemble, variants)
    check_variant_downloads(list(variants), training)
    runs = _train_variants(dataset, variants, training, tracking, promotion, work_pool)
    if training.ensemble:
        runs.append(train_ensemble(dataset, runs, training, tracking, promotion))
    return runs


def _train_variants(
    dataset: str,
    variants: list[str],
    training: TrainConfig,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
    work_pool: str | None,
) -> list[VariantRun]:
    if work_pool is None:
        runs = []
        for variant in variants:
            with tags(*names.variant_tags(variant, dataset)):
                runs.append(train_variant(dataset, variant, training, tracking, promotion))
        return runs
    deployment = find_variant_deployment(work_pool)
    submitted = [
        run_variant_deployment.submit(
            deployment,
            names.variant_tags(variant, dataset),
            {
                "dataset": dataset,
                "variant": variant,
                "training": training.model_dump(mode="json"),
                "tracking": tracking.model_dump(mode="json"),
                "promotion": promotion.model_dump(mode="json"),
            },
        )
        for variant in variants
    ]
    flow_run_ids = [future.result() for future in submitted]
    return [find_variant_run(flow_run_id, tracking.experiment) for flow_run_id in flow_run_ids]
