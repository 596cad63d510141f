"""What each `malaria` command does once its options are parsed: validate them into the
stage configs, then run the flow (or, for `stack` and `variants`, the work itself).

A problem the user can fix raises `CommandError` (exit 2 by default) naming the option.
"""

import argparse
import importlib
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from app.options import given, option_name

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A failure to report as one line and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_flow(
    module: str, name: str, *args: Any, debug: bool = False, meanwhile: Callable | None = None
) -> Any:
    """Import and run a flow against the Prefect server `connect_prefect` finds, or starts (a
    temporary one comes up while the flow imports and `meanwhile` runs: a slow usage check, or
    an import that the flow would otherwise wait for). Prefect's console lines carry no
    tracebacks unless `debug`."""
    from app.console import console_tracebacks
    from app.prefect_api import PrefectApiError, connect_prefect

    try:
        api = connect_prefect()
        if meanwhile is not None:
            meanwhile()
        flow = getattr(importlib.import_module(module), name)
        api.wait_ready()
        with api.flow_run_settings(), console_tracebacks(shown=debug):
            return flow(*args)
    except PrefectApiError as error:
        raise CommandError(str(error), EXIT_FAILURE) from None


def _validated(build: Callable[[], Any], option: str | None = None) -> Any:
    """Build a config, turning a validation error into one line that names the option."""
    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = option or FIELD_OPTIONS.get(field) or option_name(field)
        message = f"{option}: {first['msg']} (got {first.get('input')!r})"
        raise CommandError(message) from error


FIELD_OPTIONS = {"variant_options": "--transfer-weights"}
"""Config fields that an option other than their own sets."""


def _ingest_config(args: argparse.Namespace):
    """The validated ingest settings and their source; a folder or zip source must exist in
    the NIH layout."""
    from cnn.config import IngestConfig
    from cnn.sources.records import SourceError
    from cnn.sources.specs import open_source

    config = _validated(lambda: IngestConfig(**given(args, IngestConfig)))
    try:
        return config, open_source(config.source, limit=config.limit)
    except SourceError as error:
        raise CommandError(f"--source: {error}") from error


def _train_settings(args: argparse.Namespace):
    """The train flow's arguments after its dataset, validated: the variants, the training,
    tracking and promotion settings, and the work pool."""
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
        raise CommandError(f"--ensemble: {error}") from error
    tracking = _validated(lambda: TrackingConfig(**given(args, TrackingConfig)))
    promotion = _validated(lambda: PromotionConfig(**given(args, PromotionConfig)))
    return variants, training, tracking, promotion, args.work_pool


def _dump(model: BaseModel | list[BaseModel]) -> Any:
    if isinstance(model, list):
        return [item.model_dump(mode="json") for item in model]
    return model.model_dump(mode="json")


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    config, _ = _ingest_config(args)
    train_arguments = _train_settings(args)
    return _dump(run_flow("flows.pipeline", "pipeline", config, *train_arguments, debug=args.debug))


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """A dataset already ingested from the same source and settings is the answer as it is:
    nothing runs, so no flow run is made (nor a Prefect server started)."""
    from cnn.data.dataset import DatasetRef
    from cnn.ingest.build import find_dataset
    from cnn.ingest.splits import import_splitters
    from cnn.settings import datasets_dir

    started = time.perf_counter()
    config, source = _ingest_config(args)
    existing = find_dataset(source, config, datasets_dir())
    if existing is not None:
        return _dump(DatasetRef.of(existing, True, time.perf_counter() - started))
    return _dump(
        run_flow("flows.ingest", "ingest", config, debug=args.debug, meanwhile=import_splitters)
    )


def _open_dataset_option(path: str):
    from cnn.data.dataset import open_dataset

    try:
        return open_dataset(path)
    except ValueError as error:
        raise CommandError(f"--dataset: {error}") from error


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    train_arguments = _train_settings(args)
    dataset = _open_dataset_option(args.dataset)
    _check_label_review(dataset, train_arguments[1])
    runs = run_flow("flows.train", "train", dataset.uri, *train_arguments, debug=args.debug)
    return {"runs": _dump(runs)}


def _check_label_review(dataset, training) -> None:
    """Training without flagged labels needs the dataset's label review."""
    from cnn.curation.exclusion import LabelReviewMissingError, label_review_of
    from cnn.settings import data_dir

    if training.exclude_label_issues:
        try:
            label_review_of(dataset, data_dir())
        except LabelReviewMissingError as error:
            raise CommandError(f"--exclude-label-issues: {error}") from error


def run_label_issues(args: argparse.Namespace) -> dict[str, Any]:
    """Before any flow: the options, the dataset, and enough patients for the folds."""
    from cnn.config import LabelIssuesConfig, TrainConfig
    from cnn.curation.folds import FoldError, assign_folds, label_pool
    from tracking.config import TrackingConfig

    config = _validated(lambda: LabelIssuesConfig(**given(args, LabelIssuesConfig)))
    training = _validated(lambda: TrainConfig(**given(args, TrainConfig)))
    tracking = _validated(lambda: TrackingConfig(**given(args, TrackingConfig)))
    dataset = _open_dataset_option(args.dataset)
    pool = label_pool(dataset)
    try:
        assign_folds(pool.labels, pool.groups, config.folds, config.seed)
    except FoldError as error:
        raise CommandError(f"--folds: {error}") from error
    arguments = (dataset.uri, config, training, tracking)
    return _dump(run_flow("flows.label_issues", "label_issues", *arguments, debug=args.debug))


def _check_model_option(model_uri: str) -> None:
    """A registered model's name and alias or version must exist before any flow starts; a
    tracking server that does not answer fails within its health check's deadline, not after
    the minutes of MLflow's own retries."""
    from tracking.models import ModelNotFoundError, check_model_uri
    from tracking.store import TrackingUnavailableError, require_tracking_server

    try:
        require_tracking_server()
    except TrackingUnavailableError as error:
        raise CommandError(str(error), EXIT_FAILURE) from error
    try:
        check_model_uri(model_uri)
    except ModelNotFoundError as error:
        raise CommandError(f"--model: {error}") from error


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from tracking.config import TrackingConfig

    dataset = _open_dataset_option(args.dataset)
    tracking = _validated(lambda: TrackingConfig(**given(args, TrackingConfig)))
    return run_flow(
        "flows.evaluate",
        "evaluate",
        args.model,
        dataset.uri,
        tracking,
        debug=args.debug,
        meanwhile=lambda: _check_model_option(args.model),
    )


def run_predict(args: argparse.Namespace) -> dict[str, Any]:
    from pyarrow.fs import FileType
    from pydantic import TypeAdapter

    from cnn.config import PredictBatch, check_grouping
    from cnn.errors import InputError
    from cnn.io.storage import location
    from cnn.io.writes import OutputPathError, check_output_file
    from cnn.prediction.patients import patients_location

    try:
        found = location(args.input.removeprefix("folder:")).info().type != FileType.NotFound
    except InputError as error:  # a scheme not known here, a store that does not answer
        raise CommandError(f"--input: {error}") from error
    if not found:
        raise CommandError(f"--input: {args.input!r} does not exist")
    _validated(
        lambda: TypeAdapter(PredictBatch).validate_python(args.batch_size), option="--batch-size"
    )
    try:
        check_grouping(args.group_by)
    except ValueError as error:
        raise CommandError(f"--group-by: {error}") from error
    if not 0.0 <= args.flag_parasitemia <= 1.0:
        raise CommandError(f"--flag-parasitemia: {args.flag_parasitemia} is not a share in [0, 1]")
    try:
        check_output_file(args.output)
        check_output_file(patients_location(args.output))
    except OutputPathError as error:
        raise CommandError(f"--output: {error}") from error
    summary = run_flow(
        "flows.predict",
        "predict",
        args.input.removeprefix("folder:"),
        args.output,
        args.model,
        args.batch_size,
        args.group_by,
        args.flag_parasitemia,
        debug=args.debug,
        meanwhile=lambda: _check_model_option(args.model),
    )
    return _dump(summary)


def run_stack(args: argparse.Namespace) -> dict[str, Any]:
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
        raise CommandError(str(error)) from error


def run_variants(args: argparse.Namespace) -> dict[str, Any]:
    from cnn.config import IngestConfig
    from cnn.models.variants import VARIANTS, count_parameters

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
