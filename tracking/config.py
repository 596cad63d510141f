"""Where runs are recorded: light enough for the command line to read without MLflow."""

from pydantic import BaseModel, ConfigDict, Field

from cnn.evaluation.promotion import CHAMPION


class TrackingConfig(BaseModel):
    """Where a run is recorded in MLflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str = Field("malaria-cnn", min_length=1, description="MLflow experiment name")
    registered_model: str = Field(
        "malaria-cnn", min_length=1, description="Registered model that every trained model joins"
    )


DEFAULT_MODEL_URI = f"models:/{TrackingConfig().registered_model}@{CHAMPION}"
"""What `predict` scores with unless told otherwise: the default registered model's champion."""
