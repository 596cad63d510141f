"""Train flows: one `train-variant` flow run per CNN variant, each its own MLflow run."""

from contextlib import AbstractContextManager, nullcontext

from prefect import flow, tags
from prefect.runtime import flow_run

from cnn.config import (
    DEFAULT_VARIANTS,
    PromotionConfig,
    TrainConfig,
    VariantName,
    VariantNames,
    check_ensemble_size,
)
from cnn.models.ensembles import ENSEMBLE
from flows import names
from tasks.compare import compare_variants, log_parent_run
from tasks.ensemble import log_ensemble
from tasks.evaluate import evaluate_model
from tasks.fanout import find_variant_deployment, run_variant_deployment
from tasks.label_issues import dataset_without_label_issues
from tasks.registry import find_champion, promote_model
from tasks.report import render_report
from tasks.train import check_variant_downloads, train_model, variant_run, variant_run_of
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
    parent_run_id: str | None = None,
) -> VariantRun:
    """Train one variant on the dataset, evaluate it on the test split, register it, give it
    `champion` if it beats the current one (else `challenger`), and render its report; its
    MLflow run is nested under `parent_run_id` if given."""
    require_tracking_server()  # a worker's entry point: its process's MLflow client, set once
    dataset = training_dataset(dataset, training)
    tags = {"variant": variant, "dataset": dataset, **names.mlflow_tags()}
    with names.untagged_task_runs():
        with tracked_run(tracking.experiment, variant, tags, parent_run_id) as run_id:
            model = train_model(dataset, variant, training, run_id, tracking.registered_model)
            _evaluate_promote_report(model, dataset, variant, run_id, tracking, promotion)
        return variant_run(run_id)


@flow(name="train-ensemble", flow_run_name=names.train_ensemble_run_name, log_prints=True)
def train_ensemble(
    dataset: str,
    candidates: list[VariantRun],
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    promotion: PromotionConfig = PromotionConfig(),
    parent_run_id: str | None = None,
) -> VariantRun:
    """Average the best `training.ensemble` of the trained variants into one model, then
    evaluate, register, promote and report it as any variant."""
    tags = {"variant": ENSEMBLE, "dataset": dataset, **names.mlflow_tags()}
    with tracked_run(tracking.experiment, ENSEMBLE, tags, parent_run_id) as run_id:
        model = log_ensemble(dataset, candidates, training, run_id, tracking.registered_model)
        _evaluate_promote_report(model, dataset, ENSEMBLE, run_id, tracking, promotion)
    return variant_run(run_id)


def _evaluate_promote_report(
    model: TrainedModel,
    dataset: str,
    variant: str,
    run_id: str,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
) -> None:
    """Score a registered model on the test split, decide its alias, render its report."""
    scores = evaluate_model(model.model_uri, dataset, run_id, variant)
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
    parent_run_id: str | None = None,
) -> list[VariantRun]:
    """Train each variant as its own `train-variant` flow run, its MLflow run nested under one
    parent run that holds the dataset, the variants' comparison and the champion decision.

    Without a work pool they run here, one after another. With one, each is submitted to the
    pool's `train-variant` deployment at once, and this flow waits for all of them. With
    `training.ensemble` set, the best that many are then averaged into one more model.

    Args:
        dataset: Path of an ingested dataset (`malaria ingest` prints it).
        variants: CNN variants to train, one MLflow run each (`malaria variants` lists them).
        training: Epochs, schedule, augmentation, operating point, ensemble size, and
            whether to leave out the labels a label review flagged.
        tracking: MLflow experiment and registered model name.
        promotion: The score a new model must beat the champion's on, and by how much.
        work_pool: Run each variant on this work pool's workers (unset: here, in turn).
        parent_run_id: MLflow run to nest the variants' runs under (unset: a new one, named
            as this flow run).
    """
    require_tracking_server()
    check_ensemble_size(training.ensemble, variants)
    check_variant_downloads(list(variants), training)
    dataset = training_dataset(dataset, training)
    with parent_run(tracking, parent_run_id) as parent:
        champion_before = find_champion(tracking.registered_model)
        log_parent_run(parent, dataset, list(variants), training)
        runs = _train_variants(dataset, variants, training, tracking, promotion, work_pool, parent)
        if training.ensemble:
            runs.append(train_ensemble(dataset, runs, training, tracking, promotion, parent))
        compare_variants(parent, runs, champion_before, tracking.registered_model)
    return runs


def training_dataset(dataset: str, training: TrainConfig) -> str:
    """The dataset to train on: with `training.exclude_label_issues`, the one without the
    cells its label review flagged (`label-issues`)."""
    return dataset_without_label_issues(dataset) if training.exclude_label_issues else dataset


def parent_run(tracking: TrackingConfig, parent_run_id: str | None) -> AbstractContextManager[str]:
    """The MLflow run given, or a new top-level one named and tagged as this flow run."""
    if parent_run_id is not None:
        return nullcontext(parent_run_id)
    return tracked_run(tracking.experiment, flow_run.name, names.mlflow_tags())


def _train_variants(
    dataset: str,
    variants: list[str],
    training: TrainConfig,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
    work_pool: str | None,
    parent_run_id: str,
) -> list[VariantRun]:
    if work_pool is None:
        runs = []
        for variant in variants:
            with tags(*names.variant_tags(variant, dataset)):
                runs.append(
                    train_variant(dataset, variant, training, tracking, promotion, parent_run_id)
                )
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
                "parent_run_id": parent_run_id,
            },
        )
        for variant in variants
    ]
    flow_run_ids = [future.result() for future in submitted]
    return [variant_run_of(flow_run_id, tracking.experiment) for flow_run_id in flow_run_ids]
