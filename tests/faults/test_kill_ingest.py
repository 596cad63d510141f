"""SIGKILL an ingest at random moments: nothing half-written is ever accepted."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cnn.dataset import LOCKS_DIR, DatasetError, open_dataset
from tests.conftest import write_nih_folder

pytestmark = pytest.mark.slow

INGEST = """
import sys
from pathlib import Path
from cnn.config import IngestConfig
from cnn.dataset import build_dataset
from cnn.sources import open_source
config = IngestConfig(source=sys.argv[1], image_size=48)
dataset, _ = build_dataset(open_source(config.source), config, Path(sys.argv[2]), workers=2)
print(dataset.rows)
"""


def _run_ingest(folder: Path, datasets: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", INGEST, f"folder:{folder}", str(datasets)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _accepted_datasets(datasets: Path) -> list[Path]:
    accepted = []
    for path in datasets.iterdir() if datasets.exists() else []:
        try:
            open_dataset(path)
        except DatasetError:
            continue
        accepted.append(path)
    return accepted


@pytest.fixture(scope="module")
def cell_folder(tmp_path_factory) -> Path:
    return write_nih_folder(tmp_path_factory.mktemp("kill") / "cells", per_class=700)


@pytest.fixture(scope="module")
def full_ingest_seconds(cell_folder, tmp_path_factory) -> float:
    started = time.monotonic()
    process = _run_ingest(cell_folder, tmp_path_factory.mktemp("timing") / "datasets")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return time.monotonic() - started


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_any_moment_leaves_nothing_a_rerun_would_trust(
    seed, cell_folder, full_ingest_seconds, tmp_path
):
    datasets = tmp_path / "datasets"
    process = _run_ingest(cell_folder, datasets)
    time.sleep(random.Random(seed).uniform(0.2, 0.9) * full_ingest_seconds)
    os.killpg(process.pid, signal.SIGKILL)  # the ingest and its worker processes
    process.wait(timeout=30)

    for path in _accepted_datasets(datasets):  # finished before the kill: must be whole
        assert pq.read_metadata(next(path.glob("*.parquet"))).num_rows > 0
        assert open_dataset(path).rows == 1400

    rerun = _run_ingest(cell_folder, datasets)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    (finished,) = _accepted_datasets(datasets)
    table = pq.read_table(open_dataset(finished).shard_paths, columns=["source_id"])
    assert table.num_rows == 1400
    assert len(set(table["source_id"].to_pylist())) == 1400
    leftovers = [path.name for path in datasets.iterdir() if path.name.startswith(".")]
    assert leftovers == [LOCKS_DIR]  # no temporary directory; the lock files stay
