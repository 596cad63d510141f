"""The MLflow server away at start, away for a while mid-run, and gone for good while the
model is being logged: a clear error in seconds, retries that bridge an outage, and a trained
model that is never lost."""

import re
import threading
from pathlib import Path

import keras
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cnn.models import augmentation, variants  # noqa: F401  (registers the kept model's custom layers)
from tests.faults.conftest import data_dir_of
from tests.faults.harness import (
    DroppingProxy,
    checkpoint_epochs,
    prefect_log_text,
    run_malaria,
    tiny_pipeline,
)
from tests.integration.servers import free_port, mlflow_server

pytestmark = pytest.mark.slow

EPOCHS = 5
ARGUMENTS = tiny_pipeline(EPOCHS)
QUICK_GIVE_UP = {  # MLflow's client retries each call for ~4 minutes by default
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MALARIA_IO_RETRY_DELAY_SECONDS": "2",
}


def test_an_unreachable_server_fails_the_run_at_once_naming_it(fault_env):
    port = free_port()  # nothing listens there
    uri = f"http://trainer:s3cret-token@127.0.0.1:{port}"
    run = run_malaria(ARGUMENTS, {**fault_env, "MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert run.returncode == 1
    assert run.seconds < 120  # the check gives up after 15 s; MLflow's retries take minutes
    error = run.stderr.strip().splitlines()[-1]
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in error
    assert "s3cret-token" not in run.stderr + run.stdout
    assert not (data_dir_of(fault_env) / "datasets").exists()  # failed before any work


@pytest.fixture(scope="module")
def shared_mlflow_server(tmp_path_factory):
    """One real MLflow server for the module's tests (each its own experiment and model)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def proxied_server(shared_mlflow_server, fault_env, request):
    """The MLflow server behind a proxy that the test can cut; the `malaria` arguments that
    keep the test's runs and models apart from the other tests'."""
    name = request.node.name[:60]
    arguments = [*ARGUMENTS, "--experiment", name, "--registered-model", name]
    with DroppingProxy(shared_mlflow_server) as proxy:
        yield proxy, {**fault_env, **QUICK_GIVE_UP, "MLFLOW_TRACKING_URI": proxy.url}, arguments


SECRET = "s3cret-pass"


def test_an_outage_mid_training_is_bridged_and_loses_no_epoch(proxied_server):
    proxy, env, arguments = proxied_server
    epoch_logs = []

    def cut_at_second_epoch(method: str, path: str, body: bytes) -> None:
        if path.endswith("/runs/log-batch") and b'"val_loss"' in body:  # an epoch's
            epoch_logs.append(path)
            if len(epoch_logs) == 2:
                proxy.down = True
                threading.Timer(15.0, lambda: setattr(proxy, "down", False)).start()

    proxy.on_request = cut_at_second_epoch
    with_password = proxy.url.replace("http://", f"http://trainer:{SECRET}@")
    run = run_malaria(arguments, {**env, "MLFLOW_TRACKING_URI": with_password})
    (variant,) = run.result["runs"]
    assert proxy.dropped > 0
    logs = run.stdout + run.stderr + prefect_log_text(env["PREFECT_API_URL"])
    assert re.search(r"Cannot log epoch \d+'s metrics", logs)  # the outage was seen, survived
    assert SECRET not in logs

    mlflow.set_tracking_uri(proxy.url)
    client = MlflowClient()
    steps = sorted(m.step for m in client.get_metric_history(variant["run_id"], "val_loss"))
    assert steps == list(range(1, EPOCHS + 1))  # kept while the server was away, then logged
    assert client.get_run(variant["run_id"]).info.status == "FINISHED"
    champion = client.get_model_version_by_alias(arguments[-1], "champion")
    assert champion.run_id == variant["run_id"]


def test_a_model_that_cannot_be_logged_is_kept_and_logged_by_the_rerun(proxied_server):
    proxy, env, arguments = proxied_server
    data_dir = data_dir_of(env)

    def cut_when_the_model_is_logged(method: str, path: str, body: bytes) -> None:
        if method == "POST" and path.endswith("/logged-models"):
            proxy.down = True  # and stays down

    proxy.on_request = cut_when_the_model_is_logged
    failed = run_malaria(arguments, {**env, "MALARIA_IO_RETRIES": "1"})
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    assert "ModelNotLoggedError" in error and "it is kept at " in error
    kept = Path(error.partition("it is kept at ")[2].partition(";")[0])
    assert kept.is_file() and kept.is_relative_to(data_dir / "checkpoints")
    model = keras.saving.load_model(kept)
    assert model.input_shape == (None, 24, 24, 3)
    assert EPOCHS in checkpoint_epochs(data_dir)

    proxy.down, proxy.on_request = False, lambda method, path, body: None  # the server is back
    rerun = run_malaria(arguments, env)
    (variant,) = rerun.result["runs"]
    assert variant["epochs_run"] == EPOCHS
    mlflow.set_tracking_uri(proxy.url)
    metrics = MlflowClient().get_run(variant["run_id"]).data.metrics
    assert metrics["resumed_epochs"] == EPOCHS  # logged from the checkpoint, not retrained
    assert checkpoint_epochs(data_dir) == []
