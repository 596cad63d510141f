"""The whole pipeline: ingest, then train and evaluate every variant."""

from typing import Annotated

from prefect import flow
from pydantic import BaseModel, Field

from cnn.config import DEFAULT_VARIANTS, IngestConfig, TrainConfig, VariantNames
from flows.ingest import ingest
from flows.train import train
from tasks.ingest import DatasetRef
from tasks.tracking import TrackingConfig
from tasks.train import VariantRun


class PipelineResult(BaseModel):
    """The dataset a pipeline run used and every variant's tracked run."""

    dataset: DatasetRef
    runs: list[VariantRun]
    best: VariantRun = Field(description="The run with the highest test accuracy")


@flow(name="pipeline", log_prints=True)
def pipeline(
    data: IngestConfig = IngestConfig(),
    variants: VariantNames = DEFAULT_VARIANTS,
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    work_pool: Annotated[
        str | None,
        Field(description="Train each variant on this work pool's workers (unset: here)"),
    ] = None,
) -> PipelineResult:
    """Images in, tracked and evaluated models out."""
    dataset = ingest(data)
    runs = train(dataset.path, variants, training, tracking, work_pool)
    best = max(runs, key=lambda run: run.test_accuracy)
    return PipelineResult(dataset=dataset, runs=runs, best=best)
