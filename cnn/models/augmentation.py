"""Augmentation policies as Keras layers applied in training only, and test-time augmentation.

The random layers wrap the model while it trains (so they run on the accelerator, on each
batch); the model that is saved and registered never contains them: it needs none to
predict, and Keras 3.15 cannot reload a saved `RandomShear`. Test-time augmentation is the
opposite: deterministic, part of the saved model, and the same for every caller.
"""

import keras
import numpy as np
from keras import layers, ops
from skimage.color import hed_from_rgb, rgb_from_hed

from cnn.config import AUGMENTATIONS, AugmentationPolicy, AugmentName

DIHEDRAL_VIEWS = 8
"""The flips and quarter turns of a square: identity, 3 rotations, 4 mirror images."""


@keras.saving.register_keras_serializable(package="malaria")
class RandomDihedral(layers.Layer):
    """Each image turned into one of its 8 dihedral views at random (training only)."""

    def __init__(self, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        coins = keras.random.uniform((3, batch, 1, 1, 1), seed=self._generator) < 0.5
        images = ops.where(coins[0], ops.flip(images, axis=1), images)
        images = ops.where(coins[1], ops.flip(images, axis=2), images)
        return ops.where(coins[2], ops.transpose(images, (0, 2, 1, 3)), images)

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="malaria")
class RandomStain(layers.Layer):
    """Per-image colour jitter of 0..255 pixels (training only): brightness, contrast,
    saturation, and a gain per channel, which is how stain differences between slides look."""

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        stain: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.stain, self.seed = saturation, stain, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]

        def factor(spread: float, channels: int = 1):
            shape = (batch, 1, 1, channels)
            return 1.0 + keras.random.uniform(shape, -spread, spread, seed=self._generator)

        images = ops.cast(images, "float32")
        if self.stain:
            gains = keras.random.uniform(
                (batch, 1, 1, 3), -self.stain, self.stain, seed=self._generator
            )
            images = images * ops.exp(gains)
        if self.brightness:
            images = images * factor(self.brightness)
        if self.contrast:
            mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
            images = (images - mean) * factor(self.contrast) + mean
        if self.saturation:
            gray = ops.mean(images, axis=3, keepdims=True)
            images = (images - gray) * factor(self.saturation) + gray
        return ops.clip(images, 0.0, 255.0)

    def get_config(self) -> dict:
        names = ("brightness", "contrast", "saturation", "stain", "seed")
        return {**super().get_config(), **{name: getattr(self, name) for name in names}}


LOG_FLOOR = float(np.log(1e-6))
"""scikit-image's optical-density floor: `rgb2hed` takes log(max(pixel, 1e-6)) / this."""


@keras.saving.register_keras_serializable(package="malaria")
class RandomHED(layers.Layer):
    """Per-image stain jitter in haematoxylin-eosin-DAB space (training only), as
    scikit-image's `rgb2hed`/`hed2rgb` separate and recombine stains: each stain's density
    scaled by 1 ± `spread` and shifted by ± `spread` / 10, then back to 0..255 pixels."""

    def __init__(self, spread: float = 0.0, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spread, self.seed = spread, seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or not self.spread:
            return images
        shape = (ops.shape(images)[0], 1, 1, 3)
        scale = 1.0 + keras.random.uniform(shape, -self.spread, self.spread, seed=self._generator)
        shift = keras.random.uniform(shape, -self.spread, self.spread, seed=self._generator) / 10
        pixels = ops.maximum(ops.cast(images, "float32") / 255.0, 1e-6)
        stains = ops.matmul(
            ops.log(pixels) / LOG_FLOOR, ops.convert_to_tensor(hed_from_rgb, "float32")
        )
        stains = stains * scale + shift
        rgb = ops.exp(
            ops.matmul(stains * LOG_FLOOR, ops.convert_to_tensor(rgb_from_hed, "float32"))
        )
        return ops.clip(rgb * 255.0, 0.0, 255.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "spread": self.spread, "seed": self.seed}


def build_augmenter(policy: AugmentationPolicy, seed: int | None = None) -> keras.Sequential | None:
    """The policy's layers (geometry first, then colour), or None
    when the policy changes nothing."""
    fill = {"fill_mode": policy.fill_mode}
    steps: list[layers.Layer] = []
    if policy.dihedral:
        steps.append(RandomDihedral(seed=seed))
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
    if policy.horizontal_flip and not policy.dihedral:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    colour = {
        name: getattr(policy, name) for name in ("brightness", "contrast", "saturation", "stain")
    }
    if any(colour.values()):
        steps.append(RandomStain(**colour, seed=seed))
    if policy.hed:
        steps.append(RandomHED(policy.hed, seed=seed))
    return keras.Sequential(steps, name="augmentation") if steps else None


def named_augmenter(name: AugmentName, seed: int | None = None) -> keras.Sequential | None:
    """`build_augmenter` of a named policy (`cnn.config.AUGMENTATIONS`)."""
    return build_augmenter(AUGMENTATIONS[name], seed=seed)


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

    The first tile is the original.
    """
    augmenter = build_augmenter(policy, seed=seed)
    batch = np.repeat(image[None].astype("float32"), copies, axis=0)
    augmented = batch if augmenter is None else np.asarray(augmenter(batch, training=True))
    tiles = [image, *np.clip(augmented, 0, 255).astype(np.uint8)]
    columns = -(-len(tiles) // 2)
    tiles += [np.zeros_like(image)] * (2 * columns - len(tiles))
    rows = [np.concatenate(tiles[row * columns : (row + 1) * columns], axis=1) for row in (0, 1)]
    return np.concatenate(rows, axis=0)


def dihedral_views(images):
    """The 8 dihedral views of a batch, stacked along the batch axis (view-major)."""
    turned = ops.transpose(images, (0, 2, 1, 3))
    views = []
    for base in (images, turned):
        flipped_rows = ops.flip(base, axis=1)
        views += [base, flipped_rows, ops.flip(base, axis=2), ops.flip(flipped_rows, axis=2)]
    return ops.concatenate(views, axis=0)


@keras.saving.register_keras_serializable(package="malaria")
class DihedralViews(layers.Layer):
    """(B, H, W, C) → (8B, H, W, C): every image in each of its 8 dihedral views."""

    def call(self, images):
        return dihedral_views(images)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else DIHEDRAL_VIEWS * input_shape[0]
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="malaria")
class ViewMean(layers.Layer):
    """(8B, …) → (B, …): the mean over each image's 8 views."""

    def call(self, outputs):
        per_view = ops.reshape(outputs, (DIHEDRAL_VIEWS, -1, *outputs.shape[1:]))
        return ops.mean(per_view, axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // DIHEDRAL_VIEWS
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package="malaria")
class Temperature(layers.Layer):
    """Divides the logit of a probability by `temperature` (fitted on validation so that the
    probabilities mean what they say; it keeps their order)."""

    def __init__(self, temperature: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probability):
        p = ops.clip(ops.cast(probability, "float32"), 1e-7, 1.0 - 1e-7)
        return ops.sigmoid((ops.log(p) - ops.log1p(-p)) / self.temperature)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


TTA_SUFFIX = "_tta"
CALIBRATED_SUFFIX = "_calibrated"


def with_test_time_augmentation(model: keras.Model) -> keras.Model:
    """A model whose output is `model`'s mean over the 8 dihedral views of each input image;
    it shares every weight with `model`, and saves and loads as one Keras model."""
    return serving_model(model, test_time_augmentation=True)


def serving_model(
    network: keras.Model, test_time_augmentation: bool, temperature: float | None = None
) -> keras.Model:
    """`network` as it is registered: averaged over the 8 dihedral views of each image when
    `test_time_augmentation`, its probability tempered by `temperature` when given (a model
    that shares every weight with `network` and saves as one Keras model); `network` itself
    when neither applies."""
    if not test_time_augmentation and temperature is None:
        return network
    inputs = keras.Input(shape=network.input_shape[1:], name="pixels")
    name = network.name
    if test_time_augmentation:
        views = DihedralViews(name="views")(inputs)
        outputs = ViewMean(name="view_mean", dtype="float32")(network(views))
        name += TTA_SUFFIX
    else:
        outputs = network(inputs)
    if temperature is not None:
        outputs = Temperature(temperature, name="temperature", dtype="float32")(outputs)
        name += CALIBRATED_SUFFIX
    return keras.Model(inputs, outputs, name=name)


def model_temperature(model: keras.Model) -> float:
    """The temperature a registered model applies to its output (1.0: none)."""
    layer = next((each for each in model.layers if isinstance(each, Temperature)), None)
    return 1.0 if layer is None else layer.temperature


def inner_network(model: keras.Model) -> keras.Model:
    """The network inside a model built by `serving_model` (for pictures of its layers); any
    other model as it is."""
    if not any(isinstance(layer, DihedralViews | Temperature) for layer in model.layers):
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))
