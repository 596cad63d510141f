"""The `malaria` command: a thin layer over the flows.

Every command exits 0 on success, and otherwise prints one line naming the bad parameter or
file and exits non-zero. With `--json`, the last line of standard output is one JSON object.
"""

import argparse
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

EXIT_USAGE = 2
EXIT_FAILURE = 1
MAX_PREDICT_BATCH = 4096
"""The predict flow's own bound on `batch_size`, checked here before any flow starts."""

_OPTION_OF_FIELD = {
    "source": "--source",
    "image_size": "--image-size",
    "limit": "--limit",
    "split": "--split",
    "seed": "--seed",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "patience": "--patience",
    "gpu_batch_size": "--gpu-batch-size",
    "reduce_lr_patience": "--reduce-lr-patience",
    "weight_decay": "--weight-decay",
    "schedule": "--schedule",
    "warmup_epochs": "--warmup-epochs",
    "augment": "--augment",
    "test_time_augmentation": "--tta",
    "target_sensitivity": "--target-sensitivity",
    "ensemble": "--ensemble",
    "experiment": "--experiment",
    "registered_model": "--registered-model",
    "metric": "--promotion-metric",
    "min_margin": "--min-margin",
}


class CommandError(Exception):
    """A failure to report as one line and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message}", EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_environment()
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
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
        _print_human(args.command, result)
    return 0


def _one_line(error: Exception) -> str:
    """The error's message with its line breaks folded (a flow's may list several problems)."""
    return " ".join(str(error).split())


def _run_flow(module: str, name: str, *args: Any) -> Any:
    """Import and run a flow; Prefect's temporary server (if needed) starts meanwhile."""
    server_ready = _start_temporary_prefect_server()
    flow = getattr(importlib.import_module(module), name)
    server_ready.wait()
    return flow(*args)


def _start_temporary_prefect_server() -> threading.Event:
    """Start Prefect's temporary local server in the background when no API URL is set.

    A flow would start the same server on first use; starting it while the flow modules
    import saves seconds. The returned event is set once the server answers (or failed to
    start, in which case the flow starts it, and reports any error, itself).
    """
    ready = threading.Event()

    def start() -> None:
        try:
            from prefect.settings import get_current_settings

            if not get_current_settings().api.url:
                from prefect.server.api.server import SubprocessASGIServer

                SubprocessASGIServer().start()
        except Exception:
            pass
        finally:
            ready.set()

    threading.Thread(target=start, name="prefect-server-start", daemon=True).start()
    return ready


def _quiet_environment() -> None:
    """Offline-friendly defaults: no telemetry, no TensorFlow start-up chatter, and time for
    Prefect's temporary server to start on a busy machine (its 20 s ran out in a soak test
    while another pipeline used both cores)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="malaria", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pipeline = commands.add_parser("pipeline", help="ingest, train and evaluate, end to end")
    _add_ingest_options(pipeline, source_required=False)
    _add_train_options(pipeline)
    pipeline.set_defaults(handler=_run_pipeline)

    ingest = commands.add_parser("ingest", help="turn a source into a Parquet dataset")
    _add_ingest_options(ingest, source_required=True)
    _add_json(ingest)
    ingest.set_defaults(handler=_run_ingest)

    train = commands.add_parser("train", help="train variants on an ingested dataset")
    train.add_argument("--dataset", required=True, help="path of an ingested dataset")
    _add_train_options(train)
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser("evaluate", help="re-score any model on a dataset's test split")
    evaluate.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/NAME/3")
    evaluate.add_argument("--dataset", required=True, help="path of an ingested dataset")
    evaluate.add_argument("--experiment", help="MLflow experiment (default malaria-cnn)")
    _add_json(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)

    predict = commands.add_parser("predict", help="score images with a model, write Parquet")
    predict.add_argument(
        "--model",
        default="models:/malaria-cnn@champion",
        help="MLflow model URI (default models:/malaria-cnn@champion)",
    )
    predict.add_argument(
        "--input", required=True, help="folder of images, dataset directory, or Parquet file"
    )
    predict.add_argument("--output", required=True, help="Parquet file to write")
    predict.add_argument("--batch-size", type=int, default=256, help="images per batch (256)")
    _add_json(predict)
    predict.set_defaults(handler=_run_predict)

    stack = commands.add_parser(
        "stack", help="start, inspect or stop the local service stack (servers, pools, workers)"
    )
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the servers bind (127.0.0.1; 0.0.0.0 opens them to the network)",
    )
    stack.add_argument("--prefect-port", type=int, default=4200, help="Prefect server (4200)")
    stack.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server (5000)")
    stack.add_argument(
        "--state-dir", default=".stack", help="where pids and logs are kept (.stack)"
    )
    _add_json(stack)
    stack.set_defaults(handler=_run_stack)

    variants = commands.add_parser("variants", help="list the CNN variants")
    variants.add_argument("--image-size", type=int, default=100, help="side in pixels (100)")
    _add_json(variants)
    variants.set_defaults(handler=_run_variants)
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def _default(model: type[BaseModel], field: str) -> str:
    """A config field's default, for help texts: the configs own every default."""
    return f"default {model.model_fields[field].get_default(call_default_factory=True)}"


def _add_ingest_options(parser: argparse.ArgumentParser, source_required: bool) -> None:
    from cnn.config import IngestConfig

    parser.add_argument(
        "--source",
        required=source_required,
        help="tfds (default; needs internet), synthetic, folder:PATH or zip:PATH (NIH layout)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"side in pixels, 16..512 ({_default(IngestConfig, 'image_size')})",
    )
    parser.add_argument("--limit", type=int, help="class-balanced subset of N images")
    parser.add_argument("--split", help="patient (default) or random")
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seed of subset, split, training ({_default(IngestConfig, 'seed')})",
    )


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from cnn.config import AUGMENTATIONS, DEFAULT_VARIANTS, PromotionConfig, TrainConfig

    parser.add_argument(
        "--variants",
        help=f"comma-separated, e.g. simple,resnet (default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs of the schedule; early stopping may end sooner "
        f"({_default(TrainConfig, 'epochs')})",
    )
    parser.add_argument("--batch-size", type=int, help=_default(TrainConfig, "batch_size"))
    parser.add_argument(
        "--gpu-batch-size",
        type=int,
        help="images per step when a GPU is present (default: --batch-size)",
    )
    parser.add_argument(
        "--learning-rate", type=float, help=f"peak rate ({_default(TrainConfig, 'learning_rate')})"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help=f"AdamW's weight decay, 0 for Adam ({_default(TrainConfig, 'weight_decay')})",
    )
    parser.add_argument(
        "--schedule",
        help="cosine (warm-up, then cosine decay) or constant "
        f"({_default(TrainConfig, 'schedule')})",
    )
    parser.add_argument("--warmup-epochs", type=int, help=_default(TrainConfig, "warmup_epochs"))
    parser.add_argument(
        "--patience",
        type=int,
        help="stop after N epochs without val_loss improvement "
        f"({_default(TrainConfig, 'patience')}: train every epoch)",
    )
    parser.add_argument(
        "--reduce-lr-patience",
        type=int,
        help="constant schedule: cut the rate to a fifth after N epochs without val_loss "
        f"improvement ({_default(TrainConfig, 'reduce_lr_patience')})",
    )
    parser.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        help="float16 compute, for GPUs with tensor cores (default off)",
    )
    parser.add_argument(
        "--augment",
        metavar="POLICY",
        help=f"augmentation while training: {', '.join(AUGMENTATIONS)} "
        f"({_default(TrainConfig, 'augment')})",
    )
    parser.add_argument(
        "--tta",
        dest="test_time_augmentation",
        action=argparse.BooleanOptionalAction,
        help="the registered model averages over the 8 flips and quarter turns "
        f"({_default(TrainConfig, 'test_time_augmentation')})",
    )
    parser.add_argument(
        "--target-sensitivity",
        help="choose the threshold on validation to find this share of parasitized cells, "
        f"or none for 0.5 ({_default(TrainConfig, 'target_sensitivity')})",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="also register one model averaging the K best variants "
        f"({_default(TrainConfig, 'ensemble')}: none)",
    )
    parser.add_argument(
        "--checkpoints",
        action=argparse.BooleanOptionalAction,
        help="checkpoint every epoch and resume an identical unfinished training (default on)",
    )
    parser.add_argument(
        "--transfer-weights",
        default="imagenet",
        help="weights of the transfer variant's backbone: imagenet, none, or a weights file",
    )
    parser.add_argument(
        "--work-pool", help="train each variant on this Prefect work pool's workers"
    )
    parser.add_argument(
        "--promotion-metric",
        dest="metric",
        help="test score a new model must beat the champion's on "
        f"({_default(PromotionConfig, 'metric')})",
    )
    parser.add_argument(
        "--min-margin",
        type=float,
        help=f"by more than this ({_default(PromotionConfig, 'min_margin')})",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default malaria-cnn)")
    parser.add_argument("--registered-model", help="MLflow model name (default malaria-cnn)")
    if not any(action.dest == "seed" for action in parser._actions):
        parser.add_argument("--seed", type=int, help="seed of training (default 42)")
    _add_json(parser)


def _given(args: argparse.Namespace, *fields: str) -> dict[str, Any]:
    """The config fields the user set on the command line (options are named after them)."""
    return {field: getattr(args, field) for field in fields if getattr(args, field) is not None}


def _validated(build: Callable[[], Any], option: str | None = None) -> Any:
    """Build a config, turning a validation error into one line that names the option."""
    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = option or _OPTION_OF_FIELD.get(field, field)
        message = f"{option}: {first['msg']} (got {first.get('input')!r})"
        raise CommandError(message, EXIT_USAGE) from error


def _ingest_config(args: argparse.Namespace):
    """The validated ingest settings; a folder or zip source must exist in the NIH layout."""
    from cnn.config import IngestConfig
    from cnn.sources import SourceError, open_source

    given = _given(args, "source", "image_size", "limit", "split", "seed")
    config = _validated(lambda: IngestConfig(**given))
    try:
        open_source(config.source, limit=config.limit)
    except SourceError as error:
        raise CommandError(f"--source: {error}", EXIT_USAGE) from error
    return config


def _train_settings(args: argparse.Namespace):
    """The validated variants, training and tracking settings."""
    from pydantic import TypeAdapter

    from cnn.config import (
        DEFAULT_VARIANTS,
        PromotionConfig,
        TrainConfig,
        VariantNames,
    )
    from cnn.ensembles import check_ensemble_size
    from tasks.tracking import TrackingConfig

    names = args.variants.split(",") if args.variants is not None else DEFAULT_VARIANTS
    variants = [name.strip() for name in names if name.strip()]
    variants = _validated(
        lambda: TypeAdapter(VariantNames).validate_python(variants), option="--variants"
    )
    weights = None if args.transfer_weights.lower() == "none" else args.transfer_weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise CommandError(
            f"--transfer-weights: {weights!r} is not a weights file (or imagenet, none)",
            EXIT_USAGE,
        )
    given = _given(
        args,
        "epochs",
        "batch_size",
        "gpu_batch_size",
        "learning_rate",
        "weight_decay",
        "schedule",
        "warmup_epochs",
        "patience",
        "reduce_lr_patience",
        "mixed_precision",
        "checkpoints",
        "augment",
        "test_time_augmentation",
        "ensemble",
        "seed",
    )
    if args.target_sensitivity is not None:
        given["target_sensitivity"] = (
            None if args.target_sensitivity.lower() == "none" else args.target_sensitivity
        )
    training = _validated(
        lambda: TrainConfig(**given, variant_options={"transfer": {"weights": weights}})
    )
    try:
        check_ensemble_size(training.ensemble, variants)
    except ValueError as error:
        raise CommandError(f"--ensemble: {error}", EXIT_USAGE) from error
    tracking = _validated(lambda: TrackingConfig(**_given(args, "experiment", "registered_model")))
    promotion = _validated(lambda: PromotionConfig(**_given(args, "metric", "min_margin")))
    return variants, training, tracking, promotion


def _dump(model: BaseModel | list[BaseModel]) -> Any:
    if isinstance(model, list):
        return [item.model_dump(mode="json") for item in model]
    return model.model_dump(mode="json")


def _run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    config = _ingest_config(args)
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
    config = _ingest_config(args)
    return _dump(_run_flow("flows.ingest", "ingest", config))


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
    from tasks.tracking import ModelNotFoundError, check_model_uri, configure_tracking

    configure_tracking()
    try:
        check_model_uri(model_uri)
    except ModelNotFoundError as error:
        raise CommandError(f"--model: {error}", EXIT_USAGE) from error


def _run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.tracking import TrackingConfig

    dataset = _open_dataset_option(args.dataset)
    _check_model_option(args.model)
    tracking = _validated(lambda: TrackingConfig(**_given(args, "experiment")))
    return _run_flow("flows.evaluate", "evaluate", args.model, str(dataset.path), tracking)


def _run_predict(args: argparse.Namespace) -> dict[str, Any]:
    if not Path(args.input.removeprefix("folder:")).exists():
        raise CommandError(f"--input: {args.input!r} does not exist", EXIT_USAGE)
    if not 1 <= args.batch_size <= MAX_PREDICT_BATCH:
        raise CommandError(
            f"--batch-size: must be 1..{MAX_PREDICT_BATCH} (got {args.batch_size})", EXIT_USAGE
        )
    if Path(args.output).is_dir():
        raise CommandError(
            f"--output: {args.output!r} is a directory; name a .parquet file", EXIT_USAGE
        )
    _check_model_option(args.model)
    summary = _run_flow(
        "flows.predict",
        "predict",
        args.input.removeprefix("folder:"),
        args.output,
        args.model,
        args.batch_size,
    )
    return _dump(summary)


def _run_stack(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from flows.stack import StackError, StackSettings, stack_down, stack_status, stack_up

    for option, port in (
        ("--prefect-port", args.prefect_port),
        ("--mlflow-port", args.mlflow_port),
    ):
        if not 1 <= port <= 65535:
            raise CommandError(f"{option}: must be a port number 1..65535 (got {port})", EXIT_USAGE)
    settings = StackSettings(
        state_dir=Path(args.state_dir),
        host=args.host,
        prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port,
    )
    try:
        if args.action == "up":
            return {"action": "up", **asdict(stack_up(settings))}
        if args.action == "down":
            return {"action": "down", "stopped": stack_down(settings)}
        return {"action": "status", "processes": stack_status(settings)}
    except StackError as error:
        raise CommandError(str(error), EXIT_USAGE) from error


def _run_variants(args: argparse.Namespace) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from cnn.config import ImageSize
    from cnn.models import VARIANTS, count_parameters

    _validated(
        lambda: TypeAdapter(ImageSize).validate_python(args.image_size), option="--image-size"
    )

    shape = (args.image_size, args.image_size, 3)
    listed = []
    for name, variant in VARIANTS.items():
        entry = {"name": name, "parameters": None, "description": variant.description}
        try:
            entry["parameters"] = count_parameters(name, shape)
        except ValueError as error:  # e.g. a pretrained backbone's smallest input
            entry["unavailable"] = str(error)
        listed.append(entry)
    return {"image_size": args.image_size, "variants": listed}


def _print_human(command: str, result: dict[str, Any]) -> None:
    if command == "stack":
        _print_stack(result)
    elif command == "variants":
        for variant in result["variants"]:
            if variant["parameters"] is None:
                print(f"{variant['name']:<10} {'n/a':>12}  {variant['unavailable']}")
            else:
                count, description = variant["parameters"], variant["description"]
                print(f"{variant['name']:<10} {count:>12,}  {description}")
    elif command == "predict":
        print(
            f"{result['rows']} images scored ({result['parasitized']} parasitized) with "
            f"{result['model_uri']} → {result['output']}"
        )
        if result["skipped"]:
            print(f"skipped  {len(result['skipped'])} unreadable file(s)")
    elif command == "evaluate":
        print(
            f"{result['model_uri']}: test accuracy {result['accuracy']:.3f}, confusion "
            f"{result['confusion_matrix']} (rows true:yes/no, cols pred:yes/no)"
        )
        print(f"report   {result['report']}")
    else:
        dataset = result.get("dataset") if command == "pipeline" else result
        if dataset and "rows" in dataset:
            state = "reused" if dataset["cache_hit"] else "written"
            print(f"dataset  {dataset['path']} ({dataset['rows']} images, {state})")
        for run in result.get("runs", []):
            print(
                f"{run['variant']:<10} test accuracy {run['test_accuracy']:.3f}  "
                f"{run['alias'] or '':<10}  run {run['run_id']}  model {run['model_uri']}"
            )
        if command == "pipeline":
            best = result["best"]
            print(f"best     {best['variant']} ({best['test_accuracy']:.3f})")
            champion = result.get("champion")
            if champion:
                print(f"champion version {champion['version']} ({champion['model_uri']})")


def _print_stack(result: dict[str, Any]) -> None:
    if result["action"] == "up":
        print(f"Prefect UI   {result['prefect_url']}   (flow runs, deployments, the Run form)")
        print(f"MLflow UI    {result['mlflow_url']}   (runs, comparisons, the model registry)")
        print(f"deployments  {', '.join(result['deployments'])}")
        print(f"logs         {Path(next(iter(result['logs'].values()))).parent}/")
        print("use it from a shell:")
        for name, value in result["env"].items():
            print(f"  export {name}={value}")
    elif result["action"] == "down":
        print(f"stopped {', '.join(result['stopped'])}")
    else:
        for name, process in result["processes"].items():
            state = "running" if process["running"] else "NOT running"
            print(f"{name:<15} pid {process['pid']:<8} {state:<12} {process['log']}")


if __name__ == "__main__":
    sys.exit(main())
