"""Retrain summary: one Prefect markdown artifact per retrain, with links to the MLflow runs."""

from prefect import task
from prefect.artifacts import create_markdown_artifact

from cnn.data.dataset import DatasetRef
from tasks.retry import IO_RETRIES
from tracking.registry import ChampionRef, promotion_outcome
from tracking.runs import VariantRun, link_to_run
from tracking.store import tracking_uri

SUMMARY_KEY = "retrain-summary"
SHOWN_SCORES = ("accuracy", "sensitivity", "specificity", "roc_auc")


@task(name="summarize-retrain", **IO_RETRIES)
def summarize_retrain(
    dataset: DatasetRef,
    runs: list[VariantRun],
    champion_before: ChampionRef | None,
    champion_after: ChampionRef | None,
) -> str:
    """Leave the `retrain-summary` markdown artifact; return its markdown."""
    links = {run.run_id: link_to_run(tracking_uri(), run.run_id) for run in runs}
    markdown = retrain_markdown(dataset, runs, champion_before, champion_after, links)
    create_markdown_artifact(
        key=SUMMARY_KEY,
        markdown=markdown,
        description=f"Retrain on {dataset.name}: scores and the promotion decision",
    )
    return markdown


def retrain_markdown(
    dataset: DatasetRef,
    runs: list[VariantRun],
    champion_before: ChampionRef | None,
    champion_after: ChampionRef | None,
    links: dict[str, str],
) -> str:
    """The summary: dataset, each variant's test scores and alias, and the promotion outcome."""
    state = "reused (unchanged source)" if dataset.cache_hit else "written"
    counts = ", ".join(
        f"{split} {sum(per_label.values())}" for split, per_label in dataset.counts.items()
    )
    lines = [
        "## Retrain summary",
        "",
        f"**Dataset** `{dataset.name}`: {dataset.rows} images ({counts}), {state}; "
        f"{dataset.split_strategy} split. `{dataset.path}`",
        "",
        "| variant | " + " | ".join(f"test {name}" for name in SHOWN_SCORES) + " | alias | "
        "decision | MLflow run |",
        "|---|" + "---:|" * len(SHOWN_SCORES) + "---|---|---|",
    ]
    for run in runs:
        scores = " | ".join(_score(run.test_scores.get(name)) for name in SHOWN_SCORES)
        lines.append(
            f"| {run.variant} | {scores} | {run.alias or '–'} | {run.promotion_reason or '–'} "
            f"| {links.get(run.run_id, run.run_id)} |"
        )
    lines += ["", f"**Promotion**: {promotion_outcome(champion_before, champion_after)}"]
    return "\n".join(lines) + "\n"


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
