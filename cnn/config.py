"""Typed, validated settings for each stage: bad values fail before any work starts."""

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

SplitStrategy = Literal["patient", "random"]
ImageSize = Annotated[int, Field(ge=16, le=512, description="Side of the square images, pixels")]
MAX_SEED = 2**32 - 1
"""The largest seed Keras (`keras.utils.set_random_seed`) and scikit-learn accept."""


class IngestConfig(BaseModel):
    """How to turn a source into a Parquet dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        "tfds",
        description="tfds, synthetic, folder:PATH or zip:PATH (NIH layout)",
    )
    image_size: ImageSize = Field(
        64, description="Side of the square images, pixels (the lecture's: 100)"
    )
    limit: int | None = Field(
        None, ge=20, description="Class-balanced, seeded subset of this many images (all if unset)"
    )
    split: SplitStrategy = Field(
        "patient", description="patient: no patient in two splits; random: the lecture's split"
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the subset and the split")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Share of images held out")
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the non-test images used for validation"
    )

    @field_validator("source")
    @classmethod
    def _source_is_known(cls, value: str) -> str:
        from cnn.sources import check_source_spec

        check_source_spec(value)
        return value


class AugmentationPolicy(BaseModel):
    """Random transformations of training images (the lecture's ImageDataGenerator values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="Apply the policy while training. Off by default: with the lecture's "
        "early stopping (patience 5) on 2,500 images it stops before the network learns",
    )
    rotation_degrees: float = Field(30.0, ge=0.0, le=180.0, description="Rotate by ± this")
    zoom: float = Field(0.15, ge=0.0, lt=1.0, description="Zoom in or out by ± this share")
    width_shift: float = Field(0.2, ge=0.0, lt=1.0, description="Shift by ± this share of width")
    height_shift: float = Field(0.2, ge=0.0, lt=1.0, description="Shift by ± this share of height")
    shear: float = Field(0.15, ge=0.0, le=1.0, description="Shear factor (Keras RandomShear)")
    horizontal_flip: bool = Field(True, description="Mirror left-right at random")
    vertical_flip: bool = Field(False, description="Mirror up-down at random (cells have no up)")
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"] = Field(
        "nearest", description="How pixels moved in from outside the image are filled"
    )


def check_variant(name: str) -> str:
    """Accept only the name of a registered CNN variant."""
    from cnn.models import VARIANTS

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return name


VariantName = Annotated[
    str, AfterValidator(check_variant), Field(description="A registered CNN variant")
]

VariantNames = Annotated[
    list[VariantName], Field(min_length=1, description="CNN variants to train, one run each")
]
DEFAULT_VARIANTS = ("resnet",)
"""The default recipe (with 64 px images): see the README's accuracy-versus-time table."""


class TrainConfig(BaseModel):
    """How to train a CNN variant (the lecture's Adam, batch 100 and early stopping)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(30, ge=1, le=1000, description="Most epochs; early stopping may end sooner")
    batch_size: int = Field(100, ge=1, le=4096, description="Images per training step")
    gpu_batch_size: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="Images per training step when a GPU is present (unset: batch_size)",
    )
    mixed_precision: bool = Field(
        False,
        description="Compute in float16 with float32 weights (Keras mixed_float16): faster on "
        "GPUs with tensor cores, slower on CPUs",
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    patience: int = Field(
        5, ge=0, description="Epochs without val_loss improvement before stopping"
    )
    reduce_lr_patience: int | None = Field(
        None,
        ge=0,
        description="Cut the learning rate to a fifth after this many epochs without val_loss "
        "improvement (unset: constant learning rate)",
    )
    fine_tune_layers: int = Field(
        0,
        ge=0,
        description="transfer only: after the new head has trained, unfreeze this many of the "
        "backbone's top convolution layers and train again at a tenth of the learning rate",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of weights, shuffling and dropout")
    in_memory_limit_mb: int = Field(
        512,
        ge=0,
        description="Hold the train and validation images in memory (uint8) when together they "
        "take at most this many MiB: Keras' array input trains up to 1.6× faster on CPU. Larger "
        "splits stream from Parquet in bounded memory; 0 always streams",
    )
    checkpoints: bool = Field(
        True,
        description="Save a checkpoint after every epoch, and resume an identical unfinished "
        "training (same dataset, variant and settings) from its last one; off: no checkpoints, "
        "every training starts at epoch 1",
    )
    augmentation: AugmentationPolicy = Field(
        default_factory=AugmentationPolicy, description="Random transformations while training"
    )
    variant_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per-variant factory options, e.g. {"transfer": {"weights": null}}',
    )


PromotionMetric = Literal["accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"]


class PromotionConfig(BaseModel):
    """When a newly trained model may replace the registered champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: PromotionMetric = Field(
        "accuracy", description="Test-split score compared (parasitized is the positive class)"
    )
    min_margin: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The new model must beat the champion's score by more than this",
    )
