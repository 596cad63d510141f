"""The label-issues flow against a real Prefect server (test harness) and a real MLflow store:
cells given the wrong label are flagged, logged and shown; training then leaves them out."""

import asyncio
import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cnn.config import IngestConfig, LabelIssuesConfig, TrainConfig
from cnn.curation.exclusion import EXCLUDED_FIELD
from cnn.curation.folds import POOL_SPLITS
from cnn.data.dataset import open_dataset
from cnn.ingest.build import build_dataset
from cnn.sources.specs import open_source
from flows.label_issues import label_issues
from flows.train import train
from tests.conftest import write_easy_folder
from tracking.config import TrackingConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MISLABELLED = 10
"""Parasitized cells (purple) moved into the Uninfected folder: one of each patient's."""
TRAINING = TrainConfig(
    epochs=10, batch_size=16, augment="none", test_time_augmentation=False, learning_rate=3e-3
)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, prefect_harness):
    """An easy folder with a few cells given the wrong label, ingested and reviewed once."""
    root = tmp_path_factory.mktemp("label-issues")
    monkeypatch = pytest.MonkeyPatch()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MALARIA_DATA_DIR", str(root / "data"))
    cells = write_easy_folder(root / "cells", per_class=60)
    moved = [file for file in (cells / "Parasitized").iterdir() if _index(file) < MISLABELLED]
    for file in moved:
        shutil.move(file, cells / "Uninfected" / file.name)
    config = IngestConfig(source=f"folder:{cells}", image_size=24)
    dataset, _ = build_dataset(open_source(config.source), config, root / "data" / "datasets")
    tracking = TrackingConfig(experiment="label-issues-test")
    review_config = LabelIssuesConfig(folds=2, variant="simple", gallery_size=8)
    summary = label_issues(dataset.uri, review_config, TRAINING, tracking)
    moved_ids = {f"Uninfected/{file.name}" for file in moved}
    yield dataset, summary, moved_ids, uri, tracking, cells
    monkeypatch.undo()
    mlflow.set_tracking_uri(None)


def _index(file: Path) -> int:
    """The cell's number in `write_easy_folder`'s names (it cycles through the patients)."""
    return int(file.stem.rsplit("_", 1)[1])


def _review_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("label-issues-test")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'label-issues'")
    run = min(runs, key=lambda found: found.info.start_time)  # the fixture's, not retrain's
    return client, run


def test_the_mislabelled_cells_in_train_and_validation_are_flagged(reviewed):
    dataset, summary, moved, *_ = reviewed
    review = pd.read_parquet(summary.review_table)
    pool = review[review["source_id"].isin(moved)]
    assert len(review) == summary.cells_checked
    counts = dataset.manifest.counts
    assert summary.cells_checked == sum(sum(counts[split].values()) for split in POOL_SPLITS)
    assert len(pool) >= MISLABELLED // 2  # the patients of the test split keep theirs
    flagged = set(review.loc[review["flagged"], "source_id"])
    assert flagged <= moved and len(flagged) >= len(pool) / 2  # no clean cell flagged
    most_doubtful = review.sort_values("label_quality").head(len(pool))
    assert set(most_doubtful["source_id"]) == set(pool["source_id"])
    assert summary.flagged == len(flagged) and review["flagged"].head(len(flagged)).all()


def test_the_review_has_its_own_mlflow_run_with_metrics_table_and_gallery(reviewed):
    _, summary, _, uri, *_ = reviewed
    client, run = _review_run(uri)
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert (params["folds"], params["variant"], params["training.epochs"]) == ("2", "simple", "10")
    assert metrics["cells_checked"] == summary.cells_checked
    assert metrics["flagged"] == summary.flagged
    assert metrics["flagged_share"] == pytest.approx(summary.flagged_share)
    listed = {item.path for item in client.list_artifacts(run.info.run_id, "label_issues")}
    assert listed == {"label_issues/review.csv", "label_issues/gallery.png"}
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="label_issues/review.csv", tracking_uri=uri
    )
    logged = pd.read_csv(local)
    assert len(logged) == summary.cells_checked and logged["flagged"].sum() == summary.flagged


def test_prefect_artifacts_list_the_flagged_cells_and_link_the_run(reviewed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, summary, _, uri, *_ = reviewed

    async def latest(key: str):
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        return max(found, key=lambda artifact: artifact.created)

    table = asyncio.run(latest("label-issues"))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.type == "table" and len(rows) == min(summary.flagged, 50)
    assert {"source_id", "label_name", "parasitized_probability"} <= set(rows[0])
    markdown = asyncio.run(latest("label-issues-summary")).data
    assert summary.review_table in markdown and "label_issues/gallery.png" in markdown
    _, run = _review_run(uri)
    assert run.info.run_id in markdown


def test_training_with_exclusion_trains_on_the_dataset_without_them(reviewed):
    dataset, summary, _, uri, tracking, _ = reviewed
    review = pd.read_parquet(summary.review_table)
    flagged = set(review.loc[review["flagged"], "source_id"])
    training = TRAINING.model_copy(update={"epochs": 1, "exclude_label_issues": True})
    (run,) = train(dataset.uri, ["simple"], training, tracking)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="dataset/manifest.json", tracking_uri=uri
    )
    manifest = json.loads(Path(local).read_text())
    assert manifest[EXCLUDED_FIELD]["cells"] == len(flagged)
    assert manifest[EXCLUDED_FIELD]["review_table"] == summary.review_table
    trained_on = open_dataset(Path(summary.review_table).parents[1] / "datasets" / manifest["name"])
    kept, before = _cells(trained_on), _cells(dataset)
    assert not flagged & set(kept["source_id"])
    assert set(kept["source_id"]) == set(before["source_id"]) - flagged
    assert _test_cells(kept) == _test_cells(before)  # every test cell, in order
    assert MlflowClient(uri).get_run(run.run_id).data.params["exclude_label_issues"] == "True"


def test_retrain_can_review_the_labels_first_and_train_without_the_flagged(reviewed):
    from flows.retrain import retrain

    *_, uri, tracking, cells = reviewed
    data = IngestConfig(source=f"folder:{cells}", image_size=28)  # a dataset of its own
    result = retrain(
        data,
        ["simple"],
        TRAINING.model_copy(update={"epochs": 2}),
        tracking,
        find_label_issues=True,
        label_issues=LabelIssuesConfig(folds=2, variant="simple", gallery_size=4),
    )
    client = MlflowClient(uri)
    (run,) = result.runs
    local = mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="dataset/manifest.json", tracking_uri=uri
    )
    excluded = json.loads(Path(local).read_text())[EXCLUDED_FIELD]
    assert excluded["dataset"] == result.dataset.name
    review_runs = client.search_runs(
        [client.get_experiment_by_name("label-issues-test").experiment_id],
        f"tags.stage = 'label-issues' and params.dataset = '{result.dataset.name}'",
    )
    (review_run,) = review_runs
    parent = client.get_run(run.run_id).data.tags["mlflow.parentRunId"]
    assert review_run.data.tags["mlflow.parentRunId"] == parent  # beside the variant's run
    assert excluded["cells"] == review_run.data.metrics["flagged"]


def _cells(dataset) -> pd.DataFrame:
    return pd.concat(
        pd.read_parquet(path, columns=["source_id", "split"]) for path in dataset.shard_paths
    )


def _test_cells(cells: pd.DataFrame) -> list[str]:
    return cells[cells["split"] == "test"]["source_id"].tolist()


def test_a_second_review_of_the_same_dataset_reuses_the_kept_table(reviewed):
    dataset, summary, _, uri, tracking, _ = reviewed
    review_config = LabelIssuesConfig(folds=2, variant="simple", gallery_size=8)
    again = label_issues(dataset.uri, review_config, TRAINING, tracking)
    assert again.reused and not summary.reused
    assert again.model_dump(exclude={"reused"}) == summary.model_dump(exclude={"reused"})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("label-issues-test")
    runs = client.search_runs([experiment.experiment_id], "metrics.reused = 1")
    assert [run.data.params["dataset"] for run in runs] == [dataset.name]
