"""CNN variants: one factory per variant, chosen by name from a registry (Keras 3 API only)."""

from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers


@dataclass(frozen=True)
class Variant:
    """A registered architecture: its factory and a one-line description."""

    build: Callable[[tuple[int, int, int]], keras.Model]
    description: str


def _inputs(input_shape: tuple[int, int, int]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """uint8-valued pixels in, scaled to [0, 1] inside the model: the served model needs no
    preprocessing of its own."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    return inputs, layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def build_simple(input_shape: tuple[int, int, int]) -> keras.Model:
    """The lecture's network: 56,257 parameters at 100×100×3."""
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="uninfected")(x)
    return keras.Model(inputs, outputs, name="simple")


def build_lenet5(input_shape: tuple[int, int, int]) -> keras.Model:
    """The lecture's Keras LeNet-5 on RGB input with one sigmoid output."""
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(6, 5, padding="same", activation="tanh", name="conv1")(x)
    x = layers.AveragePooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="tanh", name="conv2")(x)
    x = layers.AveragePooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="tanh", name="dense1")(x)
    x = layers.Dense(84, activation="tanh", name="dense2")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="uninfected")(x)
    return keras.Model(inputs, outputs, name="lenet5")


VARIANTS: dict[str, Variant] = {
    "simple": Variant(build_simple, "the lecture's network: 2 conv + 2 max-pool, dropout, sigmoid"),
    "lenet5": Variant(build_lenet5, "LeNet-5: conv 6, avg-pool, conv 16, avg-pool, dense 120, 84"),
}


def build_model(variant: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the named variant for `input_shape` (height, width, channels)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[variant].build(tuple(input_shape))
