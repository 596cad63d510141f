"""A flow's parent run: the dataset its variants trained and were tested on, their comparison
and the champion decision, so one row of the MLflow run list holds a whole pipeline."""

import time

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag

from cnn.config import TrainConfig
from cnn.data.dataset import Dataset
from tracking.registry import ChampionRef, promotion_outcome
from tracking.runs import VariantRun
from tracking.training import dataset_input, flatten_params, log_dataset_inputs

COMPARISON_TABLE = "comparison.json"
COMPARED_SCORES = ("accuracy", "sensitivity", "specificity", "roc_auc")


def log_parent_start(
    run_id: str, dataset: Dataset, variants: list[str], config: TrainConfig
) -> None:
    """The settings every child shares, the dataset as training input and its test split as
    evaluation input (through the client: the parent stays RUNNING while children train)."""
    client = mlflow.MlflowClient()
    params = {"variants": ",".join(variants), **flatten_params(config.model_dump())}
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    log_dataset_inputs(
        run_id,
        dataset_input(dataset, "training"),
        dataset_input(dataset, "evaluation", split="test"),
    )


def comparison_frame(runs: list[VariantRun]) -> pd.DataFrame:
    """One row per child run: its test scores, the alias it got and why."""
    return pd.DataFrame(
        [
            {
                "variant": run.variant,
                **{f"test_{name}": run.test_scores.get(name) for name in COMPARED_SCORES},
                "parameters": run.parameters,
                "epochs_run": run.epochs_run,
                "train_seconds": run.train_seconds,
                "alias": run.alias,
                "decision": run.promotion_reason,
                "run_id": run.run_id,
            }
            for run in runs
        ]
    )


def log_comparison(
    run_id: str,
    runs: list[VariantRun],
    champion_before: ChampionRef | None,
    champion_after: ChampionRef | None,
) -> pd.DataFrame:
    """The children compared (a table), the best child's scores as the parent's metrics, and
    the champion decision as tags; returns the table."""
    table = comparison_frame(runs)
    best = max(runs, key=lambda run: run.test_accuracy)
    outcome = promotion_outcome(champion_before, champion_after)
    tags = {"best_variant": best.variant, "best_run_id": best.run_id, "champion.outcome": outcome}
    if champion_after is not None:
        tags |= {"champion.version": str(champion_after.version)}
        tags |= {"champion.run_id": champion_after.run_id or ""}
    client = mlflow.MlflowClient()
    client.log_table(run_id, table, COMPARISON_TABLE)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"best_test_{name}", value, now, 0)
        for name in COMPARED_SCORES
        if (value := best.test_scores.get(name)) is not None
    ]
    client.log_batch(
        run_id, metrics=metrics, tags=[RunTag(key, value) for key, value in tags.items()]
    )
    return table


def log_evaluation_parent(run_id: str, dataset: Dataset, scores: dict) -> None:
    """An evaluation's parent run: the test split as its input, the scores as `test_*`."""
    log_dataset_inputs(run_id, dataset_input(dataset, "evaluation", split="test"))
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"test_{name}", float(value), now, 0)
        for name, value in scores.items()
        if isinstance(value, float)  # the scores and threshold, not the confusion counts
    ]
    mlflow.MlflowClient().log_batch(run_id, metrics=metrics)
