"""Per-epoch training checkpoints, so a killed or retried training resumes where it stopped.

A checkpoint holds everything the next epoch depends on: the weights, the optimizer's
variables (its step, learning rate and moments), early stopping's and the learning-rate
schedule's counters with the best weights so far, and the metric history. Each is written
into a temporary directory renamed into place when complete, so a crash at any moment leaves
the previous checkpoint usable and never a half-written one that would be trusted.
"""

import hashlib
import json
import os
import shutil
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import TrainConfig
from cnn.dataset import Dataset
from cnn.locks import LockTimeoutError, exclusive_lock
from cnn.manifest import write_json_durably
from cnn.writes import writing

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
    """The checkpoints of one training (one dataset, variant and settings) in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, state: TrainingState) -> Path:
        """Write `state` as the newest checkpoint, then drop the older ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{state.epochs_done:04d}-phase-{state.phase}"
        temporary = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            arrays = {
                f"{group}_{index:04d}": array
                for group in ARRAY_GROUPS
                for index, array in enumerate(getattr(state, group))
            }
            with writing(temporary / ARRAYS_FILE), open(temporary / ARRAYS_FILE, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            scalars = {
                key: value for key, value in asdict(state).items() if key not in ARRAY_GROUPS
            }
            scalars["format_version"] = FORMAT_VERSION
            write_json_durably(temporary / STATE_FILE, scalars)
            final = self.root / name
            shutil.rmtree(final, ignore_errors=True)
            temporary.rename(final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        for older in self._published():
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
        return final

    def latest(self) -> TrainingState | None:
        """The newest complete checkpoint, or None (none yet, or none readable)."""
        for path in sorted(self._published(), reverse=True):
            try:
                return _load(path)
            except (OSError, ValueError, KeyError):  # unreadable: fall back to an older one
                continue
        return None

    def clear(self) -> None:
        """Delete every checkpoint (once the trained model is safely stored elsewhere)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _published(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [path for path in self.root.glob("epoch-*") if (path / STATE_FILE).is_file()]


AFTER_TRAINING_SETTINGS = {
    "checkpoints",
    "test_time_augmentation",
    "target_sensitivity",
    "ensemble",
}
"""Settings that leave the trained weights as they are: a change of them resumes training."""


def checkpoint_dir(root: Path, dataset: Dataset, variant: str, config: TrainConfig) -> Path:
    """Where one training's checkpoints live under `root`: by dataset, variant and a digest of
    the settings (an identical training finds them; a changed one starts anew)."""
    trained_by = config.model_dump(mode="json", exclude=AFTER_TRAINING_SETTINGS)
    settings = json.dumps({"variant": variant, **trained_by}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return root / dataset.name / f"{variant}-{digest}"


def claim_checkpoints(
    root: Path, dataset: Dataset, variant: str, config: TrainConfig, held: ExitStack, logger: Any
) -> CheckpointStore | None:
    """This training's checkpoint store under `root`, locked for as long as `held` is open;
    None when checkpoints are off, or when an identical training (another run with the same
    dataset, variant and settings) holds it: two trainings must not write one checkpoint."""
    if not config.checkpoints:
        return None
    store = CheckpointStore(checkpoint_dir(root, dataset, variant, config))
    try:
        held.enter_context(
            exclusive_lock(store.root.parent / f"{store.root.name}.lock", timeout_seconds=0)
        )
    except LockTimeoutError:
        logger.warning(
            "An identical training is running and holds %s: this one trains without checkpoints",
            store.root,
        )
        return None
    return store


def _load(path: Path) -> TrainingState:
    scalars: dict[str, Any] = json.loads((path / STATE_FILE).read_text())
    if scalars.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has another format")
    with np.load(path / ARRAYS_FILE) as archive:
        arrays = {group: [] for group in ARRAY_GROUPS}
        for key in sorted(archive.files):
            group, _, _ = key.rpartition("_")
            arrays[group].append(archive[key])
    return TrainingState(**scalars, **arrays)
