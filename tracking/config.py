"""Where runs are recorded: light enough for the command line to read without MLflow."""

from pydantic import BaseModel, ConfigDict, Field


class TrackingConfig(BaseModel):
    """Where a run is recorded in MLflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str = Field("malaria-cnn", min_length=1, description="MLflow experiment name")
    registered_model: str = Field(
        "malaria-cnn", min_length=1, description="Registered model that every trained model joins"
    )
