"""Training and scoring helpers: the lecture's recipe (Adam, binary cross-entropy, early stop)."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from cnn.augmentation import build_augmenter, with_augmentation
from cnn.batches import SplitBatches
from cnn.config import TrainConfig
from cnn.dataset import Dataset
from cnn.models import build_model


@dataclass
class TrainingResult:
    """A trained model (best weights restored) and how training went."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    seconds: float


PREDICT_BATCH = 256

EpochReport = Callable[[int, dict[str, float]], None]
"""Receives the 1-based epoch number and that epoch's metrics (loss, accuracy, val_…)."""


class EpochReporter(keras.callbacks.Callback):
    """Hands each finished epoch's metrics to a reporting function (a logger, a tracker)."""

    def __init__(self, report: EpochReport) -> None:
        super().__init__()
        self._report = report

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._report(epoch + 1, {name: float(value) for name, value in (logs or {}).items()})


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_on_dataset(
    dataset: Dataset,
    variant: str,
    config: TrainConfig,
    on_epoch_end: EpochReport | None = None,
    verbose: int = 0,
) -> TrainingResult:
    """Train `variant` on the dataset's train split, validating on its validation split.

    Augmentation (if on) wraps the model only while it trains; the returned model is the
    bare one, with the best weights (early stopping on val_loss) restored.
    """
    keras.utils.set_random_seed(config.seed)
    train_batches = SplitBatches(
        dataset, "train", config.batch_size, shuffle=True, seed=config.seed
    )
    validation_batches = SplitBatches(dataset, "validation", PREDICT_BATCH)
    options = config.variant_options.get(variant, {})
    model = build_model(variant, dataset.image_shape, **options)
    augmenter = build_augmenter(config.augmentation, seed=config.seed)
    trainer = compile_model(with_augmentation(model, augmenter), config.learning_rate)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    started = time.perf_counter()
    history = trainer.fit(
        train_batches,
        validation_data=validation_batches,
        epochs=config.epochs,
        callbacks=[early_stopping] + ([EpochReporter(on_epoch_end)] if on_epoch_end else []),
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    losses = history.history["val_loss"]
    return TrainingResult(
        model=model,
        history={name: [float(v) for v in values] for name, values in history.history.items()},
        epochs_run=len(losses),
        best_epoch=int(np.argmin(losses)) + 1,
        seconds=seconds,
    )


def predict_uninfected_probability(
    model: keras.Model, images: np.ndarray | SplitBatches, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """Sigmoid outputs (probability of label 1, uninfected) for uint8 images or batches."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    if isinstance(images, SplitBatches):
        return np.asarray(model.predict(images, verbose=0)).reshape(-1)
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).reshape(-1)
