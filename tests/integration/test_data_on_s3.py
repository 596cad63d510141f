"""The data folder on object storage (`MALARIA_DATA_DIR=s3://…`), against a real SeaweedFS
server started by this module: the pipeline writes its dataset, checkpoints and kept models
to the bucket and nothing local; a killed ingest to the bucket leaves nothing trusted and
the rerun completes; two ingests of one source at once, coordinated by the Prefect server's
locks, write it once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from app.stack_settings import QUIET_ENVIRONMENT
from cnn.config import IngestConfig
from cnn.data.dataset import open_dataset
from cnn.data.manifest import MANIFEST_NAME, DatasetError, Manifest
from cnn.ingest.build import dataset_fingerprint
from cnn.io.storage import Location, location
from cnn.sources.specs import open_source
from cnn.training.checkpoints import CheckpointStore, TrainingState
from tests.conftest import write_nih_folder
from tests.integration.servers import BIN, REPO, malaria_in

pytestmark = pytest.mark.slow

BUCKET = "malaria-team"
PER_CLASS = 150
HELD_SECONDS = 20
"""How long the test holds a lock that `malaria ingest` waits for (it ingests in about 8 s)."""


@pytest.fixture(scope="module")
def cells_on_s3(s3_server, tmp_path_factory) -> str:
    """An NIH-layout folder uploaded under `s3://BUCKET/cells`."""
    folder = write_nih_folder(tmp_path_factory.mktemp("cells"), per_class=PER_CLASS)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.items():
            patch.setenv(name, value)
        cells = location(f"s3://{BUCKET}/cells")
        for image in folder.glob("*/*.png"):
            (cells / image.parent.name / image.name).write_bytes(image.read_bytes())
    return cells.uri


def _files_under(prefix: Location) -> list[str]:
    selector = pafs.FileSelector(prefix.path, recursive=True, allow_not_found=True)
    found = prefix.filesystem.get_file_info(selector)
    return [info.path for info in found if info.type == pafs.FileType.File]


def _datasets(prefix: Location) -> list[Location]:
    return [found for found in prefix.children() if found.name.startswith("folder-")]


def test_the_pipeline_with_its_data_folder_on_s3_writes_nothing_locally(
    s3, cells_on_s3, prefect_harness, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    data = f"s3://{BUCKET}/{tmp_path.name}/data"
    env = {
        **s3,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MALARIA_DATA_DIR": data,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    work = tmp_path / "work"
    work.mkdir()
    pipeline = ["pipeline", "--source", f"folder:{cells_on_s3}", "--image-size", "24"]
    options = ["--variants", "simple", "--epochs", "2", "--batch-size", "32", "--json"]
    checkpoints = location(data) / "checkpoints"
    seen: set[str] = set()
    watch = Watch(lambda: seen.update(_files_under(checkpoints)))
    finished = malaria_in(work, *pipeline, *options, env=env)
    watch.stop()
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert list(work.iterdir()) == []  # no data folder, no MLflow store: nothing local

    (dataset,) = _datasets(location(data) / "datasets")
    opened = open_dataset(dataset.uri)
    assert opened.rows == 2 * PER_CLASS
    frame = pd.read_parquet(dataset.path, filesystem=dataset.filesystem)  # any Parquet reader
    assert len(frame) == opened.rows and frame["source_id"].is_unique
    assert summary["dataset"]["path"] == dataset.uri
    written = {path.rsplit("/", 2)[-2] for path in seen if path.endswith("/state.json")}
    assert "epoch-0002-phase-0" in written  # each epoch's checkpoint went to the bucket
    assert _files_under(checkpoints) == []  # and was cleared once the model was logged

    output = f"s3://{BUCKET}/{tmp_path.name}/predictions/p.parquet"
    model = summary["runs"][0]["model_uri"]
    predicted = malaria_in(
        work, "predict", "--model", model, "--input", dataset.uri, "--output", output, env=env
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    table = pq.read_table(location(output).path, filesystem=location(output).filesystem)
    assert table.num_rows == opened.rows
    assert list(work.iterdir()) == []


def test_checkpoints_and_a_kept_model_live_in_the_bucket(s3, tmp_path):
    from tracking.models import keep_model

    store = CheckpointStore(location(f"s3://{BUCKET}/checkpoints-test/simple-abc"))
    weights = [np.arange(6, dtype="float32").reshape(2, 3)]
    for epoch in (1, 2):
        history = {"loss": [1.0 / (n + 1) for n in range(epoch)]}
        state = TrainingState(0, 0, history, False, {}, weights=weights)
        store.save(state)
    assert [found.name for found in store.root.children()] == ["epoch-0002-phase-0"]
    latest = store.latest()
    assert latest.epochs_done == 2 and np.array_equal(latest.weights[0], weights[0])

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    kept = keep_model(model, store, run_id="unused")
    assert kept.uri == f"{store.root.uri}/model.keras"
    downloaded = tmp_path / "model.keras"
    downloaded.write_bytes(kept.read_bytes())
    reloaded = keras.models.load_model(downloaded)
    for saved, loaded in zip(model.get_weights(), reloaded.get_weights(), strict=True):
        assert np.array_equal(saved, loaded)
    assert keep_model(None, store, run_id="unused") == kept  # found again by a retry
    store.clear()
    assert _files_under(store.root) == [] and store.latest() is None


INGEST = """
import sys
from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import open_source
config = IngestConfig(source=sys.argv[1], image_size=24)
dataset, _ = build_dataset(open_source(config.source), config, sys.argv[2], workers=2)
print(dataset.rows)
"""


def _ingest(cells: str, datasets: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", INGEST, f"folder:{cells}", datasets],
        cwd=REPO,
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Watch:
    """Runs `look` over and over in a thread until stopped: what a reader on another host
    could see at any moment."""

    def __init__(self, look) -> None:
        self.look, self.looks = look, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.is_set():
            self.look()
            self.looks += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def _shards_missing(datasets: Location) -> list[str]:
    """The shards that a manifest under `datasets` names and that are not there."""
    missing = []
    for dataset in _datasets(datasets):
        manifest = dataset / MANIFEST_NAME
        if manifest.is_file():
            stated = {shard.file for shard in Manifest.read(manifest).shards}
            missing += sorted(stated - {found.name for found in dataset.children()})
    return missing


def test_a_killed_ingest_to_s3_leaves_nothing_trusted_and_the_rerun_is_exact(
    s3, cells_on_s3, tmp_path
):
    datasets = location(f"s3://{BUCKET}/{tmp_path.name}/datasets")
    problems: list[str] = []
    watch = Watch(lambda: problems.extend(_shards_missing(datasets)))
    process = _ingest(cells_on_s3, datasets.uri, s3)
    deadline = time.monotonic() + 120
    while not any(
        found.name.endswith(".parquet")
        for dataset in _datasets(datasets)
        for found in dataset.children()
    ):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no shard was ever written"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the ingest and its decode workers
    process.wait(timeout=30)
    (attempt,) = _datasets(datasets)
    with pytest.raises(DatasetError, match="not a finished dataset"):
        open_dataset(attempt)

    rerun = _ingest(cells_on_s3, datasets.uri, s3)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    watch.stop()
    assert problems == [] and watch.looks > 0
    dataset = open_dataset(attempt)
    table = pq.read_table(attempt.path, filesystem=attempt.filesystem, columns=["source_id"])
    assert table.num_rows == dataset.rows == 2 * PER_CLASS  # the killed attempt's shards: gone
    assert len(set(table["source_id"].to_pylist())) == table.num_rows


def test_an_ingest_waits_for_another_hosts_lock_on_the_prefect_server(
    s3, cells_on_s3, prefect_harness, tmp_path
):
    """This test holds a dataset's lock on the Prefect server, as another host writing it
    would; `malaria ingest` of that dataset (sharing no file with this process) waits, writes
    nothing meanwhile, and writes it once the lock is released; the next ingest reuses it."""
    from prefect.settings import PREFECT_API_URL

    from tasks.locks import server_lock

    data = location(f"s3://{BUCKET}/{tmp_path.name}/data")
    env = {**s3, "PREFECT_API_URL": PREFECT_API_URL.value(), "MALARIA_DATA_DIR": data.uri}
    spec, image_size = f"folder:{cells_on_s3}", 24
    config = IngestConfig(source=spec, image_size=image_size)
    name = f"folder-{image_size}px-{dataset_fingerprint(open_source(spec).fingerprint(), config)}"
    ingest = ["ingest", "--source", spec, "--image-size", str(image_size), "--json"]
    with server_lock(f"dataset-{name}"):
        waiting = subprocess.Popen(
            [str(BIN / "malaria"), *ingest],
            cwd=tmp_path,
            env={**os.environ, **QUIET_ENVIRONMENT, **env, "HOME": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(HELD_SECONDS)  # long enough to write the dataset twice over
        assert waiting.poll() is None, waiting.communicate()[1][-3000:]
        assert _files_under(data) == []
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["cache_hit"] is False
    again = malaria_in(tmp_path, *ingest, env=env)
    assert json.loads(again.stdout.strip().splitlines()[-1])["cache_hit"] is True
    (dataset,) = _datasets(data / "datasets")
    assert dataset.name == name and open_dataset(dataset).rows == 2 * PER_CLASS
