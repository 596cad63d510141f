"""SIGKILL an ingest at its delicate moments (its folder made, its first shard being written,
its later shards being written): nothing half-written is ever accepted, and the rerun leaves
exactly the dataset's shards."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cnn.data.dataset import open_dataset
from cnn.data.manifest import DatasetError
from cnn.io.locks import LOCKS_DIR
from tests.conftest import write_nih_folder

pytestmark = pytest.mark.slow

INGEST = """
import sys
from pathlib import Path
from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import open_source
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


def _attempts(datasets: Path) -> list[Path]:
    return list(datasets.glob("folder-*")) if datasets.exists() else []


MOMENTS = {
    "dataset-folder": lambda datasets: bool(_attempts(datasets)),
    "first-shard": lambda datasets: any(
        shard for attempt in _attempts(datasets) for shard in attempt.glob("*.parquet")
    ),
    "later-shards": lambda datasets: any(
        len(list(attempt.glob("*.parquet"))) >= 4 for attempt in _attempts(datasets)
    ),
}
"""When to kill: each waits for what the ingest has written so far."""


def _wait_until(moment, datasets: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not moment(datasets):
        assert process.poll() is None, "the ingest ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_at_any_moment_leaves_nothing_a_rerun_would_trust(moment, cell_folder, tmp_path):
    datasets = tmp_path / "datasets"
    process = _run_ingest(cell_folder, datasets)
    _wait_until(MOMENTS[moment], datasets, process)
    os.killpg(process.pid, signal.SIGKILL)  # the ingest and its worker processes
    process.wait(timeout=30)

    for path in _accepted_datasets(datasets):  # finished before the kill: must be whole
        assert pq.read_metadata(next(path.glob("*.parquet"))).num_rows > 0
        assert open_dataset(path).rows == 1400

    rerun = _run_ingest(cell_folder, datasets)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    (finished,) = _accepted_datasets(datasets)
    table = pq.read_table(finished, columns=["source_id"])  # every file in its folder
    assert table.num_rows == 1400
    assert len(set(table["source_id"].to_pylist())) == 1400
    assert sorted(path.name for path in datasets.iterdir()) == [LOCKS_DIR, finished.name]
