"""The served model's decision rule, and its MLflow `python_function` loader.

A registered model is a Keras model of P(uninfected) plus an operating point: the threshold on
P(parasitized) chosen on validation, kept as `threshold` in the MLmodel file's metadata, so
`mlflow.pyfunc.load_model` users get labels at that point with no code of theirs
(`_load_pyfunc` is the loader MLflow calls; this module imports no MLflow).
Importing it registers the custom layers a saved model may hold.
"""

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml

from cnn.evaluation.metrics import DEFAULT_THRESHOLD, predicted_labels
from cnn.evaluation.scoring import in_batches, parasitized_probability
from cnn.labels import LABEL_NAMES
from cnn.models import augmentation, variants  # noqa: F401  (importing them registers the custom layers)

KERAS_FILE = Path("data") / "model.keras"
"""Where `mlflow.keras.save_model` puts the Keras model inside an MLflow model directory."""
LOADER_MODULE = __name__
"""What the model's `python_function` flavour names as its loader."""


def threshold_of(metadata: dict | None) -> float:
    """The threshold in a model's metadata; 0.5 for models logged without one."""
    return float((metadata or {}).get("threshold", DEFAULT_THRESHOLD))


class ServedModel:
    """What `mlflow.pyfunc.load_model` returns: uint8 images (N × H × W × 3) in, one row per
    image out (P(parasitized), predicted label and name at the model's threshold)."""

    def __init__(self, model: keras.Model, threshold: float) -> None:
        self.model, self.threshold = model, threshold

    def predict(self, data, params: dict | None = None) -> pd.DataFrame:
        images = np.asarray(data.values if isinstance(data, pd.DataFrame) else data)
        parasitized = parasitized_probability(self.model, in_batches(images))
        labels = predicted_labels(parasitized, self.threshold)
        return pd.DataFrame(
            {
                "parasitized_probability": parasitized,
                "predicted_label": labels,
                "predicted_name": [LABEL_NAMES[label] for label in labels],
            }
        )


def _load_pyfunc(path: str) -> ServedModel:
    """MLflow's `python_function` entry point: `path` is the MLflow model directory."""
    metadata = yaml.safe_load((Path(path) / "MLmodel").read_text()).get("metadata")
    return ServedModel(keras.saving.load_model(Path(path) / KERAS_FILE), threshold_of(metadata))
