"""The command's options are made from the config fields: every field is an option with its
own help and default, and no option of the hand-written parser was lost."""

import re

import pytest

from app.cli import _build_parser, main
from app.options import option_name
from cnn.config import IngestConfig, PromotionConfig, TrainConfig
from tracking.config import TrackingConfig

TRAIN_OPTIONS = [
    "--variants",
    "--epochs",
    "--batch-size",
    "--gpu-batch-size",
    "--learning-rate",
    "--weight-decay",
    "--schedule",
    "--warmup-epochs",
    "--patience",
    "--reduce-lr-patience",
    "--mixed-precision",
    "--augment",
    "--tta",
    "--target-sensitivity",
    "--ensemble",
    "--checkpoints",
    "--transfer-weights",
    "--work-pool",
    "--promotion-metric",
    "--min-margin",
    "--experiment",
    "--registered-model",
    "--seed",
    "--json",
]
INGEST_OPTIONS = ["--source", "--image-size", "--limit", "--split", "--seed", "--json"]
OPTIONS_BEFORE = {
    "pipeline": INGEST_OPTIONS + TRAIN_OPTIONS,
    "ingest": INGEST_OPTIONS,
    "train": ["--dataset", *TRAIN_OPTIONS],
    "evaluate": ["--model", "--dataset", "--experiment", "--json"],
    "predict": ["--model", "--input", "--output", "--batch-size", "--json"],
    "stack": ["--host", "--prefect-port", "--mlflow-port", "--state-dir", "--json"],
    "variants": ["--image-size", "--json"],
}
"""Every option of each subcommand in the hand-written parser this one replaced."""


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", OPTIONS_BEFORE)
def test_every_subcommand_keeps_its_options(command, capsys):
    listed = set(re.findall(r"--[a-z][a-z-]*", _help(command, capsys)))
    assert set(OPTIONS_BEFORE[command]) <= listed


def test_every_config_field_is_an_option_with_its_description_and_default(capsys):
    text = _help("pipeline", capsys)
    for model in (IngestConfig, TrainConfig, TrackingConfig, PromotionConfig):
        for name, field in model.model_fields.items():
            if name == "variant_options":  # a dict: set by --transfer-weights
                continue
            option = option_name(name)
            options = text[text.index("options:") :]
            listed = re.search(rf" {re.escape(option)}[ ,]", options)
            assert listed, option
            following = re.search(
                r" --(?!no-)[a-z][a-z-]*( [A-Z{]|, --no-)", options[listed.end() :]
            )
            entry = options[listed.start() : listed.end() + following.start()]  # its own help
            assert field.description.split()[1] in entry, option  # its own help text
            default = field.get_default(call_default_factory=True)
            shown = "none" if default is None else str(default).lower()
            assert f"(default {shown}" in entry.lower(), option


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--patience", "none"], "patience", None),
        (["--target-sensitivity", "none"], "target_sensitivity", None),
        (["--target-sensitivity", "0.95"], "target_sensitivity", 0.95),
        (["--no-tta"], "test_time_augmentation", False),
        (["--augment", "lecture"], "augment", "lecture"),
    ],
)
def test_options_set_their_fields(argv, field, value):
    from app.options import given

    args = _build_parser().parse_args(["train", "--dataset", "d", *argv])
    assert given(args, TrainConfig) == {field: value}
    assert getattr(TrainConfig(**given(args, TrainConfig)), field) == value


def test_an_option_left_out_keeps_the_configs_default():
    from app.options import given

    args = _build_parser().parse_args(["pipeline"])
    assert given(args, TrainConfig) == {} and given(args, IngestConfig) == {}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--dataset", "d", "--augment", "mixup"], "--augment"),
        (["train", "--dataset", "d", "--schedule", "linear"], "--schedule"),
        (["train", "--dataset", "d", "--patience", "soon"], "--patience"),
    ],
)
def test_a_bad_value_exits_2_naming_the_option(argv, named, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and named in error[0]
