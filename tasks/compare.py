"""Parent-run tasks: what a flow's variants share, then their comparison and the champion."""

from prefect import task
from prefect.artifacts import create_table_artifact

from cnn.config import TrainConfig
from cnn.data.dataset import open_dataset
from tasks.retry import IO_RETRIES
from tracking import parents
from tracking.registry import ChampionRef, find_champion_version, promotion_outcome
from tracking.runs import VariantRun, link_to_run
from tracking.store import tracking_uri

COMPARISON_KEY = "variant-comparison"


@task(name="log-parent-run", **IO_RETRIES)
def log_parent_run(
    run_id: str, dataset_path: str, variants: list[str], config: TrainConfig
) -> None:
    """The parent run's settings, training input (the dataset) and evaluation input (its
    test split)."""
    parents.log_parent_start(run_id, open_dataset(dataset_path), variants, config)


@task(name="compare-variants", **IO_RETRIES)
def compare_variants(
    run_id: str,
    runs: list[VariantRun],
    champion_before: ChampionRef | None,
    registered_model: str,
) -> ChampionRef | None:
    """Log the variants' comparison and the champion decision on the parent run, leave them
    as the `variant-comparison` table artifact; return the champion now."""
    champion_after = find_champion_version(registered_model)
    table = parents.log_comparison(run_id, runs, champion_before, champion_after)
    create_table_artifact(
        key=COMPARISON_KEY,
        table=table.astype(object).where(table.notna(), None).to_dict(orient="records"),
        description=f"Variants of MLflow run {link_to_run(tracking_uri(), run_id)}: "
        f"{promotion_outcome(champion_before, champion_after)}",
    )
    return champion_after


@task(name="log-evaluation-parent", **IO_RETRIES)
def log_evaluation_parent(run_id: str, dataset_path: str, scores: dict) -> None:
    """The evaluate flow's parent run: the test split as evaluation input, its child's scores."""
    parents.log_evaluation_parent(run_id, open_dataset(dataset_path), scores)
