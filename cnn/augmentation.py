"""The lecture's augmentation policy as Keras preprocessing layers, applied in training only.

The layers wrap the model while it trains (so they run on the accelerator, on each batch);
the model that is saved and registered never contains them: it needs none to predict, and
Keras 3.15 cannot reload a saved `RandomShear`.
"""

import keras
import numpy as np
from keras import layers

from cnn.config import AugmentationPolicy


def build_augmenter(policy: AugmentationPolicy, seed: int | None = None) -> keras.Sequential | None:
    """The policy's layers in the lecture's order, or None when augmentation is off."""
    if not policy.enabled:
        return None
    fill = {"fill_mode": policy.fill_mode}
    steps: list[layers.Layer] = []
    if policy.rotation_degrees:
        steps.append(layers.RandomRotation(policy.rotation_degrees / 360.0, seed=seed, **fill))
    if policy.zoom:
        steps.append(layers.RandomZoom(policy.zoom, seed=seed, **fill))
    if policy.width_shift or policy.height_shift:
        steps.append(
            layers.RandomTranslation(policy.height_shift, policy.width_shift, seed=seed, **fill)
        )
    if policy.shear:
        steps.append(layers.RandomShear(policy.shear, policy.shear, seed=seed, **fill))
    flip = {
        (True, False): "horizontal",
        (False, True): "vertical",
        (True, True): "horizontal_and_vertical",
    }.get((policy.horizontal_flip, policy.vertical_flip))
    if flip:
        steps.append(layers.RandomFlip(flip, seed=seed))
    return keras.Sequential(steps, name="augmentation") if steps else None


def with_augmentation(model: keras.Model, augmenter: keras.Sequential | None) -> keras.Model:
    """A training model that augments its input first; it shares every weight with `model`."""
    if augmenter is None:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    return keras.Model(inputs, model(augmenter(inputs)), name=f"{model.name}_augmented")


def augmentation_preview(
    image: np.ndarray, policy: AugmentationPolicy, copies: int = 10, seed: int = 0
) -> np.ndarray:
    """One cell and `copies` augmented versions of it, side by side in two rows (uint8).

    The first tile is the original, as in the lecture's preview.
    """
    augmenter = build_augmenter(policy, seed=seed)
    batch = np.repeat(image[None].astype("float32"), copies, axis=0)
    augmented = batch if augmenter is None else np.asarray(augmenter(batch, training=True))
    tiles = [image, *np.clip(augmented, 0, 255).astype(np.uint8)]
    columns = -(-len(tiles) // 2)
    tiles += [np.zeros_like(image)] * (2 * columns - len(tiles))
    rows = [np.concatenate(tiles[row * columns : (row + 1) * columns], axis=1) for row in (0, 1)]
    return np.concatenate(rows, axis=0)
