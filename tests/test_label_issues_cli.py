"""`malaria label-issues` and `--exclude-label-issues`: bad options and a missing review fail
before any flow, with one line naming the option (and the command to run)."""

import pytest

from app.cli import main
from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import SyntheticSource


@pytest.fixture
def dataset(data_dir):
    config = IngestConfig(source="synthetic", image_size=16, limit=60)
    built, _ = build_dataset(SyntheticSource(count=60), config, data_dir / "datasets")
    return built


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["label-issues"], "--dataset"),
        (["label-issues", "--dataset", "/no/such/set"], "/no/such/set"),
        (["label-issues", "--dataset", "D", "--folds", "1"], "--folds"),
        (["label-issues", "--dataset", "D", "--folds", "21"], "--folds"),
        (["label-issues", "--dataset", "D", "--variant", "vgg99"], "--variant"),
        (["label-issues", "--dataset", "D", "--filter-by", "vote"], "--filter-by"),
        (["label-issues", "--dataset", "D", "--gallery-size", "0"], "--gallery-size"),
        (["label-issues", "--dataset", "D", "--epochs", "0"], "--epochs"),
        (["label-issues", "--dataset", "D", "--exclude-label-issues"], "unrecognized"),
    ],
)
def test_bad_label_issues_options_fail_naming_them(argv, named, capsys, data_dir):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and named in error, error


def test_more_folds_than_the_patients_allow_fail_naming_folds(dataset, capsys):
    # 60 cells of 6 synthetic patients; the train and validation cells hold fewer
    assert main(["label-issues", "--dataset", dataset.uri, "--folds", "8"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("malaria: error: --folds:") and "lower folds" in error


def test_training_without_flagged_labels_needs_a_review_and_names_the_command(dataset, capsys):
    argv = ["train", "--dataset", dataset.uri, "--exclude-label-issues", "--json"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "--exclude-label-issues" in error
    assert f"malaria label-issues --dataset {dataset.uri}" in error


def test_the_options_come_from_the_configs(capsys):
    with pytest.raises(SystemExit):
        main(["label-issues", "--help"])
    shown = capsys.readouterr().out
    for option in ("--folds", "--variant", "--filter-by", "--gallery-size", "--epochs", "--seed"):
        assert option in shown
    assert "--exclude-label-issues" not in shown and "--ensemble" not in shown
    for command in ("train", "pipeline"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--exclude-label-issues" in capsys.readouterr().out
