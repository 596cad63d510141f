"""Training and scoring helpers: the lecture's recipe (Adam, binary cross-entropy, early stop)."""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cnn.augmentation import build_augmenter, with_augmentation
from cnn.batches import SplitBatches
from cnn.config import TrainConfig
from cnn.dataset import Dataset, load_split
from cnn.models import build_model, unfreeze_top_layers


@dataclass
class TrainingResult:
    """A trained model (best weights restored) and how training went."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    seconds: float
    batch_size: int
    device: str
    fine_tuned_layers: int = 0


PREDICT_BATCH = 256
LR_REDUCTION = 0.2
FINE_TUNE_LR_FACTOR = 0.1

MIB = 2**20

EpochReport = Callable[[int, dict[str, float]], None]
"""Receives the 1-based epoch number and that epoch's metrics (loss, accuracy, val_…)."""


class EpochReporter(keras.callbacks.Callback):
    """Hands each finished epoch's metrics to a reporting function (a logger, a tracker)."""

    def __init__(self, report: EpochReport) -> None:
        super().__init__()
        self._report = report

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._report(epoch + 1, {name: float(value) for name, value in (logs or {}).items()})


def gpu_present() -> bool:
    """Whether the Keras backend sees a GPU."""
    return bool(keras.distribution.list_devices("gpu"))


def training_batch_size(config: TrainConfig, on_gpu: bool) -> int:
    """`gpu_batch_size` on a GPU when set, else `batch_size`."""
    return config.gpu_batch_size if on_gpu and config.gpu_batch_size else config.batch_size


@contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Layers built inside compute in float16 (weights float32) when `mixed_precision`."""
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainingResult:
    """Train `variant` on the dataset's train split, validating on its validation split.

    Augmentation (if on) wraps the model only while it trains; the returned model is the
    bare one, with the best weights (early stopping on val_loss) restored. A model with a
    pretrained backbone and `fine_tune_layers` trains twice: the new head on the frozen
    backbone, then with the backbone's top layers unfrozen at a tenth of the learning rate
    (each phase up to `epochs`); the second phase is kept only if it lowers val_loss.
    """
    keras.utils.set_random_seed(config.seed)
    on_gpu = gpu_present()
    batch_size = training_batch_size(config, on_gpu)
    inputs = fit_inputs(dataset, batch_size, config)
    options = config.variant_options.get(variant, {})
    with dtype_policy(config.mixed_precision):
        model = build_model(variant, dataset.image_shape, **options)
        augmenter = build_augmenter(config.augmentation, seed=config.seed)
    callbacks = [*([EpochReporter(on_epoch_end)] if on_epoch_end else []), *callbacks]

    def fit(learning_rate: float, initial_epoch: int) -> dict[str, list[float]]:
        trainer = compile_model(with_augmentation(model, augmenter), learning_rate)
        schedule = []
        if config.reduce_lr_patience is not None:
            schedule.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=LR_REDUCTION, patience=config.reduce_lr_patience
                )
            )
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
        history = trainer.fit(
            **inputs,
            initial_epoch=initial_epoch,
            epochs=initial_epoch + config.epochs,
            callbacks=[early_stopping, *schedule, *callbacks],
            verbose=verbose,
        )
        return {name: [float(v) for v in values] for name, values in history.history.items()}

    started = time.perf_counter()
    history = fit(config.learning_rate, initial_epoch=0)
    head_weights, head_best = model.get_weights(), min(history["val_loss"])
    fine_tuned_layers = unfreeze_top_layers(model, config.fine_tune_layers)
    if fine_tuned_layers:
        tuned = fit(config.learning_rate * FINE_TUNE_LR_FACTOR, len(history["val_loss"]))
        history = {name: history.get(name, []) + tuned.get(name, []) for name in history}
        if min(tuned["val_loss"]) >= head_best:
            model.set_weights(head_weights)
    seconds = time.perf_counter() - started
    losses = history["val_loss"]
    return TrainingResult(
        model=model,
        history=history,
        epochs_run=len(losses),
        best_epoch=int(np.argmin(losses)) + 1,
        seconds=seconds,
        batch_size=batch_size,
        device="gpu" if on_gpu else "cpu",
        fine_tuned_layers=fine_tuned_layers,
    )


def fit_inputs(dataset: Dataset, batch_size: int, config: TrainConfig) -> dict[str, Any]:
    """The train and validation data as `Model.fit` arguments.

    Splits that together fit `config.in_memory_limit_mb` are loaded as uint8 arrays: Keras'
    own array input (shuffled each epoch) trained `resnet` at 107 images/s on 2 cores where
    streamed batches made 66. Larger splits stream from Parquet in bounded memory.
    """
    counts = dataset.manifest["counts"]
    rows = sum(sum(counts[split].values()) for split in ("train", "validation"))
    if rows * int(np.prod(dataset.image_shape)) <= config.in_memory_limit_mb * MIB:
        images, labels = load_split(dataset, "train")
        return {
            "x": images,
            "y": labels.astype(np.float32),
            "batch_size": batch_size,
            "shuffle": True,
            "validation_data": load_split(dataset, "validation"),
            "validation_batch_size": PREDICT_BATCH,
        }
    return {
        "x": SplitBatches(dataset, "train", batch_size, shuffle=True, seed=config.seed),
        "validation_data": SplitBatches(dataset, "validation", PREDICT_BATCH),
    }


def predict_uninfected_probability(
    model: keras.Model, images: np.ndarray | SplitBatches, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """Sigmoid outputs (probability of label 1, uninfected) for uint8 images or batches."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    if isinstance(images, SplitBatches):
        return np.asarray(model.predict(images, verbose=0)).reshape(-1)
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).reshape(-1)
