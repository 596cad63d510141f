"""Ensembles: one Keras model whose output is the mean of its members' outputs."""

from collections.abc import Sequence

import keras
from keras import layers

ENSEMBLE = "ensemble"
"""The name an ensemble is tracked and reported under, beside the variants."""


def build_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """Average `members` (each given the same uint8 input) into one saveable model.

    Members must take the same input shape; each keeps its own preprocessing and test-time
    augmentation, and its weights are shared, not copied.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    shapes = {tuple(member.input_shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different inputs: {sorted(shapes)}")
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise ValueError(f"ensemble members need distinct names, got {names}")
    inputs = keras.Input(shape=shapes.pop(), name="pixels")
    outputs = layers.Average(name="mean", dtype="float32")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=ENSEMBLE)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble, in order (a model that is not one: itself)."""
    if model.name != ENSEMBLE:
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
