"""Per-epoch training checkpoints, so a killed or retried training resumes where it stopped.

A checkpoint holds everything the next epoch depends on: the weights, the optimizer's
variables (its step, learning rate and moments), early stopping's and the learning-rate
schedule's counters with the best weights so far, and the metric history. Its arrays are
written first and its state last, each atomically (`Location.write_bytes`), on a local disk or
object storage alike: a checkpoint without its state is not one, so a crash at any moment
leaves the previous checkpoint usable and never a half-written one that would be trusted.

Keras' `BackupAndRestore` does less: it writes through Keras' own file layer, which has no S3
("File system scheme 's3' not implemented" with `MALARIA_DATA_DIR=s3://…`), writes weights and
epoch as two files with no commit order, and keeps neither early stopping's counters and best
weights, nor the history, nor which fine-tuning phase a training was in.
"""

import hashlib
import io
import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnn.config import TrainConfig
from cnn.data.dataset import Dataset
from cnn.io.locks import Locks, LockTimeoutError
from cnn.io.storage import Location

FORMAT_VERSION = 1
STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
ARRAY_GROUPS = ("weights", "optimizer", "best_weights", "head_weights")


@dataclass
class TrainingState:
    """Where training stood at the end of an epoch."""

    phase: int
    """0: the whole model (or a transfer model's head); 1: fine-tuning the unfrozen backbone."""
    phase_start: int
    """Epochs run before this phase began."""
    history: dict[str, list[float]]
    """Every finished epoch's metrics, over both phases."""
    phase_finished: bool
    """Early stopping ended the phase or its epochs ran out: go on with the next phase."""
    callbacks: dict[str, dict[str, float | None]]
    """Early stopping's and the learning-rate schedule's counters (wait, best, …)."""
    head_best: float | None = None
    """In phase 1: the best val_loss of phase 0, which fine-tuning must beat to be kept."""
    weights: list[np.ndarray] = field(default_factory=list, repr=False)
    optimizer: list[np.ndarray] = field(default_factory=list, repr=False)
    best_weights: list[np.ndarray] = field(default_factory=list, repr=False)
    head_weights: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("loss", []))


class CheckpointStore:
    """The checkpoints of one training (one dataset, variant and settings) in a folder."""

    def __init__(self, root: Location) -> None:
        self.root = root

    def save(self, state: TrainingState) -> Location:
        """Write `state` as the newest checkpoint, then drop the older ones."""
        saved = self.root / f"epoch-{state.epochs_done:04d}-phase-{state.phase}"
        arrays = {
            f"{group}_{index:04d}": array
            for group in ARRAY_GROUPS
            for index, array in enumerate(getattr(state, group))
        }
        archive = io.BytesIO()
        np.savez(archive, **arrays)
        (saved / STATE_FILE).delete()  # a checkpoint of this epoch from before: not one now
        (saved / ARRAYS_FILE).write_bytes(archive.getvalue())
        scalars = {key: value for key, value in asdict(state).items() if key not in ARRAY_GROUPS}
        scalars["format_version"] = FORMAT_VERSION
        (saved / STATE_FILE).write_bytes(json.dumps(scalars).encode())  # the commit
        for older in self.root.children():
            if older.name != saved.name:
                older.delete()
        return saved

    def latest(self) -> TrainingState | None:
        """The newest complete checkpoint, or None (none yet, or none readable)."""
        for saved in sorted(self._published(), key=lambda found: found.name, reverse=True):
            try:
                return _load(saved)
            except (OSError, ValueError, KeyError):  # unreadable: fall back to an older one
                continue
        return None

    def clear(self) -> None:
        """Delete every checkpoint (once the trained model is safely stored elsewhere)."""
        self.root.delete()

    def _published(self) -> list[Location]:
        return [
            saved
            for saved in self.root.children()
            if saved.name.startswith("epoch-") and (saved / STATE_FILE).is_file()
        ]


AFTER_TRAINING_SETTINGS = {
    "checkpoints",
    "test_time_augmentation",
    "target_sensitivity",
    "ensemble",
}
"""Settings that leave the trained weights as they are: a change of them resumes training."""


def checkpoint_dir(root: Location, dataset: Dataset, variant: str, config: TrainConfig) -> Location:
    """Where one training's checkpoints live under `root`: by dataset, variant and a digest of
    the settings and of how many devices train it (an identical training finds them; a changed
    one, or one on another number of GPUs with its other global batch, starts anew)."""
    from cnn.training.devices import training_devices  # imports Keras: only where a model trains

    trained_by = config.model_dump(mode="json", exclude=AFTER_TRAINING_SETTINGS)
    trained_by["devices"] = len(training_devices(config.devices))
    settings = json.dumps({"variant": variant, **trained_by}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return root / dataset.name / f"{variant}-{digest}"


def claim_checkpoints(
    root: Location,
    dataset: Dataset,
    variant: str,
    config: TrainConfig,
    held: ExitStack,
    logger: Any,
    locks: Locks,
) -> CheckpointStore | None:
    """This training's checkpoint store under `root`, locked (from `locks`) for as long as
    `held` is open; None when checkpoints are off, or when an identical training (another run
    with the same dataset, variant and settings) holds it: two trainings must not write one
    checkpoint."""
    if not config.checkpoints:
        return None
    store = CheckpointStore(checkpoint_dir(root, dataset, variant, config))
    try:
        held.enter_context(locks(f"checkpoints-{dataset.name}-{store.root.name}", 0))
    except LockTimeoutError:
        logger.warning(
            "An identical training is running and holds %s: this one trains without checkpoints",
            store.root.uri,
        )
        return None
    return store


def _load(saved: Location) -> TrainingState:
    scalars: dict[str, Any] = json.loads((saved / STATE_FILE).read_text())
    if scalars.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"checkpoint {saved.uri!r} has another format")
    with np.load(io.BytesIO((saved / ARRAYS_FILE).read_bytes())) as archive:
        arrays = {group: [] for group in ARRAY_GROUPS}
        for key in sorted(archive.files):
            group, _, _ = key.rpartition("_")
            arrays[group].append(archive[key])
    return TrainingState(**scalars, **arrays)
