"""Looking inside a network: the first layer's filters, its feature maps and Grad-CAM
heatmaps, for any variant, nested backbones and ensembles included."""

from collections.abc import Iterator

import keras
import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from scipy.ndimage import gaussian_filter

from cnn.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    predicted_labels,
)
from cnn.labels import LABEL_NAMES
from cnn.reports.figures import mosaic, mosaic_figure, mosaic_origin, tile_grid, unit_range

FEATURE_MAP_LIMIT = 32
FEATURE_MAP_COLUMNS = 4
"""Feature maps to a row in the first layer's picture: its 32 maps make an 8×4 grid."""
FEATURE_MAP_INCHES = 1.1
"""Width of one feature map in the picture, whatever its pixels."""
FEATURE_MAP_GAP = 2
FILTER_INCHES_PER_PIXEL = 0.16
GRAD_CAM_GRADIENT_BACKENDS = ("tensorflow", "jax")
GRAD_CAM_METHODS = ("hirescam", "gradcam")
"""How the heatmap combines gradients and activations; the first is the default."""
GRAD_CAM_MIN_SCALE = 0.5
"""Grad-CAM is taken where the feature map has at least this share of the input's side (32×32
for a 64-px input): on coarser maps the heatmap is a blur of a few cells, which cannot point
at a parasite (benchmarks/gradcam.py compares the layers)."""
GRAD_CAM_SMOOTHING_PIXELS = 1.5
"""The heatmap is blurred with a Gaussian of this σ (input pixels): a fine map reads as spots,
not specks, and its peak moves little."""


def first_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's first Conv2D, searching nested models (a transfer backbone) in order."""
    return _first_conv_path(model)[-1]


def filter_grid(model: keras.Model, filters_per_row: int = 1) -> Figure:
    """The first conv layer's filters: one small image per input channel (R, G, B) for each
    filter, each scaled to its own range for display, in one mosaic (`filter_mosaic`); each
    filter's number left of its first channel.

    One filter per row by default; `filters_per_row` puts several side by side.
    """
    layer = first_conv_layer(model)
    kernel = keras.ops.convert_to_numpy(layer.kernel)  # (height, width, channels, filters)
    channels, filters = kernel.shape[2], kernel.shape[3]
    per_row = max(1, min(filters_per_row, filters))
    canvas = filter_mosaic(kernel, per_row)
    title = f"{layer.name}: {filters} filters {kernel.shape[0]}×{kernel.shape[1]}"
    figure, ax = mosaic_figure(canvas, FILTER_INCHES_PER_PIXEL, "gray", title)
    names = ("R", "G", "B") if channels == 3 else tuple(f"ch {c}" for c in range(channels))
    ax.set_xticks(
        [
            mosaic_origin(column, per_row * channels, kernel.shape)[1] + (kernel.shape[1] - 1) / 2
            for column in range(per_row * channels)
        ],
        [names[column % channels] for column in range(per_row * channels)],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for filter_index in range(filters):
        top, left = mosaic_origin(filter_index * channels, per_row * channels, kernel.shape)
        ax.text(
            left - 0.6,
            top + (kernel.shape[0] - 1) / 2,
            str(filter_index),
            fontsize=6,
            ha="right",
            va="center",
        )
    return figure


def filter_mosaic(kernel: np.ndarray, filters_per_row: int) -> np.ndarray:
    """A conv kernel (height × width × channels × filters) as a `mosaic`: each filter's
    channels side by side in unit range, `filters_per_row` filters to a row."""
    channels, filters = kernel.shape[2], kernel.shape[3]
    tiles = np.stack(
        [
            unit_range(kernel[:, :, channel, filter_index])
            for filter_index in range(filters)
            for channel in range(channels)
        ]
    )
    return mosaic(tiles, filters_per_row * channels)


def first_conv_activations(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The first conv layer's outputs (N × h × w × filters, float32) for uint8 images, computed
    through everything before it (rescaling, a backbone's preprocessing, its first layers)."""
    extractor = _extractor(model, _first_conv_path(model))
    activations = extractor(np.asarray(images, "float32"), training=False)
    return keras.ops.convert_to_numpy(activations).astype(np.float32)


def feature_maps(model: keras.Model, image: np.ndarray) -> Figure:
    """The first conv layer's activation maps for one cell: an 8×4 grid of 32 (fewer
    filters: all of them, four to a row; more: the first 32), each map in its own range."""
    maps = first_conv_activations(model, image[None])[0]
    shown = min(maps.shape[-1], FEATURE_MAP_LIMIT)
    tiles = np.stack([unit_range(maps[:, :, index]) for index in range(shown)])
    canvas = mosaic(tiles, min(shown, FEATURE_MAP_COLUMNS), gap=FEATURE_MAP_GAP)
    title = f"{first_conv_layer(model).name}: {shown} of {maps.shape[-1]} feature maps"
    inches = FEATURE_MAP_INCHES / maps.shape[1]
    figure, _ = mosaic_figure(canvas, inches, "viridis", title)
    return figure


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 32,
    method: str = GRAD_CAM_METHODS[0],
    smoothing_pixels: float = GRAD_CAM_SMOOTHING_PIXELS,
    min_scale: float = GRAD_CAM_MIN_SCALE,
) -> np.ndarray:
    """Heatmaps (N × H × W, in [0, 1], at the input's size) of where each image's predicted
    class's evidence lies, from the gradient of p (uninfected predicted) or 1 − p (parasitized)
    with respect to the activation `grad_cam_target` picks for `min_scale` (inside a nested
    backbone if there is one). `hirescam` sums gradient × activation position by position
    (HiResCAM); `gradcam` weighs each channel by its mean gradient (Grad-CAM). Gradients are
    backend-specific: TensorFlow and JAX are supported."""
    backend = keras.backend.backend()
    if backend not in GRAD_CAM_GRADIENT_BACKENDS:
        raise NotImplementedError(f"grad_cam has no gradient code for the {backend} backend")
    if method not in GRAD_CAM_METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {', '.join(GRAD_CAM_METHODS)}"
        )
    images = np.asarray(images, "float32")
    path, head = grad_cam_target(model, min_scale)
    features = _extractor(model, path)
    gradient = _tensorflow_gradient if backend == "tensorflow" else _jax_gradient
    heatmaps = []
    for start in range(0, len(images), batch_size):
        activations = features(images[start : start + batch_size], training=False)
        gradients = gradient(head, activations).astype(np.float32)
        activations = keras.ops.convert_to_numpy(activations).astype(np.float32)
        if method == "gradcam":
            gradients = gradients.mean(axis=(1, 2), keepdims=True)
        heatmaps.extend(np.maximum((gradients * activations).sum(axis=-1), 0.0))
    return np.stack([_resize_unit(cam, images.shape[1:3], smoothing_pixels) for cam in heatmaps])


def grad_cam_figure(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    parasitized_probability: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> Figure:
    """Each cell beside its Grad-CAM overlay (for the predicted class), four pairs to a row."""
    heatmaps = grad_cam(model, images)
    parasitized = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    figure, axes = tile_grid(2 * len(images), columns=8)
    for index, image in enumerate(images):
        cell_ax, overlay_ax = axes[2 * index], axes[2 * index + 1]
        predicted = predicted_labels(parasitized[index : index + 1], threshold)[0]
        cell_ax.imshow(image)
        cell_ax.set_title(f"true: {LABEL_NAMES[labels[index]]}", fontsize=8)
        overlay_ax.imshow(image)
        overlay_ax.imshow(heatmaps[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        overlay_ax.set_title(
            f"pred: {LABEL_NAMES[predicted]}\nP(parasitized) = {parasitized[index]:.2f}",
            fontsize=8,
        )
    figure.suptitle("Grad-CAM: where the predicted class's evidence lies")
    return figure


def _tensorflow_gradient(head: keras.Model, activations) -> np.ndarray:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(activations)
        output = head(activations, training=False)[:, 0]  # the raw sigmoid, either class's
        predicted_class_score = tf.maximum(output, 1.0 - output)  # the predicted class's
    return tape.gradient(predicted_class_score, activations).numpy()


def _jax_gradient(head: keras.Model, activations) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    def predicted_class_score(values):
        output = head(values, training=False)[:, 0]
        return jnp.sum(jnp.maximum(output, 1.0 - output))

    return np.asarray(jax.grad(predicted_class_score)(activations))


def _resize_unit(heatmap: np.ndarray, size: tuple[int, int], smoothing_pixels: float) -> np.ndarray:
    """Resize a non-negative heatmap bilinearly to (height, width), blur it by
    `smoothing_pixels` and scale it to peak at 1 (all zero stays zero)."""
    heatmap = heatmap.astype(np.float32)
    if heatmap.shape != tuple(size):
        resized = Image.fromarray(heatmap).resize(size[::-1], Image.Resampling.BILINEAR)
        heatmap = np.maximum(np.asarray(resized), 0.0)
    if smoothing_pixels:
        heatmap = gaussian_filter(heatmap, smoothing_pixels)
    peak = float(heatmap.max())
    return heatmap / peak if peak > 0 else np.zeros_like(heatmap)


LayerPath = tuple[keras.layers.Layer, ...]
"""A layer reached through nested models: (nested model, …, layer)."""


def _layer_paths(model: keras.Model) -> Iterator[LayerPath]:
    """Every layer in graph order; a nested model contributes its own layers, not itself."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from ((layer, *path) for path in _layer_paths(layer))
        else:
            yield (layer,)


def _first_conv_path(model: keras.Model) -> LayerPath:
    for path in _layer_paths(model):
        if isinstance(path[-1], keras.layers.Conv2D):
            return path
    raise ValueError(f"model {model.name!r} has no Conv2D layer")


def grad_cam_target(
    model: keras.Model, min_scale: float = GRAD_CAM_MIN_SCALE
) -> tuple[LayerPath, keras.Model]:
    """Grad-CAM's layer and the rest of the model from it: the last spatial activation (a
    4-D output from the first convolution on, pooling excepted) whose side is at least
    `min_scale` of the input's and that the rest of the network depends on alone
    (a residual block's output, not a layer inside it); the last such activation of any size
    if none is that fine."""
    spatial = _spatial_paths(model)
    least = min_scale * min(model.input_shape[1:3])
    fine = [path for path in spatial if min(path[-1].output.shape[1:3]) >= least]
    for path in [*reversed(fine), *reversed(spatial)]:
        try:
            return path, _head(model, path)
        except ValueError:  # a skip connection goes around it
            continue
    raise ValueError(f"model {model.name!r} has no convolutional layer for Grad-CAM")


def _spatial_paths(model: keras.Model) -> list[LayerPath]:
    """The layers with a 4-D (batch, height, width, channels) output from the first
    convolution on, pooling layers excepted, in graph order."""
    convolutions = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    after_first_conv, spatial = False, []
    for path in _layer_paths(model):
        layer = path[-1]
        after_first_conv = after_first_conv or isinstance(layer, convolutions)
        if after_first_conv and len(layer.output.shape) == 4 and not isinstance(layer, pooling):
            spatial.append(path)
    return spatial


def _call_tensors(model: keras.Model, nested: keras.Model):
    """The tensors that `nested` takes and returns where `model`'s graph calls it.

    Keras keeps them on the graph's call nodes; it has no public accessor for a nested model.
    """
    graph = getattr(model, "_functional", None) or model
    for nodes in getattr(graph, "_nodes_by_depth", {}).values():
        for node in nodes:
            if node.operation is nested:
                return node.input_tensors[0], node.output_tensors[0]
    raise ValueError(f"cannot find where model {model.name!r} calls {nested.name!r}")


def _extractor(model: keras.Model, path: LayerPath) -> keras.Model:
    """A model from `model`'s input to the output of the layer at `path`."""
    layer, *inner = path
    if not inner:
        return keras.Model(model.input, layer.output)
    nested_input, _ = _call_tensors(model, layer)
    return keras.Model(model.input, _extractor(layer, tuple(inner))(nested_input))


def _head(model: keras.Model, path: LayerPath) -> keras.Model:
    """A model from the output of the layer at `path` to `model`'s output."""
    layer, *inner = path
    if not inner:
        return keras.Model(layer.output, model.output)
    inner_head = _head(layer, tuple(inner))
    _, nested_output = _call_tensors(model, layer)
    if nested_output is model.output:
        return inner_head
    outer_rest = keras.Model(nested_output, model.output)
    start = keras.Input(shape=inner_head.input.shape[1:])
    return keras.Model(start, outer_rest(inner_head(start)))
