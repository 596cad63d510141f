"""Datasets on an S3-compatible store: a real SeaweedFS server started by this module on free
127.0.0.1 ports, with credentials and no anonymous access. A dataset uploaded there opens,
is checked and streams exactly as its local copy; `malaria train --dataset s3://…` trains from
it and `malaria predict` reads it and writes its predictions to the bucket."""

import re
import socket
import time

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cnn.config import IngestConfig
from cnn.data.batches import SHUFFLE_WINDOW, SplitBatches
from cnn.data.dataset import Dataset, load_split, open_dataset
from cnn.data.manifest import DatasetError
from cnn.ingest.build import build_dataset
from cnn.io.storage import StorageError, StorageUnavailableError, location
from cnn.sources.specs import SyntheticSource
from tests.faults.harness import run_malaria
from tests.faults.test_bad_input import deadline
from tests.integration.servers import seaweed_s3

pytestmark = pytest.mark.slow

BUCKET = "malaria-data"
DEADLINE_SECONDS = 30


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Dataset:
    config = IngestConfig(source="synthetic", limit=240, image_size=16)
    dataset, _ = build_dataset(
        SyntheticSource(count=240), config, tmp_path_factory.mktemp("datasets"), workers=1
    )
    return dataset


def upload(dataset: Dataset, uri: str) -> str:
    """Copy a local dataset folder under `uri` (what `aws s3 cp --recursive` would do)."""
    target = location(uri)
    pafs.copy_files(
        str(dataset.path), target.path, destination_filesystem=target.filesystem, use_threads=False
    )
    return target.uri


def test_a_dataset_on_s3_opens_checks_and_streams_as_its_local_copy(s3, local_dataset, request):
    uri = upload(local_dataset, f"s3://{BUCKET}/{request.node.name}/{local_dataset.name}")
    remote = open_dataset(uri)
    assert remote.uri == uri and not remote.location.is_local
    assert remote.manifest == local_dataset.manifest
    for split in ("train", "test"):
        remote_images, remote_labels = load_split(remote, split)
        local_images, local_labels = load_split(local_dataset, split)
        assert np.array_equal(remote_images, local_images)
        assert np.array_equal(remote_labels, local_labels)
    remote_batches = SplitBatches(remote, "train", 32, shuffle=True, seed=3)
    local_batches = SplitBatches(local_dataset, "train", 32, shuffle=True, seed=3)
    for index in range(len(local_batches)):
        remote_batch, local_batch = remote_batches[index], local_batches[index]
        for remote_part, local_part in zip(remote_batch, local_batch, strict=True):
            assert np.array_equal(remote_part, local_part)
    # Any Parquet reader reads the rows under the prefix (the manifest's underscore hides it).
    frame = pd.read_parquet(remote.location.path, filesystem=remote.location.filesystem)
    assert len(frame) == local_dataset.rows


def test_a_partial_or_altered_dataset_on_s3_is_refused_by_name(s3, local_dataset, request):
    prefix = f"s3://{BUCKET}/{request.node.name}"
    missing_shard = location(upload(local_dataset, f"{prefix}/no-shard"))
    first_shard = missing_shard / local_dataset.manifest.shards[0].file
    first_shard.filesystem.delete_file(first_shard.path)
    with pytest.raises(DatasetError, match=re.escape(f"shard '{first_shard.uri}' is missing")):
        open_dataset(missing_shard)

    unfinished = location(upload(local_dataset, f"{prefix}/no-manifest"))
    manifest = unfinished / "_manifest.json"
    manifest.filesystem.delete_file(manifest.path)
    with pytest.raises(DatasetError, match=r"has no _manifest\.json: not a finished dataset"):
        open_dataset(unfinished)

    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"{prefix}/never-written")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_store_that_does_not_answer_and_an_unknown_scheme_are_named(monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with deadline(DEADLINE_SECONDS), pytest.raises(StorageUnavailableError) as raised:
        open_dataset(f"s3://{BUCKET}/anything")
    assert f"cannot reach s3://{BUCKET}/anything (endpoint {endpoint})" in str(raised.value)
    with pytest.raises(StorageError, match="no filesystem for nosuch:// here"):
        open_dataset("nosuch://bucket/dataset")


def test_train_and_predict_read_a_dataset_on_s3_and_predictions_go_to_the_bucket(
    s3, local_dataset, prefect_harness, tmp_path, request
):
    from prefect.settings import PREFECT_API_URL

    uri = upload(local_dataset, f"s3://{BUCKET}/{request.node.name}/{local_dataset.name}")
    env = {
        **s3,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MALARIA_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    train = ["train", "--dataset", uri, "--variants", "simple", "--epochs", "1", "--json"]
    (run,) = run_malaria([*train, "--batch-size", "32"], env).result["runs"]
    assert run["variant"] == "simple" and 0.0 <= run["test_accuracy"] <= 1.0

    output = f"s3://{BUCKET}/{request.node.name}/predictions/p.parquet"
    predict = ["predict", "--model", run["model_uri"], "--input", uri, "--output", output]
    summary = run_malaria([*predict, "--json"], env).result
    assert summary["rows"] == local_dataset.rows
    written = location(output)
    table = pq.read_table(written.path, filesystem=written.filesystem)
    assert table.num_rows == local_dataset.rows
    assert not (tmp_path / "data" / "datasets").exists()  # nothing was copied locally

    bad = run_malaria([*train, "--dataset", f"s3://{BUCKET}/nothing-here"], env)
    assert bad.returncode == 2
    assert f"--dataset: dataset 's3://{BUCKET}/nothing-here' does not exist" in bad.stderr


@pytest.fixture(scope="module")
def streamed_dataset(tmp_path_factory) -> Dataset:
    """More row groups (7 of 256 rows) than training keeps in memory (`SHUFFLE_WINDOW` + 1):
    every epoch reads from the store."""
    config = IngestConfig(source="synthetic", limit=1600, image_size=16)
    dataset, _ = build_dataset(
        SyntheticSource(count=1600), config, tmp_path_factory.mktemp("streamed"), workers=1
    )
    assert sum(shard.parquet().num_row_groups for shard in dataset.shards) > SHUFFLE_WINDOW + 1
    return dataset


def test_an_object_store_outage_mid_training_is_bridged_by_a_retry_that_resumes(
    streamed_dataset, prefect_harness, tmp_path, monkeypatch
):
    """SeaweedFS stopped while `malaria train` streams from it, back 8 s later on the same
    data: the training task fails with the S3 client's connection error, which is transient,
    so Prefect retries it, and the retry resumes from the last epoch's checkpoint."""
    local_dataset = streamed_dataset
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from tests.faults.harness import checkpoint_epochs, finish, malaria, wait_for

    root = tmp_path / "seaweed"
    with seaweed_s3(root) as (s3_env, ports):
        for name, value in s3_env.items():
            monkeypatch.setenv(name, value)  # for the upload, from this process
        uri = upload(local_dataset, f"s3://{BUCKET}/outage/{local_dataset.name}")
        env = {
            **s3_env,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "MALARIA_DATA_DIR": str(tmp_path / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "MALARIA_IO_RETRY_DELAY_SECONDS": "5",
        }
        arguments = ["train", "--dataset", uri, "--variants", "simple", "--epochs", "60"]
        started = time.monotonic()
        options = ["--batch-size", "64", "--patience", "60", "--in-memory-limit-mb", "0"]
        process = malaria([*arguments, *options, "--json"], env)  # streamed, not in memory
        wait_for(lambda: len(checkpoint_epochs(tmp_path / "data")) >= 1, process, 300)
    # the server is gone (SIGTERM, SIGKILL 3 s later): the epoch's next read fails
    time.sleep(8)
    with seaweed_s3(root, ports):
        finished = finish(process, started)
    (run,) = finished.result["runs"]
    metrics = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run["run_id"]).data.metrics
    assert "AWS Error" in finished.stderr  # the failure that was retried
    assert 1 <= metrics["resumed_epochs"] < 60
