"""Training one model: AdamW on a warm-up + cosine schedule with binary cross-entropy, the
lowest-val_loss epoch kept, augmentation around the model while it trains, an optional
fine-tuning phase, and the operating point chosen on validation."""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cnn.config import PREDICT_BATCH, TrainConfig
from cnn.data.batches import SplitBatches
from cnn.data.dataset import Dataset, load_split
from cnn.evaluation.operating_point import choose_on_validation
from cnn.evaluation.scoring import predict_split
from cnn.models.augmentation import named_augmenter, serving_model, with_augmentation
from cnn.models.variants import build_model, unfreeze_top_layers
from cnn.progress import Progress
from cnn.training.checkpoints import CheckpointStore, TrainingState
from cnn.training.devices import devices_of_kind, replicated, training_devices
from cnn.training.resumable import (
    EpochCheckpoint,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    ResumableSwapEMAWeights,
    restore_callbacks,
)


@dataclass
class TrainingResult:
    """A trained model (best weights restored) and how training went."""

    model: keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    seconds: float
    batch_size: int
    """The global batch: images per step over all devices."""
    device: str
    operating_point: "OperatingPoint"
    """The model to register and how it decides (chosen on the validation split)."""
    devices: int = 1
    """How many devices trained one replica each."""
    fine_tuned_layers: int = 0
    resumed_epochs: int = 0
    """Epochs taken from a checkpoint rather than trained in this call."""


@dataclass(frozen=True)
class OperatingPoint:
    """A model to register and how it decides, all from the validation split: its threshold
    on (calibrated) P(parasitized), the temperature that calibrates it, and its sensitivity
    and specificity there at that threshold (what a per-patient parasitemia corrects for)."""

    served: keras.Model
    threshold: float
    temperature: float | None
    sensitivity: float
    specificity: float

    def metadata(self) -> dict[str, float | None]:
        """What the registered model's metadata records of it."""
        return {
            "threshold": self.threshold,
            "temperature": self.temperature,
            "validation_sensitivity": self.sensitivity,
            "validation_specificity": self.specificity,
        }


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


class BatchProgress(keras.callbacks.Callback):
    """Tells `report` after every batch the share of the training's epochs done."""

    def __init__(self, report: Progress, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self._report, self._epochs, self._steps = report, epochs, max(steps_per_epoch, 1)
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._report(min(1.0, (self._epoch + (batch + 1) / self._steps) / self._epochs))


def gpu_present() -> bool:
    """Whether the Keras backend sees a GPU."""
    return bool(devices_of_kind("gpu"))


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


def learning_rate_schedule(
    config: TrainConfig, peak: float, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The configured rate: constant, or a linear warm-up to `peak` then cosine decay to zero
    by the last epoch (the rate follows the optimizer's step count, so a resumed training
    continues on the same curve)."""
    if config.schedule == "constant":
        return peak
    warmup = min(config.warmup_epochs, config.epochs - 1) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(1, config.epochs * steps_per_epoch - warmup),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, peak: float, steps_per_epoch: int):
    """AdamW (decoupled weight decay) on the configured schedule; Adam without decay; either
    keeping a moving average of the weights when `config.ema_momentum` is set."""
    rate = learning_rate_schedule(config, peak, steps_per_epoch)
    averaging = {"use_ema": True, "ema_momentum": config.ema_momentum}
    options = averaging if config.ema_momentum else {}
    if config.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, **options)
    return keras.optimizers.Adam(rate, **options)


def compile_model(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, label_smoothing: float = 0.0
) -> keras.Model:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    return model


def fit_variant(
    dataset: Dataset,
    variant: str,
    config: TrainConfig,
    on_epoch_end: EpochReport | None = None,
    on_progress: Progress | None = None,
    verbose: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoints: CheckpointStore | None = None,
) -> TrainingResult:
    """Train `variant` on the dataset's train split, validating on its validation split.

    Augmentation (if on) wraps the model only while it trains; the returned model is the
    bare one, with the weights of its lowest-val_loss epoch restored, beside the model to
    serve (test-time augmentation) and its threshold chosen on validation. A model with a
    pretrained backbone and `fine_tune_layers` trains twice: the new head on the frozen
    backbone, then with the backbone's top layers unfrozen at a tenth of the learning rate
    (each phase up to `epochs`); the second phase is kept only if it lowers val_loss.

    On several devices (`config.devices`, or every GPU visible) one replica trains on each,
    `batch_size` images a replica a step, at the peak rate times the replicas
    (`cnn.training.devices`).

    With `checkpoints`, every epoch ends with a checkpoint there, and training starts from
    the newest one found (`TrainingResult.resumed_epochs` says how many epochs it skipped).
    `on_progress` hears the share of the epochs done after every batch (of both phases with
    fine-tuning; early stopping ends it short of 1.0).
    """
    devices = training_devices(config.devices)
    with replicated(devices):  # one replica a device; nothing changes for one
        keras.utils.set_random_seed(config.seed)
        on_gpu = gpu_present()
        batch_size = training_batch_size(config, on_gpu) * len(devices)  # the global batch
        with dtype_policy(config.mixed_precision):
            model = build_model(
                variant, dataset.image_shape, **config.variant_options.get(variant, {})
            )
            augmenter = named_augmenter(config.augment, seed=config.seed)
        steps_per_epoch = -(-_split_rows(dataset, "train") // batch_size)
        reporters = [EpochReporter(on_epoch_end)] if on_epoch_end else []
        if on_progress is not None:
            phase_count = 2 if config.fine_tune_layers else 1
            reporters.append(
                BatchProgress(on_progress, config.epochs * phase_count, steps_per_epoch)
            )
        phases = _Phases(
            model=model,
            trainer_of=lambda: with_augmentation(model, augmenter),
            config=config,
            learning_rate=config.learning_rate * len(devices),  # the linear scaling rule
            inputs=fit_inputs(dataset, batch_size, config),
            steps_per_epoch=steps_per_epoch,
            checkpoints=checkpoints,
            resumed=checkpoints.latest() if checkpoints else None,
            callbacks=[*reporters, *callbacks],
            verbose=verbose,
        )
        started = time.perf_counter()
        history, head = _train_head(phases)
        fine_tuned_layers = unfreeze_top_layers(model, config.fine_tune_layers)
        if fine_tuned_layers:
            history = _fine_tune(phases, history, head)
        seconds = time.perf_counter() - started
        losses = history["val_loss"]
        return TrainingResult(
            operating_point=operating_point(model, dataset, config, config.test_time_augmentation),
            model=model,
            history=history,
            epochs_run=len(losses),
            best_epoch=int(np.argmin(losses)) + 1,
            seconds=seconds,
            batch_size=batch_size,
            device="gpu" if on_gpu else "cpu",
            devices=len(devices),
            fine_tuned_layers=fine_tuned_layers,
            resumed_epochs=phases.resumed.epochs_done if phases.resumed is not None else 0,
        )


HEAD, FINE_TUNE = 0, 1
"""The phases of a training (as checkpoints record them): the whole model (a new head on a
frozen backbone), then, with `fine_tune_layers`, the backbone's top unfrozen."""


@dataclass(frozen=True)
class _HeadResult:
    """Where the first phase ended: what fine-tuning starts from and must beat."""

    epochs: int
    best_loss: float
    weights: list[np.ndarray]


@dataclass
class _Phases:
    """What the phases of one training share: the model, its input, the settings, the
    checkpoint store and the checkpoint it resumes from."""

    model: keras.Model
    trainer_of: Callable[[], keras.Model]
    """The model as it trains (inside its augmentation layers)."""
    config: TrainConfig
    learning_rate: float
    """The head's peak rate (fine-tuning takes a tenth of it)."""
    inputs: dict[str, Any]
    steps_per_epoch: int
    checkpoints: CheckpointStore | None
    resumed: TrainingState | None
    callbacks: list[keras.callbacks.Callback]
    verbose: int

    def fit(
        self, phase: int, learning_rate: float, phase_start: int, history: dict, **carried
    ) -> dict:
        """Run (or finish a resumed) phase from `history`'s end; return the whole history."""
        config = self.config
        optimizer = make_optimizer(config, learning_rate, self.steps_per_epoch)
        trainer = compile_model(self.trainer_of(), optimizer, config.label_smoothing)
        early_stopping = ResumableEarlyStopping(
            monitor="val_loss",
            patience=config.epochs if config.patience is None else config.patience,
            restore_best_weights=True,
        )
        schedule = []
        if config.reduce_lr_patience is not None:
            schedule.append(
                ResumableReduceLROnPlateau(
                    monitor="val_loss", factor=LR_REDUCTION, patience=config.reduce_lr_patience
                )
            )
        state = self.resumed if self.resumed is not None and self.resumed.phase == phase else None
        if state is not None:
            restore_callbacks(trainer, state, early_stopping, schedule)
            if state.phase_finished:
                trainer.set_weights(state.best_weights or state.weights)
                return state.history
        saving = []
        if self.checkpoints is not None:
            saving.append(
                EpochCheckpoint(
                    self.checkpoints,
                    phase=phase,
                    phase_start=phase_start,
                    phase_end=phase_start + config.epochs,
                    history=history,
                    early_stopping=early_stopping,
                    schedule=schedule,
                    **carried,
                )
            )
        # the averaged weights in the model from each epoch's end: validated, kept, saved
        resumed = state is not None
        averaged = [ResumableSwapEMAWeights(resumed)] if config.ema_momentum else []
        fitted = trainer.fit(
            **self.inputs,
            initial_epoch=len(history.get("loss", [])),
            epochs=phase_start + config.epochs,
            callbacks=[*averaged, early_stopping, *schedule, *saving, *self.callbacks],
            verbose=self.verbose,
        )
        return _joined(history, fitted.history)


def _train_head(phases: _Phases) -> tuple[dict, _HeadResult]:
    """The first phase (skipped when the checkpoint resumed is already fine-tuning)."""
    resumed = phases.resumed
    if resumed is not None and resumed.phase == FINE_TUNE:
        head = _HeadResult(resumed.phase_start, resumed.head_best, resumed.head_weights)
        return resumed.history, head
    history = phases.fit(HEAD, phases.learning_rate, 0, resumed.history if resumed else {})
    return history, _HeadResult(
        len(history["val_loss"]), min(history["val_loss"]), phases.model.get_weights()
    )


def _fine_tune(phases: _Phases, history: dict, head: _HeadResult) -> dict:
    """The second phase at a tenth of the learning rate; its weights are kept only if it
    lowers val_loss below the first phase's best."""
    history = phases.fit(
        FINE_TUNE,
        phases.learning_rate * FINE_TUNE_LR_FACTOR,
        head.epochs,
        history,
        head_best=head.best_loss,
        head_weights=head.weights,
    )
    if min(history["val_loss"][head.epochs :]) >= head.best_loss:
        phases.model.set_weights(head.weights)
    return history


def _joined(before: dict[str, list[float]], after: dict[str, list]) -> dict[str, list[float]]:
    names = dict.fromkeys([*before, *after])
    return {
        name: [*before.get(name, []), *(float(v) for v in after.get(name, []))] for name in names
    }


def fit_inputs(dataset: Dataset, batch_size: int, config: TrainConfig) -> dict[str, Any]:
    """The train and validation data as `Model.fit` arguments.

    Splits that together fit `config.in_memory_limit_mb` are loaded as uint8 arrays: Keras'
    own array input (shuffled each epoch) trained `resnet` at 107 images/s on 2 cores where
    streamed batches made 66. The labels stay int8 as stored: with float32 labels the same
    array input trained far slower (docs/benchmarks.md). Larger splits stream from Parquet in
    bounded memory.
    """
    rows = _split_rows(dataset, "train") + _split_rows(dataset, "validation")
    if rows * int(np.prod(dataset.image_shape)) <= config.in_memory_limit_mb * MIB:
        images, labels = load_split(dataset, "train")
        return {
            "x": images,
            "y": labels,
            "batch_size": batch_size,
            "shuffle": True,
            "validation_data": load_split(dataset, "validation"),
            "validation_batch_size": PREDICT_BATCH,
        }
    return {
        "x": SplitBatches(dataset, "train", batch_size, shuffle=True, seed=config.seed),
        "validation_data": SplitBatches(dataset, "validation", PREDICT_BATCH),
    }


def operating_point(
    network: keras.Model, dataset: Dataset, config: TrainConfig, test_time_augmentation: bool
) -> OperatingPoint:
    """The model to register (`network`, with test-time augmentation if asked, calibrated by
    a temperature fitted on the validation split when `config.calibrate`), its threshold for
    `config.target_sensitivity` on the calibrated validation scores (`DEFAULT_THRESHOLD`
    when no target is set), and its validation sensitivity and specificity there."""
    validation = predict_split(
        serving_model(network, test_time_augmentation), dataset, "validation"
    )
    choice = choose_on_validation(
        validation.labels,
        validation.parasitized_probability,
        config.calibrate,
        config.target_sensitivity,
    )
    return OperatingPoint(
        served=serving_model(network, test_time_augmentation, choice.temperature),
        threshold=choice.threshold,
        temperature=choice.temperature,
        sensitivity=choice.sensitivity,
        specificity=choice.specificity,
    )


def _split_rows(dataset: Dataset, split: str) -> int:
    return sum(dataset.manifest.counts[split].values())
