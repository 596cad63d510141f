"""The ingest on a real Dask cluster (`dask scheduler` and two `dask worker` processes started
here): the same dataset as a local ingest of the same source, written by both workers, and
still exact when one worker is killed mid-ingest."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from distributed import Client

from app.stack_settings import QUIET_ENVIRONMENT
from cnn.data.dataset import open_dataset
from cnn.data.manifest import MANIFEST_NAME
from tasks.engines import DaskUnavailableError, shards_on_dask
from tests.conftest import write_nih_folder
from tests.integration.servers import BIN, REPO, background, free_port

pytestmark = pytest.mark.slow

WORKERS = ("first", "second")
SYNTHETIC_IMAGES = 4000
"""Eight shards of about a second each on two workers: time to kill one mid-ingest."""


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-thread workers without nannies (a killed worker stays dead,
    as a lost host does); yields its address, the workers' processes and logs by name, and a
    client."""
    address = f"tcp://127.0.0.1:{free_port()}"
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--no-dashboard"]
    scheduler += ["--port", address.rsplit(":", 1)[1]]
    worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny"]
    worker += ["--no-dashboard"]
    logs = {name: tmp_path / f"{name}.log" for name in WORKERS}
    with (
        background(scheduler, tmp_path / "scheduler.log", {}, stop_seconds=10),
        background([*worker, "--name", "first"], logs["first"], {}, stop_seconds=10) as first,
        background([*worker, "--name", "second"], logs["second"], {}, stop_seconds=10) as second,
        Client(address, timeout="60s") as client,
    ):
        client.wait_for_workers(len(WORKERS), timeout=120)
        yield address, {"first": first, "second": second}, logs, client


def _ingest(source: str, data_dir: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "malaria"), "ingest", "--source", source, "--json", *options],
        cwd=REPO,
        env={**os.environ, **QUIET_ENVIRONMENT, "MALARIA_DATA_DIR": str(data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finished(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _rows(dataset_path: str) -> pd.DataFrame:
    """Every row of a dataset, by source id."""
    dataset = open_dataset(dataset_path)
    table = pq.read_table([str(path) for path in dataset.shard_paths])
    return table.to_pandas().set_index("source_id").sort_index()


def _assert_same_dataset(on_dask: dict, local: dict) -> None:
    """Same name (so the same fingerprint), counts, and every row's pixels, label, patient
    and split; its folder holds the manifest's shards and nothing else."""
    assert on_dask["name"] == local["name"]
    assert on_dask["counts"] == local["counts"] and on_dask["rows"] == local["rows"]
    assert on_dask["cache_hit"] is False and on_dask["path"] != local["path"]
    dask_rows, local_rows = _rows(on_dask["path"]), _rows(local["path"])
    assert dask_rows.index.is_unique and len(dask_rows) == local["rows"]
    pd.testing.assert_frame_equal(dask_rows, local_rows)
    dataset = open_dataset(on_dask["path"])
    assert sorted(path.name for path in dataset.path.iterdir()) == sorted(
        [MANIFEST_NAME, *(path.name for path in dataset.shard_paths)]
    )


def test_an_ingest_on_dask_equals_a_local_one_and_uses_every_worker(dask_cluster, tmp_path):
    address, _, logs, _ = dask_cluster
    cells = write_nih_folder(tmp_path / "cells", per_class=300)
    source = f"folder:{cells}"
    on_dask = _finished(_ingest(source, tmp_path / "dask-data", "--dask-address", address))
    local = _finished(_ingest(source, tmp_path / "local-data"))
    _assert_same_dataset(on_dask, local)
    for name, log in logs.items():  # each worker ran shards as Prefect task runs
        assert "Task run 'write-shard" in log.read_text(), f"worker {name} wrote no shard"


def test_a_worker_killed_mid_ingest_loses_nothing_and_duplicates_nothing(dask_cluster, tmp_path):
    address, processes, logs, client = dask_cluster
    source = "synthetic"
    options = ("--limit", str(SYNTHETIC_IMAGES), "--image-size", "96")
    process = _ingest(source, tmp_path / "dask-data", *options, "--dask-address", address)
    deadline = time.monotonic() + 120
    busy: list[str] = []
    while not busy:  # a worker in the middle of its first shard
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no worker ever took a shard"
        busy = [worker for worker, keys in client.processing().items() if keys]
        time.sleep(0.05)
    victim = client.scheduler_info()["workers"][busy[0]]["name"]
    os.kill(processes[victim].pid, signal.SIGKILL)
    on_dask = _finished(process)
    assert len(client.scheduler_info()["workers"]) == 1, "the killed worker is still there"
    local = _finished(_ingest(source, tmp_path / "local-data", *options))
    _assert_same_dataset(on_dask, local)
    (survivor,) = set(WORKERS) - {victim}  # wrote every shard, the victim's included
    written = logs[survivor].read_text().count("Finished in state Completed()")
    assert written == len(open_dataset(on_dask["path"]).shards)


def test_a_scheduler_that_does_not_answer_is_named(prefect_harness):
    address = f"tcp://127.0.0.1:{free_port()}"
    map_shards = shards_on_dask(address)
    with pytest.raises(DaskUnavailableError, match=f"Dask scheduler '{address}'"):
        next(iter(map_shards(iter([]))))
