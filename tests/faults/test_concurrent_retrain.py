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

from tests.faults.conftest import data_dir_of
from tests.integration.servers import QUIET, REPO

pytestmark = pytest.mark.slow

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
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RETRAIN, learning_rate],
            cwd=REPO,
            env={**os.environ, **QUIET, **fault_env},
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
