"""The pipeline flow against a real Prefect server (test harness) and a real MLflow store."""

import json
from pathlib import Path

import mlflow
import mlflow.keras
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cnn.config import IngestConfig, TrainConfig
from cnn.data.dataset import load_split, open_dataset, split_groups
from cnn.evaluation.calibration import with_temperature
from cnn.evaluation.metrics import (
    evaluate_predictions,
    predicted_labels,
    threshold_for_sensitivity,
)
from cnn.evaluation.scoring import in_batches, parasitized_probability, predict_split
from cnn.labels import PARASITIZED
from cnn.models.augmentation import inner_network, model_temperature
from flows.pipeline import pipeline
from flows.predict import predict
from flows.train import train_variant
from tracking.config import TrackingConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def finished_pipeline(tmp_path_factory, prefect_harness):
    """One real pipeline run on tiny synthetic data, shared by the assertions below."""
    root = tmp_path_factory.mktemp("pipeline")
    monkeypatch = pytest.MonkeyPatch()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MALARIA_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the training is short
    result = pipeline(
        IngestConfig(source="synthetic", limit=200, image_size=40),
        ["simple"],
        TrainConfig(epochs=2, batch_size=32, patience=5, calibrate=True),
        TrackingConfig(experiment="pipeline-test"),
    )
    yield result, uri
    monkeypatch.undo()
    mlflow.set_tracking_uri(None)


def test_pipeline_writes_a_dataset_under_the_data_dir(finished_pipeline):
    result, _ = finished_pipeline
    dataset = open_dataset(result.dataset.path)
    assert dataset.rows == result.dataset.rows == 200
    assert "/data/datasets/synthetic-40px-" in result.dataset.path


def test_run_is_finished_with_params_epoch_metrics_and_test_scores(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    client = MlflowClient(uri)
    run = client.get_run(run_result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["variant"] == "simple"
    assert run.data.params["epochs"] == "2"
    assert int(run.data.params["parameters"]) == run_result.parameters
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [metric.step for metric in history] == list(range(1, run_result.epochs_run + 1))
    for name in ("test_accuracy", "test_sensitivity", "test_specificity", "test_roc_auc"):
        assert 0.0 <= run.data.metrics[name] <= 1.0
    assert run.data.metrics["test_accuracy"] == pytest.approx(run_result.test_accuracy)


def test_confusion_matrix_artifact_uses_the_lectures_layout(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    local = mlflow.artifacts.download_artifacts(
        run_id=run_result.run_id, artifact_path="evaluation/test_scores.json", tracking_uri=uri
    )
    scores = json.loads(Path(local).read_text())
    (tp, fn), (fp, tn) = scores["confusion_matrix"]
    test_counts = result.dataset.counts["test"]
    assert tp + fn == test_counts["parasitized"]  # row true:yes
    assert fp + tn == test_counts["uninfected"]  # row true:no
    assert scores["accuracy"] == pytest.approx((tp + tn) / (tp + fn + fp + tn))


def test_the_prefect_runs_are_named_and_tagged_by_what_they_ran(finished_pipeline):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    result, uri = finished_pipeline
    (run_result,) = result.runs
    label = f"synthetic-40px-{Path(result.dataset.path).name.rsplit('-', 1)[1][:4]}"
    flow_run_id = MlflowClient(uri).get_run(run_result.run_id).data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        variant_run = client.read_flow_run(flow_run_id)
        train_run = client.read_flow_run(
            client.read_task_run(variant_run.parent_task_run_id).flow_run_id
        )
        pipeline_run = client.read_flow_run(
            client.read_task_run(train_run.parent_task_run_id).flow_run_id
        )
        in_variant_run = FlowRunFilter(id=FlowRunFilterId(any_=[variant_run.id]))
        task_runs = client.read_task_runs(flow_run_filter=in_variant_run)
    task_names = {task.name for task in task_runs}
    assert variant_run.name == f"train-variant simple {label}"
    assert {"variant:simple", f"dataset:{label}"} <= set(variant_run.tags)
    # untagged, so that no task run waits on the server for tag concurrency limits
    assert [task.tags for task in task_runs] == [[]] * len(task_runs)
    assert train_run.name == f"train simple {label}"
    assert pipeline_run.name == "pipeline synthetic@40"
    assert "train-model simple" in task_names


def test_every_test_prediction_is_logged_and_agrees_with_the_scores(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    local = mlflow.artifacts.download_artifacts(
        run_id=run_result.run_id,
        artifact_path="evaluation/test_predictions.parquet",
        tracking_uri=uri,
    )
    predictions = pd.read_parquet(local)
    test_counts = result.dataset.counts["test"]
    assert len(predictions) == sum(test_counts.values())
    assert (predictions["label"] == 0).sum() == test_counts["parasitized"]
    threshold = run_result.test_scores["threshold"]
    predicted = predicted_labels(predictions["parasitized_probability"], threshold)
    assert np.mean(predicted == predictions["label"]) == pytest.approx(run_result.test_accuracy)


def test_logged_model_is_registered_and_reproduces_the_test_accuracy(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    mlflow.set_tracking_uri(uri)
    version = MlflowClient(uri).get_model_version("malaria-cnn", str(run_result.registered_version))
    assert version.run_id == run_result.run_id
    model_uri = f"models:/malaria-cnn/{run_result.registered_version}"
    model = mlflow.keras.load_model(model_uri)
    images, labels = load_split(open_dataset(result.dataset.path), "test")
    threshold = mlflow.models.get_model_info(model_uri).metadata["threshold"]
    predicted = predicted_labels(parasitized_probability(model, in_batches(images)), threshold)
    assert np.mean(predicted == labels) == pytest.approx(run_result.test_accuracy)


def test_the_operating_point_goes_from_validation_through_the_registry_to_labels(
    finished_pipeline, tmp_path
):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    mlflow.set_tracking_uri(uri)
    run = MlflowClient(uri).get_run(run_result.run_id)
    model_uri = f"models:/malaria-cnn/{run_result.registered_version}"
    dataset = open_dataset(result.dataset.path)
    keras_model = mlflow.keras.load_model(model_uri)
    validation = predict_split(keras_model, dataset, "validation")
    chosen = threshold_for_sensitivity(
        validation.labels, validation.parasitized_probability, TrainConfig().target_sensitivity
    )
    metadata = mlflow.models.get_model_info(model_uri).metadata
    threshold = metadata["threshold"]
    assert threshold == pytest.approx(chosen)  # chosen on the calibrated scores
    assert metadata["temperature"] == pytest.approx(model_temperature(keras_model))
    at_threshold = evaluate_predictions(
        validation.labels, validation.parasitized_probability, threshold
    )
    assert metadata["validation_sensitivity"] == pytest.approx(at_threshold.sensitivity)
    assert metadata["validation_specificity"] == pytest.approx(at_threshold.specificity)
    assert run.data.metrics["operating_threshold"] == pytest.approx(threshold)
    assert run_result.test_scores["threshold"] == pytest.approx(threshold)
    images, _ = load_split(dataset, "test")
    parasitized = 1 - keras_model.predict(images, verbose=0).reshape(-1)  # the raw output
    expected = predicted_labels(parasitized, threshold)
    served = mlflow.pyfunc.load_model(model_uri).predict(images)
    np.testing.assert_array_equal(served["predicted_label"], expected)
    np.testing.assert_allclose(served["parasitized_probability"], parasitized, atol=1e-6)
    summary = predict(result.dataset.path, str(tmp_path / "scored.parquet"), model_uri)
    scored = pd.read_parquet(summary.output)  # every split of the dataset
    labels = predicted_labels(scored["parasitized_probability"], threshold)
    np.testing.assert_array_equal(scored["predicted_label"], labels)
    assert summary.parasitized == int(np.sum(labels == PARASITIZED))


def test_the_registered_model_averages_the_8_dihedral_views(finished_pipeline):
    result, uri = finished_pipeline
    mlflow.set_tracking_uri(uri)
    model = mlflow.keras.load_model(f"models:/malaria-cnn/{result.runs[0].registered_version}")
    network = inner_network(model)
    assert network is not model
    images, _ = load_split(open_dataset(result.dataset.path), "test")
    views = [np.rot90(images[:4], turns, axes=(1, 2)) for turns in range(4)]
    views += [np.rot90(images[:4, :, ::-1], turns, axes=(1, 2)) for turns in range(4)]
    mean = np.mean([network.predict(view, verbose=0) for view in views], axis=0)
    calibrated = with_temperature(mean, model_temperature(model))  # fitted on validation
    np.testing.assert_allclose(model.predict(images[:4], verbose=0), calibrated, atol=1e-5)


def logged_inputs(run: mlflow.entities.Run) -> dict[str, tuple[str, str]]:
    """A run's dataset inputs by context: (name, digest)."""
    return {
        {tag.key: tag.value for tag in logged.tags}["mlflow.data.context"]: (
            logged.dataset.name,
            logged.dataset.digest,
        )
        for logged in run.inputs.dataset_inputs
    }


def test_dataset_is_the_training_input_and_its_test_split_the_evaluation_input(
    finished_pipeline,
):
    result, uri = finished_pipeline
    run = MlflowClient(uri).get_run(result.runs[0].run_id)
    fingerprint = open_dataset(result.dataset.path).manifest.fingerprint
    assert logged_inputs(run) == {
        "training": (result.dataset.name, fingerprint),
        "evaluation": (f"{result.dataset.name}/test", fingerprint),
    }


def test_one_parent_run_holds_the_pipeline_with_each_variant_nested(finished_pipeline):
    result, uri = finished_pipeline
    (variant,) = result.runs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pipeline-test").experiment_id
    (parent,) = client.search_runs(
        [experiment], filter_string="attributes.run_name = 'pipeline synthetic@40'"
    )
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert [child.info.run_id for child in children] == [variant.run_id]
    assert parent.info.status == "FINISHED"
    assert logged_inputs(parent) == logged_inputs(children[0])  # the dataset and its test split
    assert parent.data.params["variants"] == "simple" and parent.data.params["epochs"] == "2"
    assert parent.data.tags["champion.version"] == str(result.champion.version)
    assert parent.data.tags["champion.outcome"] == "version 1 is the first champion"
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(variant.test_accuracy)
    comparison = client.load_table(experiment, "comparison.json", run_ids=[parent.info.run_id])
    assert comparison[["variant", "alias", "run_id"]].values.tolist() == [
        ["simple", "champion", variant.run_id]
    ]
    for run in (parent, children[0]):  # each links back to the flow run that made it
        tags = run.data.tags
        assert tags["prefect_flow_run_url"].endswith(f"/flow-run/{tags['prefect_flow_run_id']}")
    assert parent.data.tags["prefect_flow_run_name"] == "pipeline synthetic@40"


def test_a_training_run_records_system_metrics(finished_pipeline):
    result, uri = finished_pipeline
    metrics = MlflowClient(uri).get_run(result.runs[0].run_id).data.metrics
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_a_failing_variant_marks_its_mlflow_run_failed(tmp_path, mlflow_uri):
    with pytest.raises(ValueError, match="does not exist"):
        train_variant(str(tmp_path / "no-dataset"), "simple", TrainConfig(epochs=1))
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(TrackingConfig().experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"


def test_bad_flow_parameters_fail_before_any_work(data_dir):
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError):
        pipeline({"source": "synthetic", "image_size": 4})
    with pytest.raises(ParameterTypeError):
        pipeline(IngestConfig(source="synthetic"), ["no-such-variant"])
    assert not data_dir.exists()


def test_dataset_manifest_is_logged_with_the_run(finished_pipeline):
    result, uri = finished_pipeline
    local = mlflow.artifacts.download_artifacts(
        run_id=result.runs[0].run_id, artifact_path="dataset/manifest.json", tracking_uri=uri
    )
    manifest = json.loads(Path(local).read_text())
    assert manifest["name"] == result.dataset.name
    assert manifest["counts"] == result.dataset.counts
    assert manifest["source_image_sizes"]["width"]["min"] >= 60  # synthetic cells: 60..140 px


def test_ingest_leaves_prefect_artifacts_with_counts_and_validation(finished_pipeline):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result, _ = finished_pipeline

    async def latest(key: str):
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        return max(artifacts, key=lambda artifact: artifact.created)  # other tests made some

    validation = asyncio.run(latest("dataset-validation"))
    assert result.dataset.name in validation.data
    test_counts = result.dataset.counts["test"]
    assert (
        f"| test | {test_counts['parasitized']} | {test_counts['uninfected']} |" in validation.data
    )
    counts = asyncio.run(latest("dataset-counts"))
    assert "validation" in json.dumps(counts.data)


def test_logged_model_pins_what_loading_it_needs(finished_pipeline):
    import keras

    result, uri = finished_pipeline
    mlflow.set_tracking_uri(uri)
    logged = mlflow.get_logged_model(result.runs[0].model_uri.removeprefix("models:/"))
    local = mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/requirements.txt")
    requirements = Path(local).read_text().split()
    assert f"keras=={keras.__version__}" in requirements
    assert any(line.startswith(("tensorflow-cpu==", "tensorflow==")) for line in requirements)


REPORT_FILES = {
    "confusion_matrix.png",
    "roc_curve.png",
    "learning_curves.png",
    "filters.png",
    "feature_maps.png",
    "grad_cam.png",
    "reliability.png",
    f"augmentation_{TrainConfig().augment.replace('+', '-')}.png",
    "report.html",
}


def test_run_artifacts_hold_the_pictures_and_a_self_contained_report(finished_pipeline):
    result, uri = finished_pipeline
    client = MlflowClient(uri)
    run_id = result.runs[0].run_id
    listed = {Path(item.path).name for item in client.list_artifacts(run_id, "report")}
    assert listed >= REPORT_FILES
    evaluation = {Path(item.path).name for item in client.list_artifacts(run_id, "evaluation")}
    expected = {"confusion_matrix.png", "roc_curve.png", "confusion_matrix.json"}
    assert expected | {"reliability.png", "patients.json"} <= evaluation
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="report/report.html", tracking_uri=uri
    )
    page = Path(local).read_text()
    assert page.count('src="data:image/png;base64,') == sum(n.endswith(".png") for n in listed)
    assert "http://" not in page and "https://" not in page
    assert f"{result.runs[0].test_accuracy:.4g}" in page
    assert "Parasitemia per test patient" in page


def test_the_evaluation_scores_calibration_and_each_test_patients_parasitemia(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(
            run_id=run_result.run_id,
            artifact_path="evaluation/test_predictions.parquet",
            tracking_uri=uri,
        )
    )
    table = mlflow.artifacts.load_dict(
        f"{MlflowClient(uri).get_run(run_result.run_id).info.artifact_uri}/evaluation/patients.json"
    )
    patients = pd.DataFrame(table["data"], columns=table["columns"])
    dataset = open_dataset(result.dataset.path)
    assert sorted(patients["group"]) == sorted(set(split_groups(dataset, "test")))
    assert patients["cells"].sum() == len(predictions)
    labelled = (predictions["label"] == PARASITIZED).groupby(predictions["group"]).mean()
    assert patients.set_index("group")["labelled_parasitemia"].to_dict() == pytest.approx(
        labelled.to_dict()
    )
    metrics = MlflowClient(uri).get_run(run_result.run_id).data.metrics
    error = np.mean(np.abs(patients["parasitemia"] - patients["labelled_parasitemia"]))
    assert metrics["test_parasitemia_mae"] == pytest.approx(error)
    assert 0.0 <= metrics["test_ece"] <= 1.0 and "test_ece_uncalibrated" in metrics
    assert run_result.test_scores["brier"] == pytest.approx(metrics["test_brier"])


def test_first_model_becomes_champion_with_the_decision_tagged(finished_pipeline):
    result, uri = finished_pipeline
    (run_result,) = result.runs
    version = MlflowClient(uri).get_model_version_by_alias("malaria-cnn", "champion")
    assert int(version.version) == run_result.registered_version == result.champion.version
    assert version.tags["promotion.alias"] == "champion"
    assert version.tags["promotion.reason"] == "no champion yet"
    assert run_result.alias == "champion"


def test_registered_model_has_a_signature_and_an_input_example(finished_pipeline):
    result, uri = finished_pipeline
    mlflow.set_tracking_uri(uri)
    model_uri = f"models:/malaria-cnn/{result.runs[0].registered_version}"
    info = mlflow.models.get_model_info(model_uri)
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 40, 40, 3)
    example = mlflow.models.Model.load(model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(model_uri)
    )
    assert example.shape == (1, 40, 40, 3) and example.dtype == np.uint8


def test_run_summary_artifact_says_where_the_report_is(finished_pipeline):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result, _ = finished_pipeline

    async def latest():
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["run-report-simple"]))
            )
        return max(artifacts, key=lambda artifact: artifact.created)  # other tests made some

    summary = asyncio.run(latest()).data
    assert result.runs[0].run_id in summary
    assert "report/report.html" in summary
    assert "champion: no champion yet" in summary


def test_ingest_and_training_progress_artifacts_reach_100_percent(finished_pipeline):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    result, uri = finished_pipeline
    flow_run_id = MlflowClient(uri).get_run(result.runs[0].run_id).data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        (training,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["training-progress-simple"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        ingests = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-progress"]))
        )
    ingest = max(ingests, key=lambda artifact: artifact.created)  # other tests made some
    assert (training.type, training.data) == ("progress", 100.0)
    assert (ingest.type, ingest.data) == ("progress", 100.0)


@pytest.mark.parametrize("entry_flow", ["pipeline", "retrain", "train", "label-issues"])
def test_every_parameter_of_the_ui_forms_is_described(entry_flow):
    from prefect.utilities.callables import parameter_schema

    from flows.label_issues import label_issues
    from flows.retrain import retrain
    from flows.train import train

    flows = {"pipeline": pipeline, "retrain": retrain, "train": train, "label-issues": label_issues}
    properties = parameter_schema(flows[entry_flow].fn).model_dump()["properties"]
    assert [name for name, field in properties.items() if not field.get("description")] == []
