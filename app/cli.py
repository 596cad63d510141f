"""The `malaria` command: a thin layer over the flows.

Every command exits 0 on success, and otherwise prints one line naming the bad parameter or
file and exits non-zero: 2 for input the user can fix (an option, a file, a dataset, a
column), 1 for other failures. Tracebacks are for `--debug`. With `--json`, the last line of
standard output is one JSON object.
"""

import argparse
import atexit
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from app import commands
from app.commands import EXIT_FAILURE, EXIT_USAGE, CommandError
from app.options import add_config_options
from app.printing import print_human


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message}", EXIT_USAGE)


def run() -> NoReturn:
    """The `malaria` console script: `main`, then an exit that skips the interpreter's teardown.

    The exit handlers still run (Prefect's last logs and events, the temporary server's stop);
    what is skipped comes after them: freeing every module and object one by one, which with
    TensorFlow loaded takes seconds and writes nothing.
    """
    exit_code: list[int] = []
    atexit.register(_exit_now, exit_code)  # the first registered of ours runs last
    exit_code.append(main())
    sys.exit(exit_code[0])


def _exit_now(exit_code: list[int]) -> None:
    if exit_code:  # else `main` raised (argparse's --help): the usual exit
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code[0])


def main(argv: Sequence[str] | None = None) -> int:
    from cnn.errors import InputError

    _quiet_environment()
    parser = _build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        _check_settings()
        if args.runs_flows:
            _use_running_stack()
        result = args.handler(args)
    except CommandError as error:
        return _report(error, error.exit_code, args)
    except InputError as error:  # raised inside a flow: bad input all the same
        return _report(error, EXIT_USAGE, args)
    except KeyboardInterrupt:
        print("malaria: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failed stage: one line, no traceback wall
        return _report(error, EXIT_FAILURE, args, f"{type(error).__name__}: ")
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_human(args.command, result)
    return 0


def _report(error: Exception, exit_code: int, args: Any, prefix: str = "") -> int:
    """Print the error as one line (after its traceback with `--debug`); return the exit code."""
    if getattr(args, "debug", False):
        traceback.print_exception(error, file=sys.stderr)
    print(f"malaria: error: {prefix}{_one_line(error)}", file=sys.stderr)
    return exit_code


def _check_settings() -> None:
    """Read the settings once before any work: a bad environment variable is a usage error
    (`SettingsError`, an `InputError`) that names it."""
    from cnn.settings import settings

    settings()


def _one_line(error: Exception) -> str:
    """The error's message with its line breaks folded (a flow's may list several problems)."""
    return " ".join(str(error).split())


def _use_running_stack() -> None:
    """Commands that run flows use the local stack when it is up and nothing else is named."""
    from app.prefect_api import adopt_running_stack
    from app.stack_settings import StackSettings

    state_file = StackSettings().state_file
    if adopt_running_stack(state_file):
        print(f"malaria: using the stack recorded in {state_file}", file=sys.stderr)


def _quiet_environment() -> None:
    from app.stack_settings import QUIET_ENVIRONMENT, QUIET_LOGGERS

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _build_parser() -> argparse.ArgumentParser:
    from app.stack_settings import StackSettings
    from cnn.config import (
        DEFAULT_FLAG_PARASITEMIA,
        DEFAULT_GROUPING,
        FOLD_TRAINING_IGNORES,
        PREDICT_BATCH,
        IngestConfig,
        LabelIssuesConfig,
        PromotionConfig,
        TrainConfig,
    )
    from tracking.config import DEFAULT_MODEL_URI, TrackingConfig

    parser = _Parser(prog="malaria", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pipeline = subcommands.add_parser("pipeline", help="ingest, train and evaluate, end to end")
    add_config_options(pipeline, IngestConfig, TrainConfig, TrackingConfig, PromotionConfig)
    _add_variant_options(pipeline)
    pipeline.set_defaults(handler=commands.run_pipeline)

    ingest = subcommands.add_parser("ingest", help="turn a source into a Parquet dataset")
    add_config_options(ingest, IngestConfig, required={"source"})
    ingest.set_defaults(handler=commands.run_ingest)

    train = subcommands.add_parser("train", help="train variants on an ingested dataset")
    train.add_argument("--dataset", required=True, help="path of an ingested dataset")
    add_config_options(train, TrainConfig, TrackingConfig, PromotionConfig)
    _add_variant_options(train)
    train.set_defaults(handler=commands.run_train)

    evaluate = subcommands.add_parser(
        "evaluate", help="re-score any model on a dataset's test split"
    )
    evaluate.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/NAME/3")
    evaluate.add_argument("--dataset", required=True, help="path of an ingested dataset")
    add_config_options(evaluate, TrackingConfig, only={"experiment"})
    evaluate.set_defaults(handler=commands.run_evaluate)

    review = subcommands.add_parser(
        "label-issues", help="find likely label errors among a dataset's train and validation cells"
    )
    review.add_argument("--dataset", required=True, help="path of an ingested dataset")
    not_for_folds = FOLD_TRAINING_IGNORES | {"registered_model"}
    add_config_options(
        review,
        LabelIssuesConfig,
        TrainConfig,
        TrackingConfig,
        only={
            *LabelIssuesConfig.model_fields,
            *TrainConfig.model_fields,
            *TrackingConfig.model_fields,
        }
        - not_for_folds,
    )
    review.set_defaults(handler=commands.run_label_issues)

    predict = subcommands.add_parser("predict", help="score images with a model, write Parquet")
    predict.add_argument(
        "--model", default=DEFAULT_MODEL_URI, help=f"MLflow model URI (default {DEFAULT_MODEL_URI})"
    )
    predict.add_argument(
        "--input", required=True, help="folder of images, dataset directory, or Parquet file"
    )
    predict.add_argument("--output", required=True, help="Parquet file to write")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=PREDICT_BATCH,
        help=f"images scored per batch (default {PREDICT_BATCH})",
    )
    predict.add_argument(
        "--group-by",
        default=DEFAULT_GROUPING,
        help="which cells make one patient in the per-patient table: prefix (the NIH file-name "
        "prefix), folder (the image's folder) or column:NAME of a Parquet input "
        f"(default {DEFAULT_GROUPING})",
    )
    predict.add_argument(
        "--flag-parasitemia",
        type=float,
        default=DEFAULT_FLAG_PARASITEMIA,
        help="flag a patient whose estimated parasitemia is above this share of cells "
        f"(default {DEFAULT_FLAG_PARASITEMIA})",
    )
    predict.set_defaults(handler=commands.run_predict)

    stack = subcommands.add_parser(
        "stack", help="start, inspect or stop the local service stack (servers, pools, workers)"
    )
    stack.add_argument(
        "action",
        choices=("up", "down", "status", "alerts"),
        help="alerts: (re)install the server's automations on $PREFECT_API_URL (or the stack's)",
    )
    add_config_options(
        stack,
        StackSettings,
        only=set(StackSettings.model_fields) - {"mlflow_store", "data_dir"},
    )
    stack.set_defaults(handler=commands.run_stack)

    variants = subcommands.add_parser("variants", help="list the CNN variants")
    add_config_options(variants, IngestConfig, only={"image_size"})
    variants.set_defaults(handler=commands.run_variants)
    for command in subcommands.choices.values():
        command.add_argument("--json", action="store_true", help="end with one JSON line")
        command.add_argument(
            "--debug", action="store_true", help="print the tracebacks of errors, Prefect's too"
        )
        command.set_defaults(runs_flows=command not in (stack, variants))
    return parser


def _add_variant_options(parser: argparse.ArgumentParser) -> None:
    """Which variants train, where, and the transfer variant's weights (flow parameters and
    variant options, not config fields)."""
    from cnn.config import DEFAULT_VARIANTS, VariantNames

    parser.add_argument(
        "--variants",
        help=f"{_description(VariantNames)}, comma-separated "
        f"(default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--transfer-weights",
        default="imagenet",
        help="weights of the transfer variant's backbone: imagenet, none, or a weights file "
        "(default imagenet)",
    )
    parser.add_argument("--work-pool", help="train each variant on a Prefect work pool's workers")


def _description(annotated: Any) -> str:
    """The description of an `Annotated[..., Field(description=...)]` type."""
    return next(meta.description for meta in annotated.__metadata__ if hasattr(meta, "description"))


if __name__ == "__main__":
    sys.exit(main())
