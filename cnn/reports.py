"""Report pictures and the HTML page: confusion matrix, ROC, learning curves, first-layer filters
and feature maps, misclassified cells, Grad-CAM.

Each picture is a function that returns a matplotlib `Figure` (made directly, never through
pyplot, so no global state is touched) or a uint8 array; a task saves and logs them.
"""

import base64
import html
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from sklearn.metrics import auc, roc_curve

from cnn.augmentation import without_test_time_augmentation
from cnn.ensembles import ensemble_members
from cnn.labels import LABEL_NAMES, PARASITIZED, UNINFECTED
from cnn.metrics import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    DEFAULT_THRESHOLD,
    BinaryEvaluation,
    evaluate_predictions,
    predicted_labels,
)

TILE_INCHES = 1.3
FEATURE_MAP_LIMIT = 32
FEATURE_MAP_COLUMNS = 4
"""The lecture's 8×4 grid of the first layer's 32 feature maps."""
GRAD_CAM_GRADIENT_BACKENDS = ("tensorflow", "jax")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Cell = str | float | int


# --- Evaluation -------------------------------------------------------------------------------


def confusion_heatmap(evaluation: BinaryEvaluation) -> Figure:
    """The 2×2 counts in the lecture's layout (rows true:yes/no, columns pred:yes/no; yes =
    parasitized), each annotated with its count and its share of the row."""
    counts = np.array(evaluation.confusion_matrix)
    figure = Figure(figsize=(4.2, 3.6), layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for row in range(2):
        row_total = int(counts[row].sum())
        for column in range(2):
            count = int(counts[row, column])
            share = f"\n{count / row_total:.0%}" if row_total else ""
            dark = count > counts.max() / 2
            ax.text(
                column,
                row,
                f"{count}{share}",
                ha="center",
                va="center",
                fontsize=12,
                color="white" if dark else "black",
            )
    ax.set_xticks([0, 1], CONFUSION_COLUMNS)
    ax.set_yticks([0, 1], CONFUSION_ROWS)
    ax.xaxis.tick_top()
    ax.set_title(f"Confusion matrix, yes = parasitized\naccuracy {evaluation.accuracy:.1%}")
    return figure


def roc_curve_figure(
    labels: np.ndarray, uninfected_probability: np.ndarray, threshold: float | None = None
) -> Figure:
    """ROC with parasitized as the positive class (score = 1 − P(uninfected)) and its AUC,
    with the operating point at `threshold` marked when given.

    With a single class in `labels` the curve is undefined: the title says so.
    """
    truly_parasitized = np.asarray(labels).ravel() == PARASITIZED
    parasitized_score = 1.0 - np.asarray(uninfected_probability, dtype=np.float64).ravel()
    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    positives = int(truly_parasitized.sum())
    if 0 < positives < truly_parasitized.size:
        false_positive_rate, true_positive_rate, _ = roc_curve(truly_parasitized, parasitized_score)
        area = auc(false_positive_rate, true_positive_rate)
        ax.plot(false_positive_rate, true_positive_rate, label=f"AUC = {area:.3f}")
        if threshold is not None:
            point = evaluate_predictions(labels, uninfected_probability, threshold)
            ax.plot(
                1 - point.specificity,
                point.sensitivity,
                "o",
                color="crimson",
                label=f"threshold {threshold:.3f}: sensitivity {point.sensitivity:.1%}, "
                f"specificity {point.specificity:.1%}",
            )
        ax.set_title("ROC (positive = parasitized)")
    else:
        only = LABEL_NAMES[PARASITIZED] if positives else LABEL_NAMES[UNINFECTED]
        ax.set_title(f"ROC undefined: only {only} cells" if truly_parasitized.size else "no cells")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    return figure


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """Keras' history as the lecture plots it: one panel for loss, one for accuracy, each with
    its validation curve when there is one; x is the epoch, from 1."""
    metrics = [name for name in ("loss", "accuracy") if name in history or f"val_{name}" in history]
    if not metrics:
        raise ValueError(f"history has neither loss nor accuracy (keys: {sorted(history)})")
    figure = Figure(figsize=(4.5 * len(metrics), 3.5), layout="constrained")
    for ax, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker=".", label=label)
        if metric == "loss" and history.get("val_loss"):
            best_epoch = int(np.argmin(history["val_loss"])) + 1
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return figure


def worst_mistakes(
    labels: np.ndarray,
    uninfected_probability: np.ndarray,
    limit: int = 16,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Indices of cells misclassified at `threshold`, most confident mistake first (at most
    `limit`)."""
    labels = np.asarray(labels).ravel()
    uninfected = np.asarray(uninfected_probability, dtype=np.float64).ravel()
    if labels.shape != uninfected.shape:
        raise ValueError("labels and probabilities must be of equal length")
    wrong = np.flatnonzero(predicted_labels(uninfected, threshold) != labels)
    wrong_class_probability = np.where(labels == PARASITIZED, uninfected, 1.0 - uninfected)
    order = np.argsort(-wrong_class_probability[wrong], kind="stable")
    return wrong[order][:limit]


def misclassified_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    uninfected_probability: np.ndarray,
    limit: int = 16,
    threshold: float = DEFAULT_THRESHOLD,
) -> Figure | None:
    """The most confidently misclassified cells, each titled with its true label and
    P(parasitized); None when every cell is right."""
    worst = worst_mistakes(labels, uninfected_probability, limit, threshold)
    if worst.size == 0:
        return None
    labels = np.asarray(labels).ravel()
    uninfected = np.asarray(uninfected_probability, dtype=np.float64).ravel()
    figure, axes = _tile_grid(worst.size, columns=4)
    for ax, index in zip(axes, worst, strict=True):
        ax.imshow(images[index])
        ax.set_title(
            f"true: {LABEL_NAMES[labels[index]]}\nP(parasitized) = {1 - uninfected[index]:.2f}",
            fontsize=8,
        )
    figure.suptitle("Most confident mistakes")
    return figure


# --- First convolutional layer ----------------------------------------------------------------


def first_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's first Conv2D, searching nested models (a transfer backbone) in order."""
    return _first_conv_path(model)[-1]


def filter_grid(model: keras.Model, filters_per_row: int = 1) -> Figure:
    """The first conv layer's filters as in the lecture: one small image per input channel
    (R, G, B) for each filter, each scaled to its own range for display.

    One filter per row by default; `filters_per_row` puts several side by side.
    """
    layer = first_conv_layer(model)
    kernel = keras.ops.convert_to_numpy(layer.kernel)  # (height, width, channels, filters)
    channels, filters = kernel.shape[2], kernel.shape[3]
    channel_names = ("R", "G", "B") if channels == 3 else tuple(f"ch {c}" for c in range(channels))
    per_row = max(1, min(filters_per_row, filters))
    rows, columns = -(-filters // per_row), per_row * channels
    figure = Figure(figsize=(0.5 * columns + 0.6, 0.5 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for filter_index in range(filters):
        row, first_column = divmod(filter_index, per_row)
        for channel in range(channels):
            ax = axes[row, first_column * channels + channel]
            ax.set_axis_on()
            ax.imshow(_unit_range(kernel[:, :, channel, filter_index]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(channel_names[channel], fontsize=8)
            if channel == 0:
                ax.set_ylabel(str(filter_index), fontsize=7, rotation=0, labelpad=8)
    figure.suptitle(f"{layer.name}: {filters} filters {kernel.shape[0]}×{kernel.shape[1]}")
    return figure


def first_conv_activations(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The first conv layer's outputs (N × h × w × filters, float32) for uint8 images, computed
    through everything before it (rescaling, a backbone's preprocessing, its first layers)."""
    extractor = _extractor(model, _first_conv_path(model))
    activations = extractor(np.asarray(images, "float32"), training=False)
    return keras.ops.convert_to_numpy(activations).astype(np.float32)


def feature_maps(model: keras.Model, image: np.ndarray) -> Figure:
    """The first conv layer's activation maps for one cell: the lecture's 8×4 grid of 32 (fewer
    filters: all of them, four to a row; more: the first 32)."""
    maps = first_conv_activations(model, image[None])[0]
    shown = min(maps.shape[-1], FEATURE_MAP_LIMIT)
    figure, axes = _tile_grid(shown, columns=FEATURE_MAP_COLUMNS, inches=1.1)
    for index, ax in enumerate(axes[:shown]):
        ax.imshow(maps[:, :, index], cmap="viridis")
    layer = first_conv_layer(model)
    figure.suptitle(f"{layer.name}: {shown} of {maps.shape[-1]} feature maps")
    return figure


# --- Grad-CAM ---------------------------------------------------------------------------------


def grad_cam(model: keras.Model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heatmaps (N × H × W, in [0, 1], at the input's size) for each image's predicted
    class: the gradient of p (uninfected predicted) or 1 − p (parasitized) with respect to the
    last spatial activation before pooling or flattening, inside a nested backbone if there is
    one. Gradients are backend-specific: TensorFlow and JAX are supported."""
    backend = keras.backend.backend()
    if backend not in GRAD_CAM_GRADIENT_BACKENDS:
        raise NotImplementedError(f"grad_cam has no gradient code for the {backend} backend")
    images = np.asarray(images, "float32")
    path = _last_spatial_path(model)
    features, head = _extractor(model, path), _head(model, path)
    gradient = _tensorflow_gradient if backend == "tensorflow" else _jax_gradient
    heatmaps = []
    for start in range(0, len(images), batch_size):
        activations = features(images[start : start + batch_size], training=False)
        gradients = gradient(head, activations).astype(np.float32)
        activations = keras.ops.convert_to_numpy(activations).astype(np.float32)
        channel_weights = gradients.mean(axis=(1, 2), keepdims=True)
        heatmaps.extend(np.maximum((channel_weights * activations).sum(axis=-1), 0.0))
    return np.stack([_resize_unit(cam, images.shape[1:3]) for cam in heatmaps])


def grad_cam_figure(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    uninfected_probability: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> Figure:
    """Each cell beside its Grad-CAM overlay (for the predicted class), four pairs to a row."""
    heatmaps = grad_cam(model, images)
    uninfected = np.asarray(uninfected_probability, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    figure, axes = _tile_grid(2 * len(images), columns=8)
    for index, image in enumerate(images):
        cell_ax, overlay_ax = axes[2 * index], axes[2 * index + 1]
        predicted = predicted_labels(uninfected[index : index + 1], threshold)[0]
        cell_ax.imshow(image)
        cell_ax.set_title(f"true: {LABEL_NAMES[labels[index]]}", fontsize=8)
        overlay_ax.imshow(image)
        overlay_ax.imshow(heatmaps[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        overlay_ax.set_title(
            f"pred: {LABEL_NAMES[predicted]}\nP(parasitized) = {1 - uninfected[index]:.2f}",
            fontsize=8,
        )
    figure.suptitle("Grad-CAM: where the predicted class's evidence lies")
    return figure


def _tensorflow_gradient(head: keras.Model, activations) -> np.ndarray:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(activations)
        uninfected = head(activations, training=False)[:, 0]
        predicted_class_score = tf.where(uninfected >= 0.5, uninfected, 1.0 - uninfected)
    return tape.gradient(predicted_class_score, activations).numpy()


def _jax_gradient(head: keras.Model, activations) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    def predicted_class_score(values):
        uninfected = head(values, training=False)[:, 0]
        return jnp.sum(jnp.where(uninfected >= 0.5, uninfected, 1.0 - uninfected))

    return np.asarray(jax.grad(predicted_class_score)(activations))


# --- PNG and HTML -----------------------------------------------------------------------------


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg, no display needed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def array_png(array: np.ndarray) -> bytes:
    """A uint8 image array (H × W, H × W × 3 or H × W × 4) as PNG bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"array_png needs uint8 pixels, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Table:
    """A small table for the HTML report: a caption, column headings, rows of cells."""

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]


def confusion_table(evaluation: BinaryEvaluation) -> Table:
    """The confusion matrix as a report table, in the lecture's layout."""
    rows = [
        [name, *counts]
        for name, counts in zip(CONFUSION_ROWS, evaluation.confusion_matrix, strict=True)
    ]
    return Table("Confusion matrix (yes = parasitized)", ["", *CONFUSION_COLUMNS], rows)


def html_report(
    title: str,
    summary: dict[str, Cell],
    sections: Sequence[tuple[str, bytes]],
    tables: Sequence[Table] = (),
) -> str:
    """One self-contained HTML page: the summary table, any further tables, then each section's
    heading and PNG (embedded as a data URI). All text is escaped; nothing is fetched."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_REPORT_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        _html_table(Table("Summary", ["", ""], list(summary.items())), header=False),
        *(_html_table(table) for table in tables),
    ]
    for heading, png in sections:
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"section {heading!r} is not a PNG image")
        encoded = base64.b64encode(png).decode("ascii")
        parts += [
            "<section>",
            f"<h2>{html.escape(heading)}</h2>",
            f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(heading)}">',
            "</section>",
        ]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


_REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #ddd; padding: .3em .8em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _html_table(table: Table, header: bool = True) -> str:
    rows = [f"<table><caption>{html.escape(table.caption)}</caption>"]
    if header:
        headings = "".join(f"<th>{html.escape(str(name))}</th>" for name in table.columns)
        rows.append(f"<tr>{headings}</tr>")
    for row in table.rows:
        name, *values = row
        cells = "".join(
            f'<td class="number">{html.escape(_format_cell(value))}</td>'
            if isinstance(value, int | float) and not isinstance(value, bool)
            else f"<td>{html.escape(_format_cell(value))}</td>"
            for value in values
        )
        rows.append(f"<tr><th>{html.escape(_format_cell(name))}</th>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _format_cell(value: Cell) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- Helpers ----------------------------------------------------------------------------------


def _tile_grid(count: int, columns: int, inches: float = TILE_INCHES) -> tuple[Figure, list]:
    """A figure of `count` image tiles, `columns` to a row, ticks off; unused tiles hidden."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = Figure(figsize=(inches * columns, inches * rows + 0.5), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        ax.set_visible(index < count)
    return figure, axes[:count]


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes mid-grey."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.full(values.shape, 0.5)
    return (values - low) / (high - low)


def _resize_unit(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a non-negative heatmap bilinearly to (height, width) and scale it to peak at 1
    (all zero stays zero)."""
    heatmap = heatmap.astype(np.float32)
    if heatmap.shape != tuple(size):
        resized = Image.fromarray(heatmap).resize(size[::-1], Image.Resampling.BILINEAR)
        heatmap = np.maximum(np.asarray(resized), 0.0)
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


def _last_spatial_path(model: keras.Model) -> LayerPath:
    """The last layer with a 4-D (batch, height, width, channels) output from the first
    convolution on, pooling layers excepted: Grad-CAM's target."""
    convolutions = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    after_first_conv, target = False, None
    for path in _layer_paths(model):
        layer = path[-1]
        after_first_conv = after_first_conv or isinstance(layer, convolutions)
        if after_first_conv and len(layer.output.shape) == 4 and not isinstance(layer, pooling):
            target = path
    if target is None:
        raise ValueError(f"model {model.name!r} has no convolutional layer for Grad-CAM")
    return target


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


# --- The run report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    """A run's pictures (file name → PNG) and the one HTML page that embeds them all."""

    pictures: dict[str, bytes]
    html: str


GRAD_CAM_CELLS_PER_CLASS = 4
GALLERY_LIMIT = 16


def report_cell_positions(
    labels: np.ndarray, uninfected_probability: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Positions (in the test split) of the cells the report shows: the worst mistakes at
    `threshold`, and the first few cells of each class (the first parasitized one gives the
    feature maps)."""
    labels = np.asarray(labels).ravel()
    firsts = [
        np.flatnonzero(labels == label)[:GRAD_CAM_CELLS_PER_CLASS]
        for label in (PARASITIZED, UNINFECTED)
    ]
    mistakes = worst_mistakes(labels, uninfected_probability, GALLERY_LIMIT, threshold)
    return np.unique(np.concatenate([*firsts, mistakes]).astype(int))


def build_run_report(
    title: str,
    summary: dict[str, Cell],
    model: keras.Model,
    labels: np.ndarray,
    uninfected_probability: np.ndarray,
    cells: dict[int, np.ndarray],
    history: dict[str, list[float]],
    augmentation_grids: dict[str, np.ndarray] | None = None,
    augmentation_used: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> RunReport:
    """Every picture of the report and the HTML page that embeds them.

    `labels` and `uninfected_probability` cover the whole test split; `cells` holds the
    images (at the model's input size) at `report_cell_positions` of it. Scores are at the
    model's `threshold`; the pictures of layers show the network inside a test-time-augmented
    model (an ensemble's first member). `augmentation_grids`: a preview per augmentation
    policy (its name → image), the one this run trained with (`augmentation_used`) first.
    """
    labels = np.asarray(labels).ravel()
    uninfected_probability = np.asarray(uninfected_probability).ravel()
    evaluation = evaluate_predictions(labels, uninfected_probability, threshold)
    model = without_test_time_augmentation(ensemble_members(model)[0])

    def shown(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.stack([cells[int(position)] for position in positions])
        return images, labels[positions], uninfected_probability[positions]

    figures: dict[str, tuple[str, Figure]] = {
        "confusion_matrix.png": ("Confusion matrix (test split)", confusion_heatmap(evaluation)),
        "roc_curve.png": (
            "ROC curve and operating point",
            roc_curve_figure(labels, uninfected_probability, threshold),
        ),
    }
    if history:
        figures["learning_curves.png"] = ("Learning curves", learning_curves(history))
    figures["filters.png"] = ("First conv layer filters", filter_grid(model, filters_per_row=4))
    examples = np.concatenate(
        [
            np.flatnonzero(labels == label)[:GRAD_CAM_CELLS_PER_CLASS]
            for label in (PARASITIZED, UNINFECTED)
        ]
    )
    figures["feature_maps.png"] = (
        "First conv layer feature maps of a test cell",
        feature_maps(model, cells[int(examples[0])]),
    )
    mistakes = worst_mistakes(labels, uninfected_probability, GALLERY_LIMIT, threshold)
    if mistakes.size:
        figures["misclassified.png"] = (
            "Misclassified test cells",
            misclassified_gallery(*shown(mistakes), limit=GALLERY_LIMIT, threshold=threshold),
        )
    figures["grad_cam.png"] = (
        "Grad-CAM: where the network looks",
        grad_cam_figure(model, *shown(examples), threshold=threshold),
    )
    pictures = {name: figure_png(figure) for name, (_, figure) in figures.items()}
    headings = {name: heading for name, (heading, _) in figures.items()}
    grids = augmentation_grids or {}
    for policy in sorted(grids, key=lambda policy: policy != augmentation_used):
        name = f"augmentation_{policy.replace('+', '-')}.png"
        pictures[name] = array_png(grids[policy])
        used = " (this run trained with it)" if policy == augmentation_used else ""
        headings[name] = f"Augmentation policy {policy}{used}: one cell, ten copies"
    sections = [(headings[name], png) for name, png in pictures.items()]
    page = html_report(title, summary, sections, tables=[confusion_table(evaluation)])
    return RunReport(pictures=pictures, html=page)
