"""CNN variants: one factory per variant, chosen by name from a registry (Keras 3 API only)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers

from cnn.config import weights_file_problem


@dataclass(frozen=True)
class Variant:
    """A registered architecture: its factory and a one-line description."""

    build: Callable[..., keras.Model]
    description: str
    offline_options: dict[str, Any] = field(default_factory=dict)
    """Options that build the same architecture without downloading anything."""
    check_downloads: Callable[..., None] | None = None
    """Given the variant's options, fetches what building it downloads (once, into Keras'
    cache) or raises `WeightsUnavailableError`: run before any training starts."""


@keras.saving.register_keras_serializable(package="malaria")
class PerImageStandardization(layers.Layer):
    """Each image's channels to zero mean and unit variance: what stays is the cell's own
    contrast, not the slide's stain colour or the microscope's brightness."""

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        mean = keras.ops.mean(images, axis=(1, 2), keepdims=True)
        deviation = keras.ops.std(images, axis=(1, 2), keepdims=True)
        return (images - mean) / keras.ops.maximum(deviation, 1.0)


@keras.saving.register_keras_serializable(package="malaria")
class CellStainNormalization(layers.Layer):
    """Stain normalization inside the model: each image's cell pixels (not the black border
    around the cell) in optical density, −log of the light let through, standardized per
    channel to zero mean and unit variance over the cell. A slide's stain strength and hue
    divide out, the cell's own structure stays; the border becomes 0."""

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        inside = keras.ops.cast(keras.ops.sum(images, axis=-1, keepdims=True) > 30.0, "float32")
        density = -keras.ops.log((images + 1.0) / 256.0)
        cells = keras.ops.maximum(keras.ops.sum(inside, axis=(1, 2), keepdims=True), 1.0)
        mean = keras.ops.sum(density * inside, axis=(1, 2), keepdims=True) / cells
        spread = keras.ops.sum(((density - mean) * inside) ** 2, axis=(1, 2), keepdims=True)
        deviation = keras.ops.sqrt(spread / cells + 1e-4)
        normalized = (density - mean) / deviation * inside
        return keras.ops.cast(normalized, self.compute_dtype)


def _inputs(
    input_shape: tuple[int, int, int], per_image: bool = False, stain: bool = False
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """uint8-valued pixels in, scaled to [0, 1] (or standardized per image, or
    stain-normalized) inside the model: the served model needs no preprocessing of its own."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    if stain:
        return inputs, CellStainNormalization(name="stain_normalize")(inputs)
    if per_image:
        return inputs, PerImageStandardization(name="standardize")(inputs)
    return inputs, layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def _uninfected_probability(x: keras.KerasTensor) -> keras.KerasTensor:
    """The one sigmoid output, P(uninfected); float32 even under mixed precision."""
    return layers.Dense(1, activation="sigmoid", name="uninfected", dtype="float32")(x)


def build_simple(input_shape: tuple[int, int, int]) -> keras.Model:
    """Two conv + max-pool blocks, dropout and one sigmoid: 56,257 parameters at 100×100×3."""
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = _uninfected_probability(x)
    return keras.Model(inputs, outputs, name="simple")


def build_lenet5(input_shape: tuple[int, int, int], per_image: bool = True) -> keras.Model:
    """LeNet-5 (tanh, average pooling) on RGB input with one sigmoid output. `per_image`
    standardizes each image (zero mean, unit variance: what its tanh units need to learn
    here) instead of scaling to [0, 1]."""
    inputs, x = _inputs(input_shape, per_image)
    x = layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1")(x)
    x = layers.AveragePooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="tanh", name="conv2")(x)
    x = layers.AveragePooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="tanh", name="dense1")(x)
    x = layers.Dense(84, activation="tanh", name="dense2")(x)
    outputs = _uninfected_probability(x)
    return keras.Model(inputs, outputs, name="lenet5")


def build_alexnet(
    input_shape: tuple[int, int, int], width: float = 0.5, per_image: bool = False
) -> keras.Model:
    """AlexNet's shape (5 conv, 3 max-pool, 2 dense) scaled to the input, with batch norm.

    `width` scales the filters and dense units (1.0: AlexNet's 96-256-384-384-256, 4096).
    The first layer is AlexNet's 11×11 stride 4 from 160 px up, else 5×5 stride 2.
    `per_image` standardizes each image instead of scaling to [0, 1].
    """
    filters = [max(8, int(n * width)) for n in (96, 256, 384, 384, 256)]
    units = max(32, int(4096 * width / 4))
    large = min(input_shape[:2]) >= 160
    inputs, x = _inputs(input_shape, per_image)
    x = _conv_bn(x, filters[0], 11 if large else 5, strides=4 if large else 2, name="conv1")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = _conv_bn(x, filters[1], 5, name="conv2")
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    for index, count in enumerate(filters[2:], start=3):
        x = _conv_bn(x, count, 3, name=f"conv{index}")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    for index in (1, 2):
        x = layers.Dense(units, activation="relu", name=f"dense{index}")(x)
        x = layers.Dropout(0.5, name=f"dropout{index}")(x)
    outputs = _uninfected_probability(x)
    return keras.Model(inputs, outputs, name="alexnet")


RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
BN_MOMENTUM = 0.9
"""Keras' 0.99 leaves the moving statistics near their initial values for the few hundred
steps that 2,500 images give: validation then predicts one class. 0.9 settles in ~20 steps."""


def build_resnet(
    input_shape: tuple[int, int, int],
    depth: int = 18,
    base_filters: int = 16,
    per_image: bool = True,
    stain_normalize: bool = True,
) -> keras.Model:
    """A ResNet-18/34-style network of basic residual blocks (two 3×3 convs, identity or
    1×1 projection shortcut), global average pooling and one sigmoid output.

    `base_filters` is the first stage's width (ResNet's own is 64; narrower trains much
    cheaper). `stain_normalize` (the default): standardize the optical density of the cell's
    own pixels (`CellStainNormalization`); without it, `per_image` standardizes each image's
    channels, or else pixels are scaled to [0, 1].
    """
    if depth not in RESNET_STAGES:
        raise ValueError(f"resnet depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
    inputs, x = _inputs(input_shape, per_image=bool(per_image), stain=bool(stain_normalize))
    x = _conv_bn(x, base_filters, 7, strides=2, name="stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, blocks in enumerate(RESNET_STAGES[depth]):
        filters = base_filters * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(x, filters, strides, name=f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _uninfected_probability(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def _conv_bn(x, filters: int, kernel: int, strides: int = 1, name: str = "conv", relu=True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(
        x
    )
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x, filters: int, strides: int, name: str):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides=strides, name=f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 3, strides=strides, name=f"{name}_conv1")
    y = _conv_bn(y, filters, 3, name=f"{name}_conv2", relu=False)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


BACKBONES = {
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "resnet50v2": (keras.applications.ResNet50V2, keras.applications.resnet_v2.preprocess_input),
    "vgg16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
    "xception": (keras.applications.Xception, keras.applications.xception.preprocess_input),
}


@keras.saving.register_keras_serializable(package="malaria")
class BackbonePreprocess(layers.Layer):
    """A Keras Applications backbone's own `preprocess_input`, as a saveable layer."""

    def __init__(self, backbone: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs):
        return BACKBONES[self.backbone][1](inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had; the message says what to do."""


def build_transfer(
    input_shape: tuple[int, int, int],
    backbone: str = "resnet50",
    weights: str | None = "imagenet",
) -> keras.Model:
    """A frozen Keras Applications backbone with a new sigmoid head.

    `weights`: "imagenet" (downloaded by Keras), a local weights file of the backbone, or
    None (random). Fine-tuning is a second training phase: see `unfreeze_top_layers`.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    application, _ = BACKBONES[backbone]
    local_file = weights not in (None, "imagenet")
    problem = weights_file_problem(weights) if local_file else None
    if problem:
        raise WeightsUnavailableError(problem)
    try:
        base = application(
            include_top=False,
            weights=None if local_file else weights,
            input_shape=input_shape,
            pooling="avg",
        )
    except Exception as exc:  # Keras raises plain Exceptions when the download fails
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"cannot download the ImageNet weights of {backbone} ({exc}); offline? Give the "
            "transfer variant a local weights file or none (its option `weights`)"
        ) from exc
    if local_file:
        base.load_weights(weights)
    base.trainable = False
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = BackbonePreprocess(backbone, name="preprocess")(inputs)
    x = base(x, training=False)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = _uninfected_probability(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone}")


SMALLEST_BACKBONE_INPUT = (32, 32, 3)
"""The smallest input every backbone accepts; their weights do not depend on the input size."""


def _fetch_transfer_weights(backbone: str = "resnet50", weights: str | None = "imagenet") -> None:
    """Download the backbone's ImageNet weights now, if they are asked for."""
    if weights == "imagenet":
        build_transfer(SMALLEST_BACKBONE_INPUT, backbone=backbone, weights=weights)


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone nested in a transfer model, or None."""
    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)


def unfreeze_top_layers(model: keras.Model, count: int) -> int:
    """Let the backbone's top `count` weighted layers (convolutions) train; return how many.

    Batch norm layers stay frozen (Keras' transfer-learning guide: unfreezing them would
    wreck the pretrained statistics). Recompile the model afterwards.
    """
    backbone = backbone_of(model)
    if backbone is None or count <= 0:
        return 0
    tunable = [
        layer
        for layer in backbone.layers
        if layer.weights and not isinstance(layer, layers.BatchNormalization)
    ]
    top = tunable[-count:]
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer in top
    return len(top)


VARIANTS: dict[str, Variant] = {
    "simple": Variant(
        build_simple, "the course's original network: 2 conv + 2 max-pool, dropout, sigmoid"
    ),
    "lenet5": Variant(
        build_lenet5,
        "LeNet-5: conv 6, avg-pool, conv 16, avg-pool, dense 120, 84; per-image standardized input",
    ),
    "alexnet": Variant(build_alexnet, "AlexNet's 5 conv + 3 dense, half width, batch norm"),
    "resnet": Variant(
        build_resnet,
        "ResNet-18-style residual blocks, 16 base filters, stain-normalized input",
    ),
    "transfer": Variant(
        build_transfer,
        "frozen Keras Applications ResNet50 (ImageNet weights) + new head",
        offline_options={"weights": None},
        check_downloads=_fetch_transfer_weights,
    ),
}


def count_parameters(variant: str, input_shape: tuple[int, int, int]) -> int:
    """The variant's parameter count at `input_shape`, without downloading weights."""
    return build_model(variant, input_shape, **VARIANTS[variant].offline_options).count_params()


def check_downloads(variants: Sequence[str], variant_options: dict[str, dict[str, Any]]) -> None:
    """Raise `WeightsUnavailableError` now if building any of `variants` would need a download
    that fails (ImageNet weights offline), rather than after the others have trained."""
    for variant in variants:
        check = VARIANTS[variant].check_downloads
        if check is not None:
            check(**variant_options.get(variant, {}))


def build_model(variant: str, input_shape: tuple[int, int, int], **options: Any) -> keras.Model:
    """Build the named variant for `input_shape` (height, width, channels).

    `options` go to the variant's factory (e.g. `depth=34` for resnet, `weights=None` for
    transfer).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[variant].build(tuple(input_shape), **options)
