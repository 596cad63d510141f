"""Per-epoch checkpoints: an interrupted training resumes at the next epoch, not at epoch 1."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from cnn.config import IngestConfig, TrainConfig
from cnn.ingest.build import build_dataset
from cnn.io.storage import location
from cnn.sources.specs import SyntheticSource
from cnn.training.checkpoints import CheckpointStore
from cnn.training.train import fit_variant


class Interrupted(Exception):
    """Stands in for a killed worker: raised after the checkpoint of the given epoch."""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=32, limit=160)
    dataset, _ = build_dataset(SyntheticSource(count=160), config, tmp_path_factory.mktemp("ds"))
    return dataset


def _interrupt_after(epoch: int):
    def report(finished: int, _metrics: dict) -> None:
        if finished == epoch:
            raise Interrupted(epoch)

    return report


def _interrupted(dataset, variant: str, config, store, after_epoch: int) -> None:
    """Train until the checkpoint of `after_epoch` is written, then stop as a kill would."""
    with pytest.raises(Interrupted):
        fit_variant(
            dataset, variant, config, on_epoch_end=_interrupt_after(after_epoch), checkpoints=store
        )


def _resumed(dataset, variant: str, config, store):
    """Train again from `store`; the result, and the epochs this call trained."""
    reported = []
    result = fit_variant(
        dataset,
        variant,
        config,
        on_epoch_end=lambda epoch, _: reported.append(epoch),
        checkpoints=store,
    )
    return result, reported


def _steps_per_epoch(dataset, batch_size: int) -> int:
    return math.ceil(sum(dataset.manifest.counts["train"].values()) / batch_size)


def test_an_interrupted_training_resumes_after_its_last_checkpoint(tiny_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    config = TrainConfig(epochs=4, batch_size=32, patience=10)
    _interrupted(tiny_dataset, "simple", config, store, after_epoch=2)
    interrupted = store.latest()
    assert interrupted.epochs_done == 2 and not interrupted.phase_finished

    result, reported = _resumed(tiny_dataset, "simple", config, store)
    assert reported == [3, 4]
    assert result.resumed_epochs == 2 and result.epochs_run == 4
    assert result.history["val_loss"][:2] == interrupted.history["val_loss"]
    final = store.latest()
    iterations = int(final.optimizer[0])  # Adam's step counter went on from epoch 2
    assert iterations == 4 * _steps_per_epoch(tiny_dataset, 32)
    assert final.phase_finished


class WeightsAtEpochBegin(keras.callbacks.Callback):
    """Records the model's weights as each epoch begins (after the averaging swap)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, list[np.ndarray]] = {}

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.seen[epoch + 1] = [np.array(w) for w in self.model.get_weights()]


def test_a_training_with_averaged_weights_resumes_on_its_raw_weights(tiny_dataset, tmp_path):
    """The checkpoint holds the averaged weights in the model; the resumed epoch must start
    from the raw ones, as the uninterrupted training's does."""
    config = TrainConfig(epochs=3, batch_size=32, ema_momentum=0.9, checkpoints=True)
    whole = WeightsAtEpochBegin()
    fit_variant(tiny_dataset, "simple", config, callbacks=[whole])
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    _interrupted(tiny_dataset, "simple", config, store, after_epoch=2)
    resumed = WeightsAtEpochBegin()
    fit_variant(tiny_dataset, "simple", config, callbacks=[resumed], checkpoints=store)
    assert list(resumed.seen) == [3]
    for after_resume, uninterrupted in zip(resumed.seen[3], whole.seen[3], strict=True):
        np.testing.assert_allclose(after_resume, uninterrupted, rtol=1e-5, atol=1e-6)
    averaged = store.latest().weights  # the checkpoint's model: the averaged weights, not these
    assert any(not np.allclose(a, b) for a, b in zip(averaged, whole.seen[3], strict=True))


def test_a_finished_phase_is_not_trained_again(tiny_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    config = TrainConfig(epochs=40, batch_size=32, patience=0, learning_rate=0.5)
    first = fit_variant(tiny_dataset, "simple", config, checkpoints=store)
    assert first.epochs_run < 40 and store.latest().phase_finished  # stopped early

    again, reported = _resumed(tiny_dataset, "simple", config, store)
    assert reported == [] and again.epochs_run == first.epochs_run
    for restored, trained in zip(again.model.get_weights(), first.model.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, trained)  # the best epoch's weights


@pytest.mark.slow
def test_early_stopping_counts_on_across_a_resume(tiny_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    # A learning rate of ~0 keeps val_loss flat: epoch 2 is no improvement, so patience 1
    # stops training there.
    config = TrainConfig(epochs=40, batch_size=32, patience=1, learning_rate=1e-9)
    uninterrupted = fit_variant(tiny_dataset, "simple", config)
    assert (uninterrupted.best_epoch, uninterrupted.epochs_run) == (1, 2)
    _interrupted(tiny_dataset, "simple", config, store, after_epoch=1)
    resumed = fit_variant(tiny_dataset, "simple", config, checkpoints=store)
    # Epoch 1's val_loss came back as the best so far: a forgotten best would take epoch 2
    # as an improvement and train a third epoch.
    assert resumed.epochs_run == 2 and resumed.best_epoch == 1
    assert store.latest().callbacks["early_stopping"]["wait"] == 1


def test_a_half_written_or_unreadable_checkpoint_is_never_used(tiny_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    config = TrainConfig(epochs=2, batch_size=32, patience=10)
    _interrupted(tiny_dataset, "simple", config, store, after_epoch=1)
    root = Path(store.root.path)
    (root / "epoch-0003-phase-0").mkdir()  # a crash before its state.json: never committed
    (root / "epoch-0003-phase-0" / "arrays.npz").write_bytes(b"half")
    corrupt = root / "epoch-0002-phase-0"
    corrupt.mkdir()
    (corrupt / "state.json").write_text('{"format_version": 1, "phase": 0')
    assert store.latest().epochs_done == 1


@pytest.mark.slow
def test_resuming_into_fine_tuning_skips_the_finished_head_phase(tiny_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        fine_tune_layers=2,
        variant_options={"transfer": {"weights": None}},
    )
    _interrupted(tiny_dataset, "transfer", config, store, after_epoch=1)
    result, reported = _resumed(tiny_dataset, "transfer", config, store)
    assert reported == [2]  # only the fine-tuning epoch
    assert result.epochs_run == 2 and result.fine_tuned_layers == 2
    assert store.latest().phase == 1
