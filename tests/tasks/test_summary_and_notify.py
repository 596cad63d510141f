"""The retrain summary's markdown and the webhook poster, without a flow around them."""

import logging
import socket

from cnn.data.dataset import DatasetRef
from tasks.notify import WEBHOOK_ENV, post_notification
from tasks.summary import retrain_markdown
from tracking.registry import ChampionRef, promoted, promotion_outcome
from tracking.runs import VariantRun, run_link

DATASET = DatasetRef(
    path="/data/datasets/folder-64px-abc",
    name="folder-64px-abc",
    rows=100,
    cache_hit=True,
    counts={
        "train": {"parasitized": 36, "uninfected": 36},
        "test": {"parasitized": 14, "uninfected": 14},
    },
    skipped=[],
    split_strategy="patient",
    seconds=0.3,
)


def variant_run(variant: str, run_id: str, accuracy: float, alias: str) -> VariantRun:
    return VariantRun(
        variant=variant,
        run_id=run_id,
        model_uri=f"models:/m-{run_id}",
        registered_version=3,
        parameters=1000,
        epochs_run=2,
        train_seconds=1.5,
        test_accuracy=accuracy,
        test_scores={"accuracy": accuracy, "sensitivity": 0.8, "specificity": 0.9},
        alias=alias,
        promotion_reason="accuracy 0.9100 vs the champion's 0.8000: better by more than 0",
    )


def champion(version: int) -> ChampionRef:
    return ChampionRef(model_uri="models:/malaria-cnn@champion", version=version, run_id="r")


def test_summary_has_the_dataset_a_row_per_variant_and_the_outcome():
    runs = [
        variant_run("resnet", "a" * 32, 0.91, "champion"),
        variant_run("simple", "b" * 32, 0.7, "challenger"),
    ]
    links = {"a" * 32: "[aaaaaaaa](http://mlflow:5000/#/experiments/1/runs/" + "a" * 32 + ")"}
    markdown = retrain_markdown(DATASET, runs, champion(2), champion(3), links)
    assert "`folder-64px-abc`: 100 images (train 72, test 28), reused" in markdown
    assert "| resnet | 0.910 | 0.800 | 0.900 | – | champion |" in markdown
    assert "http://mlflow:5000/#/experiments/1/runs/" + "a" * 32 in markdown
    assert "| " + "b" * 32 + " |" in markdown  # no link given: the run id
    assert markdown.rstrip().endswith("champion moved from version 2 to version 3")


def test_run_links_point_at_the_mlflow_ui_only_for_a_server():
    assert run_link("http://127.0.0.1:5000/", "7", "abc") == (
        "[abc](http://127.0.0.1:5000/#/experiments/7/runs/abc)"
    )
    assert run_link("sqlite:///mlflow/store/mlflow.db", "7", "abc") == "`abc`"


def test_promotion_outcome_and_whether_it_promoted():
    assert promotion_outcome(None, champion(1)) == "version 1 is the first champion"
    assert promotion_outcome(champion(1), champion(1)).startswith("champion stays version 1")
    assert promoted(None, champion(1)) and promoted(champion(1), champion(2))
    assert not promoted(champion(2), champion(2)) and not promoted(None, None)


def test_no_webhook_configured_posts_nothing(monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    assert post_notification("promoted", "text", {}) is False


def test_an_unreachable_webhook_is_a_warning_that_does_not_show_the_url(monkeypatch, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/T000/B000/secret-token"
    monkeypatch.setenv(WEBHOOK_ENV, url)
    assert post_notification("failed", "text", {}) is False
    (record,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "not delivered" in record.getMessage()
    assert "secret-token" not in record.getMessage() and str(port) not in record.getMessage()
