"""Registry tasks: champion/challenger promotion, and who holds `champion` now."""

from prefect import get_run_logger, task
from prefect.events import emit_event

from cnn.config import PromotionConfig
from cnn.evaluation.promotion import PromotionDecision
from cnn.settings import data_dir
from tasks.locks import data_locks
from tasks.retry import IO_RETRIES
from tracking.registry import ChampionRef, find_champion_version, promote

PROMOTED_EVENT = "malaria.model.promoted"
"""The Prefect event of a model version taking the `champion` alias (`app.alerts` notifies)."""


@task(name="promote-model", **IO_RETRIES)
def promote_model(
    registered_model: str,
    version: int,
    dataset_path: str,
    candidate_scores: dict[str, float],
    run_id: str,
    config: PromotionConfig,
) -> PromotionDecision:
    """Give the new version `champion` if it beats the current champion on this dataset's
    test split, else `challenger` (see `tracking.registry.promote`); a new champion is a
    `malaria.model.promoted` event that server automations can notify on."""
    locks = data_locks(data_dir())
    decision = promote(
        registered_model, version, dataset_path, candidate_scores, run_id, config, locks
    )
    get_run_logger().info(
        "%s version %s → %s: %s", registered_model, version, decision.alias, decision.reason
    )
    if decision.promoted:
        emit_event(
            event=PROMOTED_EVENT,
            resource={
                "prefect.resource.id": f"malaria.model.{registered_model}",
                "prefect.resource.name": registered_model,
            },
            payload={"version": version, "run_id": run_id, "reason": decision.reason},
        )
    return decision


@task(name="find-champion", **IO_RETRIES)
def find_champion(registered_model: str) -> ChampionRef | None:
    """The current champion of `registered_model`, or None if no version holds the alias."""
    return find_champion_version(registered_model)
