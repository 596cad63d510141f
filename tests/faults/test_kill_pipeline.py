"""SIGKILL a pipeline during training, its rerun during model logging, then rerun it again:
finished work survives (the dataset, the checkpointed epochs) and nothing half-done is
trusted (no half-logged model gets an alias, no run stays RUNNING)."""

import random
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.faults.conftest import data_dir_of
from tests.faults.harness import (
    checkpoint_epochs,
    finish,
    kill_group,
    malaria,
    tiny_pipeline,
    wait_for,
)

pytestmark = pytest.mark.slow

EPOCHS = 6
ARGUMENTS = tiny_pipeline(EPOCHS)


@pytest.mark.parametrize("seed", range(1))
def test_killed_training_and_killed_logging_lose_nothing_finished(seed, fault_env):
    rng = random.Random(seed)
    data_dir = data_dir_of(fault_env)

    # 1. Killed mid-training: a random moment after a random epoch's checkpoint.
    kill_after_epoch = rng.randint(1, EPOCHS - 2)
    process = malaria(ARGUMENTS, fault_env)
    wait_for(lambda: max(checkpoint_epochs(data_dir), default=0) >= kill_after_epoch, process, 300)
    time.sleep(rng.uniform(0.0, 0.1))  # an epoch takes about 0.2 s
    kill_group(process)
    survived_epochs = max(checkpoint_epochs(data_dir), default=0)
    assert survived_epochs >= kill_after_epoch

    # 2. The rerun resumes; killed again at a random moment once training has finished,
    # that is while the model is being logged (or just after).
    process = malaria(ARGUMENTS, fault_env)
    wait_for(lambda: EPOCHS in checkpoint_epochs(data_dir), process, 300)
    time.sleep(rng.uniform(0.0, 1.5))
    kill_group(process)
    logging_was_cut = bool(checkpoint_epochs(data_dir))  # cleared only once it is logged

    # 3. The last rerun completes.
    started = time.monotonic()
    final = finish(malaria(ARGUMENTS, fault_env), started)
    result = final.result
    (run,) = result["runs"]
    assert run["epochs_run"] == EPOCHS

    mlflow.set_tracking_uri(fault_env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("malaria-cnn")
    runs = client.search_runs([experiment.experiment_id])
    statuses = sorted(tracked.info.status for tracked in runs)
    assert set(statuses) <= {"FINISHED", "KILLED"}, statuses  # none left RUNNING

    finished = client.get_run(run["run_id"])
    loss_steps = [m.step for m in client.get_metric_history(run["run_id"], "loss")]
    assert sorted(loss_steps) == list(range(1, EPOCHS + 1))  # every epoch once, resumed or not
    # All epochs came from the checkpoint, unless the second kill came after the model was
    # logged (and its checkpoints cleared): then this run trained anew.
    assert finished.data.metrics["resumed_epochs"] in (0, EPOCHS)
    if logging_was_cut:
        assert finished.data.metrics["resumed_epochs"] == EPOCHS  # logged, not retrained

    for version in client.search_model_versions("name = 'malaria-cnn'"):
        if version.aliases:  # only the versions of finished runs are ever trusted
            assert client.get_run(version.run_id).info.status == "FINISHED", version
    champion = client.get_model_version_by_alias("malaria-cnn", "champion")
    assert champion.run_id in {tracked.info.run_id for tracked in runs}

    assert len(list((data_dir / "datasets").glob("synthetic-*"))) == 1
    assert checkpoint_epochs(data_dir) == []  # cleared once the model was logged
    print(
        f"seed {seed}: killed after epoch {kill_after_epoch} ({survived_epochs} checkpointed), "
        f"then {'during' if logging_was_cut else 'after'} model logging; final run resumed "
        f"{int(finished.data.metrics['resumed_epochs'])} epochs, {len(runs)} MLflow runs: "
        f"{statuses}"
    )
