"""The model registry: who holds `champion`, and promotion with its decision recorded."""

import time

import mlflow
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from cnn.config import PromotionConfig
from cnn.data.dataset import open_dataset
from cnn.evaluation.promotion import CHAMPION, PromotionDecision, decide_promotion
from cnn.evaluation.scoring import evaluate_split
from cnn.io.locks import Locks
from tracking.models import load_keras_model, model_threshold

PROMOTION_LOCK_SECONDS = 600
"""Longest wait for another run's promotion (re-scoring a champion takes seconds)."""


class ChampionRef(BaseModel):
    """The registered model version that holds the `champion` alias."""

    model_uri: str
    version: int
    run_id: str | None


def find_champion_version(registered_model: str) -> ChampionRef | None:
    """The current champion of `registered_model`, or None if no version holds the alias."""
    champion = _current_champion(mlflow.MlflowClient(), registered_model)
    if champion is None:
        return None
    return ChampionRef(
        model_uri=f"models:/{registered_model}@{CHAMPION}",
        version=int(champion.version),
        run_id=champion.run_id,
    )


def promote(
    registered_model: str,
    version: int,
    dataset_path: str,
    candidate_scores: dict[str, float],
    run_id: str,
    config: PromotionConfig,
    locks: Locks,
) -> PromotionDecision:
    """Give the new version `champion` if it beats the current champion on this dataset's
    test split (the champion is re-scored on it at its own threshold), else `challenger`;
    tag the decision and both scores on the version and its run.

    Runs promoting into the same registered model take turns (on its lock from `locks`, which
    all workers share), so two at once cannot both beat the same old champion and the worse
    one win the alias last.
    """
    client = mlflow.MlflowClient()
    with locks(f"promote-{registered_model}", PROMOTION_LOCK_SECONDS):
        champion = _current_champion(client, registered_model)
        champion_version = int(champion.version) if champion else None
        champion_score = None
        if champion is not None:
            champion_uri = f"models:/{registered_model}/{champion.version}"
            evaluation = evaluate_split(
                load_keras_model(champion_uri),
                open_dataset(dataset_path),
                model_threshold(champion_uri),
            )
            champion_score = evaluation.scores().get(config.metric)
        decision = decide_promotion(
            candidate_scores.get(config.metric), champion_version, champion_score, config
        )
        client.set_registered_model_alias(registered_model, decision.alias, str(version))
        decided_at = time.time()
    tags = {
        "promotion.alias": decision.alias,
        "promotion.metric": decision.metric,
        "promotion.candidate_score": _text(decision.candidate_score),
        "promotion.champion_score": _text(decision.champion_score),
        "promotion.champion_version": _text(decision.champion_version),
        "promotion.reason": decision.reason,
        "promotion.decided_at": f"{decided_at:.3f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, str(version), key, value)
        client.set_tag(run_id, key, value)
    return decision


def promotion_outcome(before: ChampionRef | None, after: ChampionRef | None) -> str:
    """One sentence: did `champion` move, and from which version to which."""
    if after is None:
        return "no champion (no model could be scored)"
    if before is None:
        return f"version {after.version} is the first champion"
    if before.version != after.version:
        return f"champion moved from version {before.version} to version {after.version}"
    return f"champion stays version {after.version}: no new model beat it"


def promoted(before: ChampionRef | None, after: ChampionRef | None) -> bool:
    return after is not None and (before is None or before.version != after.version)


def _current_champion(client: mlflow.MlflowClient, registered_model: str):
    try:
        return client.get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None


def _text(value: float | int | None) -> str:
    return "none" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
