"""Keras callbacks that a checkpoint resumes: early stopping and the plateau schedule with
their counters, and the callback that writes a `TrainingState` after every epoch."""

import keras
import numpy as np

from cnn.training.checkpoints import CheckpointStore, TrainingState


class ResumableCounters:
    """Mixin: a Keras callback whose counters can be read out and restored after a resume."""

    COUNTERS: tuple[str, ...] = ()
    restored: dict[str, float | None] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # resets the counters
        for name, value in (self.restored or {}).items():
            setattr(self, name, value)

    def counters(self) -> dict[str, float | None]:
        values = {name: getattr(self, name) for name in self.COUNTERS}
        return {name: None if value is None else float(value) for name, value in values.items()}


class ResumableEarlyStopping(ResumableCounters, keras.callbacks.EarlyStopping):
    COUNTERS = ("wait", "best", "best_epoch")
    restored_best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.restored is not None:
            self.wait, self.best_epoch = int(self.wait), int(self.best_epoch)
            self.best_weights = self.restored_best_weights or None


class ResumableSwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras' swap of the averaged weights into the model from each epoch's end (so that
    validation, the best epoch and the checkpoint see them), resumable: a checkpoint written
    at an epoch's end holds the averaged weights in the model and the raw ones in the
    optimizer's average, so a training resumed from one swaps them back first."""

    def __init__(self, resumed: bool = False) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed  # Keras' own flag: swap back on epoch begin


class ResumableReduceLROnPlateau(ResumableCounters, keras.callbacks.ReduceLROnPlateau):
    COUNTERS = ("wait", "best", "cooldown_counter")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a `TrainingState` at the end of every epoch (after early stopping has decided)."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        phase: int,
        phase_start: int,
        phase_end: int,
        history: dict[str, list[float]],
        early_stopping: ResumableEarlyStopping,
        schedule: list[ResumableReduceLROnPlateau],
        head_best: float | None = None,
        head_weights: list[np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._phase, self._phase_start, self._phase_end = phase, phase_start, phase_end
        self._history = {name: list(values) for name, values in history.items()}
        self._early_stopping, self._schedule = early_stopping, schedule
        self._head_best, self._head_weights = head_best, head_weights or []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            self._history.setdefault(name, []).append(float(value))
        callbacks = {"early_stopping": self._early_stopping.counters()}
        if self._schedule:
            callbacks["reduce_lr"] = self._schedule[0].counters()
        self._store.save(
            TrainingState(
                phase=self._phase,
                phase_start=self._phase_start,
                history=self._history,
                phase_finished=bool(self.model.stop_training) or epoch + 1 >= self._phase_end,
                callbacks=callbacks,
                head_best=self._head_best,
                weights=self.model.get_weights(),
                optimizer=[np.asarray(variable) for variable in self.model.optimizer.variables],
                best_weights=self._early_stopping.best_weights or [],
                head_weights=self._head_weights,
            )
        )


def restore_callbacks(
    trainer: keras.Model,
    state: TrainingState,
    early_stopping: ResumableEarlyStopping,
    schedule: list[ResumableReduceLROnPlateau],
) -> None:
    """Put a checkpoint's weights, optimizer variables and callback counters back."""
    trainer.set_weights(state.weights)
    trainer.optimizer.build(trainer.trainable_variables)
    for variable, value in zip(trainer.optimizer.variables, state.optimizer, strict=True):
        variable.assign(value)
    early_stopping.restored = state.callbacks["early_stopping"]
    early_stopping.restored_best_weights = state.best_weights
    if schedule and "reduce_lr" in state.callbacks:
        schedule[0].restored = state.callbacks["reduce_lr"]
