"""Variants fan out to a work pool: real Prefect server, two real workers, real MLflow server."""

import os
import subprocess
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest
from mlflow.tracking import MlflowClient

from cnn.config import IngestConfig, TrainConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import SyntheticSource
from flows.names import dataset_label
from tests.integration.servers import BIN, REPO, background, mlflow_server
from tracking.config import TrackingConfig

pytestmark = pytest.mark.slow

POOL = "gpu"


def test_two_variants_train_on_two_pool_workers_and_land_in_mlflow(
    tmp_path, monkeypatch, prefect_harness
):
    """The session's Prefect server (the harness's, a process of its own) stands in for the
    shared one; the workers are processes of their own."""
    from prefect.settings import PREFECT_API_URL

    config = IngestConfig(source="synthetic", image_size=32, limit=120)
    dataset, _ = build_dataset(SyntheticSource(count=120), config, tmp_path / "datasets")
    with ExitStack() as stack:
        tracking_uri = stack.enter_context(mlflow_server(tmp_path))
        env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "MLFLOW_TRACKING_URI": tracking_uri}
        subprocess.run(
            [str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "train-variant-gpu"],
            cwd=REPO,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        for name in ("worker-a", "worker-b"):
            command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name]
            stack.enter_context(background(command, tmp_path / f"{name}.log", env))

        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        from flows.train import train

        started = datetime.now(UTC)
        runs = train(
            str(dataset.path),
            ["simple", "lenet5"],
            TrainConfig(epochs=1, batch_size=32),
            TrackingConfig(experiment="fan-out"),
            work_pool=POOL,
        )
        flow_runs = _variant_flow_runs(since=started)

        assert sorted(run.variant for run in runs) == ["lenet5", "simple"]
        client = MlflowClient(tracking_uri)
        for run in runs:
            tracked = client.get_run(run.run_id)
            assert tracked.info.status == "FINISHED"
            assert tracked.data.params["variant"] == run.variant
            assert 0.0 <= tracked.data.metrics["test_accuracy"] <= 1.0
        assert len(flow_runs) == 2
        label = dataset_label(str(dataset.path))  # tests/flows/test_names.py checks it
        for flow_run in flow_runs:  # named and tagged as the variant they trained
            variant = flow_run.name.split(" ")[1]
            assert flow_run.name == f"train-variant {variant} {label}"
            assert {f"variant:{variant}", f"dataset:{label}"} <= set(flow_run.tags)
        assert {flow_run.work_pool_name for flow_run in flow_runs} == {POOL}
        assert all(flow_run.state.is_completed() for flow_run in flow_runs)
        assert all(flow_run.parent_task_run_id for flow_run in flow_runs)  # linked as subflows
        versions = client.search_model_versions("name = 'malaria-cnn'")
        assert len(versions) == 2


def _variant_flow_runs(since: datetime):
    """The `train-variant` flow runs started since then (the session's server holds others)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train-variant"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
        )
