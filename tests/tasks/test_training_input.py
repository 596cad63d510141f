"""Runs that start at once on a new dataset all get it as their training input."""

import threading

import mlflow

from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import SyntheticSource
from tracking.training import dataset_input, log_dataset_inputs

RUNS = 8


def test_runs_logging_a_new_dataset_at_once_all_get_it(tmp_path, mlflow_uri):
    config = IngestConfig(source="synthetic", image_size=16, limit=40)
    dataset, _ = build_dataset(SyntheticSource(count=40), config, tmp_path / "datasets")
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("inputs")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(RUNS)]
    together = threading.Barrier(RUNS)
    errors: list[Exception] = []

    def log(run_id: str) -> None:
        together.wait()
        try:
            log_dataset_inputs(run_id, dataset_input(dataset, "training"))
        except Exception as error:  # collected: a thread's exception would be lost
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run_id in run_ids:
        (logged,) = client.get_run(run_id).inputs.dataset_inputs
        assert logged.dataset.digest == dataset.manifest.fingerprint
