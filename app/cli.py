"""The `malaria` command: a thin layer over the flows.

Every command exits 0 on success, and otherwise prints one line naming the bad parameter or
file and exits non-zero. With `--json`, the last line of standard output is one JSON object.
"""

import argparse
import atexit
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from app.options import add_config_options, given, option_name
from app.printing import print_human

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A failure to report as one line and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    _quiet_environment()
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        _check_settings()
        if args.runs_flows:
            _use_running_stack()
        result = args.handler(args)
    except CommandError as error:
        print(f"malaria: error: {_one_line(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("malaria: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failed stage: one line, no traceback wall
        print(f"malaria: error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_human(args.command, result)
    return 0


def _check_settings() -> None:
    """Read the settings once before any work: a bad environment variable is a usage error
    that names it."""
    from cnn.settings import SettingsError, settings

    try:
        settings()
    except SettingsError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def _one_line(error: Exception) -> str:
    """The error's message with its line breaks folded (a flow's may list several problems)."""
    return " ".join(str(error).split())


def _run_flow(module: str, name: str, *args: Any, meanwhile: Callable | None = None) -> Any:
    """Import and run a flow against the Prefect server `connect_prefect` finds, or starts (a
    temporary one comes up while the flow imports and `meanwhile` runs: a slow usage check, or
    an import that the flow would otherwise wait for)."""
    from app.prefect_api import PrefectApiError, connect_prefect

    try:
        api = connect_prefect()
        if meanwhile is not None:
            meanwhile()
        flow = getattr(importlib.import_module(module), name)
        api.wait_ready()
        with api.flow_run_settings():
            return flow(*args)
    except PrefectApiError as error:
        raise CommandError(str(error)) from None


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
        PREDICT_BATCH,
        IngestConfig,
        PromotionConfig,
        TrainConfig,
    )
    from tracking.config import DEFAULT_MODEL_URI, TrackingConfig

    parser = _Parser(prog="malaria", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pipeline = commands.add_parser("pipeline", help="ingest, train and evaluate, end to end")
    add_config_options(pipeline, IngestConfig, TrainConfig, TrackingConfig, PromotionConfig)
    _add_variant_options(pipeline)
    pipeline.set_defaults(handler=_run_pipeline)

    ingest = commands.add_parser("ingest", help="turn a source into a Parquet dataset")
    add_config_options(ingest, IngestConfig, required={"source"})
    ingest.set_defaults(handler=_run_ingest)

    train = commands.add_parser("train", help="train variants on an ingested dataset")
    train.add_argument("--dataset", required=True, help="path of an ingested dataset")
    add_config_options(train, TrainConfig, TrackingConfig, PromotionConfig)
    _add_variant_options(train)
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser("evaluate", help="re-score any model on a dataset's test split")
    evaluate.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/NAME/3")
    evaluate.add_argument("--dataset", required=True, help="path of an ingested dataset")
    add_config_options(evaluate, TrackingConfig, only={"experiment"})
    evaluate.set_defaults(handler=_run_evaluate)

    predict = commands.add_parser("predict", help="score images with a model, write Parquet")
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
    predict.set_defaults(handler=_run_predict)

    stack = commands.add_parser(
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
        only={"host", "prefect_port", "mlflow_port", "mlflow_workers", "state_dir", "webhook_url"},
    )
    stack.set_defaults(handler=_run_stack)

    variants = commands.add_parser("variants", help="list the CNN variants")
    add_config_options(variants, IngestConfig, only={"image_size"})
    variants.set_defaults(handler=_run_variants)
    for command in commands.choices.values():
        command.add_argument("--json", action="store_true", help="end with one JSON line")
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


def _validated(build: Callable[[], Any], option: str | None = None) -> Any:
    """Build a config, turning a validation error into one line that names the option."""
    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = option or FIELD_OPTIONS.get(field) or option_name(field)
        message = f"{option}: {first['msg']} (got {first.get('input')!r})"
        raise CommandError(message, EXIT_USAGE) from error


FIELD_OPTIONS = {"variant_options": "--transfer-weights"}
"""Config fields that an option other than their own sets."""


def _ingest_config(args: argparse.Namespace):
    """The validated ingest settings and their source; a folder or zip source must exist in
    the NIH layout."""
    from cnn.config import IngestConfig
    from cnn.records import SourceError
    from cnn.sources import open_source

    config = _validated(lambda: IngestConfig(**given(args, IngestConfig)))
    try:
        return config, open_source(config.source, limit=config.limit)
    except SourceError as error:
        raise CommandError(f"--source: {error}", EXIT_USAGE) from error


def _train_settings(args: argparse.Namespace):
    """The validated variants, training, tracking and promotion settings."""
    from pydantic import TypeAdapter

    from cnn.config import (
        DEFAULT_VARIANTS,
        PromotionConfig,
        TrainConfig,
        VariantNames,
        check_ensemble_size,
    )
    from tracking.config import TrackingConfig

    names = args.variants.split(",") if args.variants is not None else DEFAULT_VARIANTS
    variants = [name.strip() for name in names if name.strip()]
    variants = _validated(
        lambda: TypeAdapter(VariantNames).validate_python(variants), option="--variants"
    )
    weights = None if args.transfer_weights.lower() == "none" else args.transfer_weights
    options = {"transfer": {"weights": weights}}
    training = _validated(lambda: TrainConfig(**given(args, TrainConfig), variant_options=options))
    try:
        check_ensemble_size(training.ensemble, variants)
    except ValueError as error:
        raise CommandError(f"--ensemble: {error}", EXIT_USAGE) from error
    tracking = _validated(lambda: TrackingConfig(**given(args, TrackingConfig)))
    promotion = _validated(lambda: PromotionConfig(**given(args, PromotionConfig)))
    return variants, training, tracking, promotion


def _dump(model: BaseModel | list[BaseModel]) -> Any:
    if isinstance(model, list):
        return [item.model_dump(mode="json") for item in model]
    return model.model_dump(mode="json")


def _run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    config, _ = _ingest_config(args)
    variants, training, tracking, promotion = _train_settings(args)
    result = _run_flow(
        "flows.pipeline",
        "pipeline",
        config,
        variants,
        training,
        tracking,
        promotion,
        args.work_pool,
    )
    return _dump(result)


def _run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """A dataset already ingested from the same source and settings is the answer as it is:
    nothing runs, so no flow run is made (nor a Prefect server started)."""
    from cnn.dataset import DatasetRef, find_dataset
    from cnn.settings import datasets_dir
    from cnn.splits import import_splitters

    started = time.perf_counter()
    config, source = _ingest_config(args)
    existing = find_dataset(source, config, datasets_dir())
    if existing is not None:
        return _dump(DatasetRef.of(existing, True, time.perf_counter() - started))
    return _dump(_run_flow("flows.ingest", "ingest", config, meanwhile=import_splitters))


def _open_dataset_option(path: str):
    from cnn.dataset import open_dataset

    try:
        return open_dataset(path)
    except ValueError as error:
        raise CommandError(f"--dataset: {error}", EXIT_USAGE) from error


def _run_train(args: argparse.Namespace) -> dict[str, Any]:
    variants, training, tracking, promotion = _train_settings(args)
    dataset = _open_dataset_option(args.dataset)
    runs = _run_flow(
        "flows.train",
        "train",
        str(dataset.path),
        variants,
        training,
        tracking,
        promotion,
        args.work_pool,
    )
    return {"runs": _dump(runs)}


def _check_model_option(model_uri: str) -> None:
    """A registered model's name and alias or version must exist before any flow starts."""
    from tracking.models import ModelNotFoundError, check_model_uri
    from tracking.store import configure_tracking

    configure_tracking()
    try:
        check_model_uri(model_uri)
    except ModelNotFoundError as error:
        raise CommandError(f"--model: {error}", EXIT_USAGE) from error


def _run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from tracking.config import TrackingConfig

    dataset = _open_dataset_option(args.dataset)
    tracking = _validated(lambda: TrackingConfig(**given(args, TrackingConfig)))
    return _run_flow(
        "flows.evaluate",
        "evaluate",
        args.model,
        str(dataset.path),
        tracking,
        meanwhile=lambda: _check_model_option(args.model),
    )


def _run_predict(args: argparse.Namespace) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from cnn.config import PredictBatch

    if not Path(args.input.removeprefix("folder:")).exists():
        raise CommandError(f"--input: {args.input!r} does not exist", EXIT_USAGE)
    _validated(
        lambda: TypeAdapter(PredictBatch).validate_python(args.batch_size), option="--batch-size"
    )
    if Path(args.output).is_dir():
        raise CommandError(
            f"--output: {args.output!r} is a directory; name a .parquet file", EXIT_USAGE
        )
    summary = _run_flow(
        "flows.predict",
        "predict",
        args.input.removeprefix("folder:"),
        args.output,
        args.model,
        args.batch_size,
        meanwhile=lambda: _check_model_option(args.model),
    )
    return _dump(summary)


def _run_stack(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from app.stack import StackError, stack_alerts, stack_down, stack_status, stack_up
    from app.stack_settings import StackSettings

    settings = _validated(lambda: StackSettings(**given(args, StackSettings)))
    try:
        if args.action == "up":
            return {"action": "up", **asdict(stack_up(settings))}
        if args.action == "down":
            return {"action": "down", "stopped": stack_down(settings)}
        if args.action == "alerts":
            return {"action": "alerts", **stack_alerts(settings)}
        return {"action": "status", "processes": stack_status(settings)}
    except StackError as error:
        raise CommandError(str(error), EXIT_USAGE) from error


def _run_variants(args: argparse.Namespace) -> dict[str, Any]:
    from cnn.config import IngestConfig
    from cnn.models import VARIANTS, count_parameters

    image_size = _validated(lambda: IngestConfig(**given(args, IngestConfig))).image_size
    shape = (image_size, image_size, 3)
    listed = []
    for name, variant in VARIANTS.items():
        entry = {"name": name, "parameters": None, "description": variant.description}
        try:
            entry["parameters"] = count_parameters(name, shape)
        except ValueError as error:  # e.g. a pretrained backbone's smallest input
            entry["unavailable"] = str(error)
        listed.append(entry)
    return {"image_size": image_size, "variants": listed}


if __name__ == "__main__":
    sys.exit(main())
