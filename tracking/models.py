"""Models in MLflow: log one with its operating point, load one by any URI (kept for the next
task of the process), and what to do with a model MLflow would not take."""

import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo

from cnn.config import TrainConfig
from cnn.data.batches import SplitBatches
from cnn.data.dataset import Dataset
from cnn.errors import InputError
from cnn.io.storage import Location
from cnn.io.writes import writing
from cnn.serving import LOADER_MODULE, ServedModel, threshold_of
from cnn.settings import data_dir
from cnn.training.checkpoints import CheckpointStore
from cnn.training.train import OperatingPoint
from tracking.store import first_line

LOADED_MODELS_KEPT = 2
_loaded_models: OrderedDict[str, keras.Model] = OrderedDict()
_loaded_models_lock = threading.Lock()


class ModelNotFoundError(InputError, LookupError):
    """A model URI that names nothing loadable; the message says what was looked for."""


def check_model_uri(model_uri: str) -> None:
    """For `models:/NAME@ALIAS` and `models:/NAME/VERSION`: the name and the alias or version
    must exist (MLflow's own errors do not say which part is missing). Needs the tracking URI
    set (`configure_tracking`)."""
    if not model_uri.startswith("models:/") or model_uri.startswith("models:/m-"):
        return
    reference = model_uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    name, at, alias = reference.partition("@")
    name, _, version = name.partition("/")
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        raise ModelNotFoundError(f"no registered model named {name!r} ({model_uri})") from error
    try:
        if at:
            client.get_model_version_by_alias(name, alias)
        elif version:
            client.get_model_version(name, version)
    except MlflowException as error:
        what = f"alias {alias!r} is not set" if at else f"version {version} does not exist"
        raise ModelNotFoundError(
            f"registered model {name!r}: {what} ({model_uri}); train one with "
            "`malaria pipeline`, or name a version: models:/NAME/VERSION"
        ) from error


def load_keras_model(model_uri: str) -> keras.Model:
    """Load a logged or registered Keras model; say plainly what is missing if it cannot be.

    Models behind immutable URIs (a logged model, a run's artifact, a registry version) are
    kept for the next task of this process: evaluation and the report load the same model,
    and a load takes seconds. An alias (`@champion`) can move, so it is loaded every time.
    """
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


def model_metadata(model_uri: str) -> dict:
    """The model's MLmodel metadata: its operating point, temperature, validation error rates
    (empty for models logged without any)."""
    try:
        return mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError) as error:
        raise ModelNotFoundError(
            f"model {model_uri!r} cannot be loaded: {first_line(error)}"
        ) from error


def model_threshold(model_uri: str) -> float:
    """The model's operating point on P(parasitized), from its MLmodel metadata (0.5 for
    models logged without one)."""
    return threshold_of(model_metadata(model_uri))


def _names_fixed_model(model_uri: str) -> bool:
    """Whether the URI always names the same model: a logged model id, a run's artifact, or a
    registered version (not an alias, not `latest`)."""
    if model_uri.startswith(("models:/m-", "runs:/")):
        return True
    name_and_version = model_uri.removeprefix("models:/")
    return model_uri.startswith("models:/") and name_and_version.rpartition("/")[2].isdigit()


def validation_sample(dataset: Dataset, count: int = 8) -> np.ndarray:
    """The first `count` validation images: the logged model's input example, the previews."""
    images, _ = SplitBatches(dataset, "validation", batch_size=count)[0]
    return images


def log_served_model(
    sample: np.ndarray, point: OperatingPoint, config: TrainConfig, registered_model: str
) -> ModelInfo:
    """Log and register the operating point's model with its threshold, temperature and
    validation error rates (the model's metadata) to the active run, its signature and input
    example from `sample` (uint8 images); tag the run with where it went."""
    model, threshold = point.served, point.threshold
    mlflow.log_metrics(
        {
            "operating_threshold": threshold,
            "temperature": point.temperature or 1.0,
            "validation_sensitivity": point.sensitivity,
            "validation_specificity": point.specificity,
        }
    )
    with warnings.catch_warnings():  # the predicted label is an integer never missing
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(sample, ServedModel(model, threshold).predict(sample))
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=KerasFlavor(),
        model=model,
        signature=signature,
        input_example=sample[:1],
        registered_model_name=registered_model,
        pip_requirements=model_requirements(),
        metadata={
            **point.metadata(),
            "target_sensitivity": config.target_sensitivity,
            "test_time_augmentation": config.test_time_augmentation,
        },
    )
    mlflow.set_tags(
        {"model_uri": info.model_uri, "registered_version": info.registered_model_version}
    )
    return info


class ModelNotLoggedError(RuntimeError):
    """Training finished but the model could not be logged; the message says where it is."""


def keep_model(
    model: keras.Model | None, checkpoints: CheckpointStore | None, run_id: str
) -> Location | None:
    """Save the trained model beside its checkpoints (or under the data folder) and return
    where; without a model, where an earlier attempt kept it, if anywhere."""
    folder = checkpoints.root if checkpoints is not None else data_dir() / "unlogged" / run_id
    kept = folder / "model.keras"
    if model is None:
        return kept if kept.is_file() else None
    with tempfile.TemporaryDirectory(prefix="malaria-model-") as scratch:
        saved = Path(scratch) / "model.keras"  # Keras saves to a local file only
        with writing(saved):
            model.save(saved)
        kept.write_bytes(saved.read_bytes())
    return kept


class KerasFlavor:
    """`mlflow.keras` for `Model.log` with `cnn.serving` as the pyfunc loader, and the model
    directory made before the input example is written into it: mlflow 3.17.2's
    `mlflow.keras.save_model` writes the example first and fails with FileNotFoundError
    (`mlflow.keras.log_model(input_example=...)`)."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        """Save as `mlflow.keras` does, with `cnn.serving` as the `python_function` loader
        (labels at the threshold in the model's metadata)."""
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)
        model = kwargs["mlflow_model"]
        model.flavors["python_function"]["loader_module"] = LOADER_MODULE
        model.save(os.path.join(path, MLMODEL_FILE_NAME))


def model_requirements() -> list[str]:
    """What loading a logged model needs, pinned to this environment.

    Given explicitly because MLflow's own inference re-imports the model in a subprocess,
    which cost seconds of every training run.
    """
    backend = {"tensorflow": ("tensorflow-cpu", "tensorflow"), "jax": ("jax",)}.get(
        keras.backend.backend(), ()
    )
    requirements = []
    for names in (("mlflow",), ("keras",), ("numpy",), backend):
        for name in names:
            try:
                requirements.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return requirements
