"""Typed, validated settings for each stage: bad values fail before any work starts."""

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SplitStrategy = Literal["patient", "random"]
LearningRateSchedule = Literal["cosine", "constant"]
ImageSize = Annotated[int, Field(ge=16, le=512, description="Side of the square images, pixels")]
MAX_SEED = 2**32 - 1
"""The largest seed Keras (`keras.utils.set_random_seed`) and scikit-learn accept."""


DASK_ADDRESS_PATTERN = r"^([a-z]+://)?\S+:\d{1,5}$"
"""A Dask scheduler's address: `[protocol://]host:port`."""
ENGINE_FIELDS = frozenset({"dask_address"})
"""Ingest settings that choose where the work runs, never what a dataset holds: left out of
its fingerprint and manifest."""


class IngestConfig(BaseModel):
    """How to turn a source into a Parquet dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        "tfds",
        description="tfds, synthetic, folder:PATH (a folder or a URI) or zip:PATH (NIH layout)",
    )
    image_size: ImageSize = Field(64, description="Side of the square images, pixels")
    limit: int | None = Field(
        None, ge=20, description="Class-balanced, seeded subset of this many images (all if unset)"
    )
    split: SplitStrategy = Field(
        "patient",
        description="patient: no patient in two splits; random: stratified by label only",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the subset and the split")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Share of images held out")
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the non-test images used for validation"
    )
    dask_address: str | None = Field(
        None,
        pattern=DASK_ADDRESS_PATTERN,
        description="Dask scheduler to write the shards on (tcp://HOST:8786); unset: "
        "MALARIA_DASK_ADDRESS, else this host's worker processes",
    )

    @field_validator("source")
    @classmethod
    def _source_is_known(cls, value: str) -> str:
        from cnn.sources.specs import check_source_spec

        check_source_spec(value)
        return value


class AugmentationPolicy(BaseModel):
    """Random transformations of training images; every field at its default does nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rotation_degrees: float = Field(0.0, ge=0.0, le=180.0, description="Rotate by ± this")
    zoom: float = Field(0.0, ge=0.0, lt=1.0, description="Zoom in or out by ± this share")
    width_shift: float = Field(0.0, ge=0.0, lt=1.0, description="Shift by ± this share of width")
    height_shift: float = Field(0.0, ge=0.0, lt=1.0, description="Shift by ± this share of height")
    shear: float = Field(0.0, ge=0.0, le=1.0, description="Shear factor (Keras RandomShear)")
    horizontal_flip: bool = Field(False, description="Mirror left-right at random")
    dihedral: bool = Field(
        False,
        description="One of the 8 flips and quarter turns at random (a cell has no up); "
        "includes the horizontal flip",
    )
    brightness: float = Field(0.0, ge=0.0, lt=1.0, description="Scale brightness by 1 ± this")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="Scale contrast by 1 ± this")
    saturation: float = Field(0.0, ge=0.0, lt=1.0, description="Scale saturation by 1 ± this")
    stain: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Scale each colour channel by exp(± this) (stain tint shifts hue)",
    )
    hed: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Stain jitter in haematoxylin-eosin-DAB space: each stain's density "
        "scaled by 1 ± this and shifted by ± this / 10 (after Tellez et al. 2018)",
    )
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"] = Field(
        "nearest", description="How pixels moved in from outside the image are filled"
    )


_LECTURE = {
    "rotation_degrees": 30.0,
    "zoom": 0.15,
    "width_shift": 0.2,
    "height_shift": 0.2,
    "shear": 0.15,
    "horizontal_flip": True,
}
_MILD_AFFINE = {"zoom": 0.1, "width_shift": 0.05, "height_shift": 0.05, "fill_mode": "reflect"}
_STAIN = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.15, "stain": 0.05}
_HED = {"hed": 0.1}
AUGMENTATIONS: dict[str, AugmentationPolicy] = {
    "none": AugmentationPolicy(),
    "lecture": AugmentationPolicy(**_LECTURE),
    "dihedral": AugmentationPolicy(dihedral=True),
    "dihedral+affine": AugmentationPolicy(dihedral=True, **_MILD_AFFINE),
    "dihedral+stain": AugmentationPolicy(dihedral=True, **_STAIN),
    "dihedral+affine+stain": AugmentationPolicy(dihedral=True, **_MILD_AFFINE, **_STAIN),
    "dihedral+hed": AugmentationPolicy(dihedral=True, **_HED),
    "dihedral+stain+hed": AugmentationPolicy(dihedral=True, **_STAIN, **_HED),
}
"""The named policies: `lecture` (rotation, zoom, shifts, shear and flip, the values the
original course gave Keras' ImageDataGenerator), and the ones measured on malaria-dev
(docs/model.md: the ablation table)."""
AugmentName = Literal[tuple(AUGMENTATIONS)]  # type: ignore[valid-type]


VARIANT_NAMES = ("simple", "lenet5", "alexnet", "resnet", "transfer")
"""The CNN variants that `cnn.models.variants.VARIANTS` builds, named here so that checking a name
does not import Keras (seconds)."""


def check_variant(name: str) -> str:
    """Accept only the name of a registered CNN variant."""
    if name not in VARIANT_NAMES:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANT_NAMES)}")
    return name


VariantName = Annotated[
    str, AfterValidator(check_variant), Field(description="A registered CNN variant")
]


def check_distinct(names: list[str]) -> list[str]:
    """Refuse a variant named twice: it would train and register the same model twice."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(map(repr, repeated))} named more than once")
    return names


VariantNames = Annotated[
    list[VariantName],
    AfterValidator(check_distinct),
    Field(min_length=1, description="CNN variants to train, one run each"),
]
DEFAULT_VARIANTS = ("resnet",)
"""The default recipe (with 64 px images): see docs/model.md."""


class TrainConfig(BaseModel):
    """How to train a CNN variant: AdamW on a warm-up + cosine schedule, augmented, with the
    batch of 100; the decision threshold chosen for a target sensitivity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(
        20, ge=1, le=1000, description="Epochs of the schedule; early stopping may end sooner"
    )
    batch_size: int = Field(
        100, ge=1, le=4096, description="Images per training step (on each device)"
    )
    gpu_batch_size: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="Images per training step on each GPU when there is one (unset: batch_size)",
    )
    devices: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Train one model on this many of the host's GPUs (or CPU devices), "
        "batch_size images each, the learning rate times the devices; unset: every GPU",
    )
    mixed_precision: bool = Field(
        False,
        description="Compute in float16 with float32 weights (Keras mixed_float16): faster on "
        "GPUs with tensor cores, slower on CPUs",
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Peak learning rate")
    weight_decay: float = Field(
        1e-4, ge=0.0, lt=1.0, description="AdamW's decoupled weight decay (0: plain Adam)"
    )
    schedule: LearningRateSchedule = Field(
        "cosine",
        description="cosine: linear warm-up, then cosine decay to zero over `epochs`; "
        "constant: one fixed rate",
    )
    warmup_epochs: int = Field(1, ge=0, description="cosine only: epochs of linear warm-up")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Train toward 1 − this / 2 instead of 1 (noisy labels)"
    )
    patience: int | None = Field(
        None,
        ge=0,
        description="Stop after this many epochs without val_loss improvement (unset: train "
        "every epoch); the best epoch's weights are kept either way",
    )
    reduce_lr_patience: int | None = Field(
        None,
        ge=0,
        description="constant schedule only: cut the learning rate to a fifth after this many "
        "epochs without val_loss improvement",
    )
    fine_tune_layers: int = Field(
        0,
        ge=0,
        description="transfer only: after the new head has trained, unfreeze this many of the "
        "backbone's top convolution layers and train again at a tenth of the learning rate",
    )
    ema_momentum: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the weights with this momentum per "
        "step; validation, the best epoch and the model kept use the averaged weights "
        "(unset: the raw weights)",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of weights, shuffling and dropout")
    in_memory_limit_mb: int = Field(
        512,
        ge=0,
        description="Hold the train and validation images in memory (uint8) when together they "
        "take at most this many MiB (Keras' array input trains faster on CPU). Larger "
        "splits stream from Parquet in bounded memory; 0 always streams",
    )
    checkpoints: bool = Field(
        True,
        description="Save a checkpoint after every epoch, and resume an identical unfinished "
        "training (same dataset, variant and settings) from its last one; off: no checkpoints, "
        "every training starts at epoch 1",
    )
    augment: AugmentName = Field(
        "dihedral+stain+hed", description="Augmentation policy while training (none: off)"
    )
    test_time_augmentation: bool = Field(
        True,
        description="The registered model averages its output over the 8 flips and quarter "
        "turns of each image",
    )
    calibrate: bool = Field(
        False,
        description="Fit a temperature on the validation split so that P(parasitized) means "
        "what it says; the registered model applies it, the threshold is chosen after it "
        "(off by default: the default model is calibrated already, docs/model.md)",
    )
    target_sensitivity: float | None = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="Choose the decision threshold on the validation split to find this "
        "share of parasitized cells (unset: P(parasitized) > 0.5)",
    )
    ensemble: int = Field(
        0,
        ge=0,
        description="After the variants, also register one model averaging this many "
        "best of them (by validation loss); 0: none",
    )
    exclude_label_issues: bool = Field(
        False,
        description="Train on a copy of the dataset without the train and validation cells "
        "that `malaria label-issues` flagged (test cells are never removed)",
    )
    variant_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Per-variant factory options, e.g. {"transfer": {"weights": null}}',
    )

    @field_validator("variant_options")
    @classmethod
    def _transfer_weights_exist(cls, value: dict[str, dict[str, Any]]) -> dict:
        problem = weights_file_problem(value.get("transfer", {}).get("weights"))
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _plateau_cuts_need_a_constant_rate(self) -> "TrainConfig":
        if self.reduce_lr_patience is not None and self.schedule != "constant":
            raise ValueError(
                "reduce_lr_patience cuts a constant learning rate; it needs schedule='constant'"
            )
        return self


def check_ensemble_size(size: int, variants: Sequence[str]) -> None:
    """An ensemble averages 2 or more of the variants trained (0: no ensemble)."""
    if size and not 2 <= size <= len(variants):
        raise ValueError(
            f"ensemble={size} needs between 2 and the {len(variants)} variant(s) trained "
            f"({', '.join(variants)}); 0 trains none"
        )


def weights_file_problem(weights: str | None) -> str | None:
    """Why a pretrained backbone's `weights` (imagenet, a weights file, or None: random) cannot
    be used: a file that does not exist. None when they can."""
    if weights in (None, "imagenet") or Path(weights).is_file():
        return None
    return f"weights file {weights!r} does not exist (or imagenet, none)"


GROUPINGS = ("prefix", "folder")
COLUMN_GROUPING = "column:"
DEFAULT_GROUPING = "prefix"
"""Cells of one patient (slide) by default: the NIH file-name prefix (before `_IMG_`)."""
DEFAULT_FLAG_PARASITEMIA = 0.02
"""A patient is flagged when the estimated share of parasitized cells is above this."""


def check_grouping(grouping: str) -> str:
    """`prefix` (NIH file-name prefix), `folder` (the image's parent folder), or
    `column:NAME` (a column of a Parquet or dataset input)."""
    if grouping in GROUPINGS or (
        grouping.startswith(COLUMN_GROUPING) and grouping.removeprefix(COLUMN_GROUPING)
    ):
        return grouping
    raise ValueError(f"grouping {grouping!r}: expected prefix, folder or column:NAME")


LabelIssueFilter = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
]


class LabelIssuesConfig(BaseModel):
    """How to look for likely label errors: out-of-fold scores from patient-grouped folds of
    the train and validation cells, then cleanlab's `find_label_issues`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folds: int = Field(
        5,
        ge=2,
        le=20,
        description="Patient-grouped folds: each cell is scored by a model "
        "that never saw its patient",
    )
    variant: VariantName = Field(
        DEFAULT_VARIANTS[0], description="CNN variant trained on each fold's other folds"
    )
    filter_by: LabelIssueFilter = Field(
        "prune_by_noise_rate", description="cleanlab's rule for which cells to flag"
    )
    gallery_size: int = Field(
        24, ge=1, le=200, description="Most doubtful cells shown in the gallery"
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the folds")


FOLD_TRAINING_IGNORES = frozenset({"exclude_label_issues", "ensemble"})
"""Training fields a label review's fold trainings do not use (each fold trains one model on
the whole pool's other folds)."""


PredictBatch = Annotated[int, Field(ge=1, le=4096, description="Images scored per batch")]
PREDICT_BATCH = 256
"""Images scored at once wherever a model predicts (evaluation, thresholds, `predict`)."""


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
