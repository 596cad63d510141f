"""Model registry: load any model URI with a clear error, and champion/challenger promotion."""

import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import keras
import mlflow
import mlflow.keras
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from pydantic import BaseModel

from cnn.config import PromotionConfig
from cnn.dataset import open_dataset
from cnn.locks import exclusive_lock
from cnn.metrics import evaluate_predictions
from cnn.predict import predict_split
from cnn.promotion import CHAMPION, PromotionDecision, decide_promotion
from cnn.serving import threshold_of
from tasks.ingest import data_dir
from tasks.retry import IO_RETRIES
from tasks.tracking import ModelNotFoundError, check_model_uri, configure_tracking, first_line

LOADED_MODELS_KEPT = 2
PROMOTION_LOCK_SECONDS = 600
"""Longest wait for another run's promotion (re-scoring a champion takes seconds)."""
_loaded_models: OrderedDict[str, keras.Model] = OrderedDict()
_loaded_models_lock = threading.Lock()


def load_keras_model(model_uri: str) -> keras.Model:
    """Load a logged or registered Keras model; say plainly what is missing if it cannot be.

    Models behind immutable URIs (a logged model, a run's artifact, a registry version) are
    kept for the next task of this process: evaluation and the report load the same model,
    and each load took 2.4 s. An alias (`@champion`) can move, so it is loaded every time.
    """
    configure_tracking()
    check_model_uri(model_uri)
    immutable = _names_fixed_model(model_uri)
    with _loaded_models_lock:
        if immutable and model_uri in _loaded_models:
            _loaded_models.move_to_end(model_uri)
            return _loaded_models[model_uri]
    try:
        model = mlflow.keras.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise ModelNotFoundError(
            f"model {model_uri!r} cannot be loaded: {first_line(error)}"
        ) from error
    if immutable:
        with _loaded_models_lock:
            _loaded_models[model_uri] = model
            while len(_loaded_models) > LOADED_MODELS_KEPT:
                _loaded_models.popitem(last=False)
    return model


def model_threshold(model_uri: str) -> float:
    """The model's operating point on P(parasitized), from its MLmodel metadata (0.5 for
    models logged without one)."""
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata
    except (MlflowException, OSError) as error:
        raise ModelNotFoundError(
            f"model {model_uri!r} cannot be loaded: {first_line(error)}"
        ) from error
    return threshold_of(metadata)


def _names_fixed_model(model_uri: str) -> bool:
    """Whether the URI always names the same model: a logged model id, a run's artifact, or a
    registered version (not an alias, not `latest`)."""
    if model_uri.startswith(("models:/m-", "runs:/")):
        return True
    name_and_version = model_uri.removeprefix("models:/")
    return model_uri.startswith("models:/") and name_and_version.rpartition("/")[2].isdigit()


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
    test split (the champion is re-scored on it), else `challenger`; tag the decision and
    both scores on the version and its run.

    Runs promoting into the same registered model take turns (a lock in the data directory
    that all workers share), so two at once cannot both beat the same old champion and the
    worse one win the alias last.
    """
    logger = get_run_logger()
    configure_tracking()
    client = mlflow.MlflowClient()
    with exclusive_lock(promotion_lock_path(registered_model), PROMOTION_LOCK_SECONDS):
        champion = _current_champion(client, registered_model)
        champion_version = int(champion.version) if champion else None
        champion_score = None
        if champion is not None:
            champion_uri = f"models:/{registered_model}/{champion.version}"
            scores = predict_split(load_keras_model(champion_uri), open_dataset(dataset_path))
            evaluation = evaluate_predictions(
                scores.labels, scores.uninfected_probability, model_threshold(champion_uri)
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
    logger.info(
        "%s version %s → %s: %s", registered_model, version, decision.alias, decision.reason
    )
    return decision


def promotion_lock_path(registered_model: str) -> Path:
    """The lock that promotions into `registered_model` take turns on."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", registered_model)
    return data_dir().absolute() / "locks" / f"promote-{safe_name}.lock"


def _current_champion(client: mlflow.MlflowClient, registered_model: str):
    try:
        return client.get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None


def _text(value: float | int | None) -> str:
    return "none" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


class ChampionRef(BaseModel):
    """The registered model version that holds the `champion` alias."""

    model_uri: str
    version: int
    run_id: str | None


@task(name="find-champion", **IO_RETRIES)
def find_champion(registered_model: str) -> ChampionRef | None:
    """The current champion of `registered_model`, or None if no version holds the alias."""
    configure_tracking()
    champion = _current_champion(mlflow.MlflowClient(), registered_model)
    if champion is None:
        return None
    return ChampionRef(
        model_uri=f"models:/{registered_model}@{CHAMPION}",
        version=int(champion.version),
        run_id=champion.run_id,
    )
