"""Two `retrain` runs at once on the same data and registry: both finish, the dataset is
written once, and `champion` ends on the better model (the later promotion compared itself
with the earlier one, not with the champion both started from)."""

import json
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from app.stack_settings import QUIET_ENVIRONMENT
from tests.faults.conftest import data_dir_of
from tests.faults.harness import prefect_log_text
from tests.integration.servers import REPO, free_port

pytestmark = pytest.mark.slow

WEBHOOK_TOKEN = "T000-B000-webhook-secret"
RETRAIN = """
import json, sys
from cnn.config import IngestConfig, TrainConfig
from flows.retrain import retrain
result = retrain(
    data=IngestConfig(source="synthetic", limit=60, image_size=24),
    variants=["simple"],
    training=TrainConfig(epochs=3, batch_size=16, patience=20, learning_rate=float(sys.argv[1])),
)
print(json.dumps(result.model_dump(mode="json")))
"""


def test_two_retrains_at_once_write_the_dataset_once_and_keep_the_better_champion(fault_env):
    webhook = f"http://127.0.0.1:{free_port()}/hooks/{WEBHOOK_TOKEN}"  # nobody listens
    env = {**os.environ, **QUIET_ENVIRONMENT, **fault_env, "MALARIA_WEBHOOK_URL": webhook}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RETRAIN, learning_rate],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for learning_rate in ("0.001", "0.004")
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    logs = "".join(stdout + stderr for stdout, stderr in outputs)
    logs += prefect_log_text(fault_env["PREFECT_API_URL"])
    assert "notification to MALARIA_WEBHOOK_URL was not delivered" in logs  # it was tried
    assert WEBHOOK_TOKEN not in logs

    assert sorted(result["dataset"]["cache_hit"] for result in results) == [False, True]
    assert len(list((data_dir_of(fault_env) / "datasets").glob("synthetic-*"))) == 1

    mlflow.set_tracking_uri(fault_env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    versions = sorted(
        client.search_model_versions("name = 'malaria-cnn'"),
        key=lambda version: float(version.tags["promotion.decided_at"]),
    )
    assert len(versions) == 2
    first, second = versions
    assert first.tags["promotion.champion_version"] == "none"  # the registry was empty
    assert second.tags["promotion.champion_version"] == str(first.version)  # saw the first's win
    accuracy = {
        version.version: client.get_run(version.run_id).data.metrics["test_accuracy"]
        for version in versions
    }
    better = second if accuracy[second.version] > accuracy[first.version] else first
    champion = client.get_model_version_by_alias("malaria-cnn", "champion")
    assert champion.version == better.version
    print(
        f"promotions: version {first.version}, then {second.version}; test accuracy "
        f"{accuracy}; champion {champion.version}"
    )
