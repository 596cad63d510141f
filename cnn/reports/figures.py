"""Charts of a model's scores: confusion matrix, ROC curve, learning curves, misclassified
cells; and the tile grid the image pictures share.

Each picture is a function that returns a matplotlib `Figure`, made directly, never through
pyplot, so no global state is touched.
"""

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, roc_curve

from cnn.evaluation.calibration import Reliability
from cnn.evaluation.metrics import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    DEFAULT_THRESHOLD,
    BinaryEvaluation,
    evaluate_predictions,
    predicted_labels,
)
from cnn.labels import LABEL_NAMES, PARASITIZED, UNINFECTED

TILE_INCHES = 1.3
MOSAIC_GAP = 1
"""Pixels between the tiles of a `mosaic`."""


def confusion_heatmap(evaluation: BinaryEvaluation) -> Figure:
    """The 2×2 counts (rows true:yes/no, columns pred:yes/no; yes = parasitized), each
    annotated with its count and its share of the row."""
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
    labels: np.ndarray, parasitized_probability: np.ndarray, threshold: float | None = None
) -> Figure:
    """ROC with parasitized as the positive class (score: P(parasitized)) and its AUC,
    with the operating point at `threshold` marked when given.

    With a single class in `labels` the curve is undefined: the title says so.
    """
    truly_parasitized = np.asarray(labels).ravel() == PARASITIZED
    parasitized_score = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    positives = int(truly_parasitized.sum())
    if 0 < positives < truly_parasitized.size:
        false_positive_rate, true_positive_rate, _ = roc_curve(truly_parasitized, parasitized_score)
        area = auc(false_positive_rate, true_positive_rate)
        ax.plot(false_positive_rate, true_positive_rate, label=f"AUC = {area:.3f}")
        if threshold is not None:
            point = evaluate_predictions(labels, parasitized_score, threshold)
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


def reliability_figure(curves: dict[str, Reliability]) -> Figure:
    """The reliability diagram: per probability bin, the share of cells that are parasitized
    against their mean P(parasitized), one line per named set of scores (e.g. before and
    after calibration) with its expected calibration error and Brier score."""
    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, curve in curves.items():
        shown = curve.counts > 0
        ax.plot(
            curve.mean_probability[shown],
            curve.parasitized_share[shown],
            "o-",
            label=f"{name}: ECE {curve.expected_calibration_error:.3f}, "
            f"Brier {curve.brier_score:.3f}",
        )
    ax.set_xlabel("mean P(parasitized) in the bin")
    ax.set_ylabel("share of the bin's cells parasitized")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability (test split)")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """Keras' history as learning curves: one panel for loss, one for accuracy, each with
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
    parasitized_probability: np.ndarray,
    limit: int = 16,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Indices of cells misclassified at `threshold`, most confident mistake first (at most
    `limit`)."""
    labels = np.asarray(labels).ravel()
    parasitized = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    if labels.shape != parasitized.shape:
        raise ValueError("labels and probabilities must be of equal length")
    wrong = np.flatnonzero(predicted_labels(parasitized, threshold) != labels)
    distance_from_truth = np.abs((labels == PARASITIZED) - parasitized)
    order = np.argsort(-distance_from_truth[wrong], kind="stable")
    return wrong[order][:limit]


def misclassified_gallery(
    images: np.ndarray,
    labels: np.ndarray,
    parasitized_probability: np.ndarray,
    limit: int = 16,
    threshold: float = DEFAULT_THRESHOLD,
) -> Figure | None:
    """The most confidently misclassified cells, each titled with its true label and
    P(parasitized); None when every cell is right."""
    worst = worst_mistakes(labels, parasitized_probability, limit, threshold)
    if worst.size == 0:
        return None
    labels = np.asarray(labels).ravel()
    parasitized = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    figure, axes = tile_grid(worst.size, columns=4)
    for ax, index in zip(axes, worst, strict=True):
        ax.imshow(images[index])
        ax.set_title(
            f"true: {LABEL_NAMES[labels[index]]}\nP(parasitized) = {parasitized[index]:.2f}",
            fontsize=8,
        )
    figure.suptitle("Most confident mistakes")
    return figure


def label_issue_gallery(
    images: np.ndarray, labels: np.ndarray, parasitized_probability: np.ndarray
) -> Figure:
    """Cells whose labels are worth a second look (most doubtful first), each titled with
    its given label and the out-of-fold P(parasitized)."""
    parasitized = np.asarray(parasitized_probability, dtype=np.float64).ravel()
    figure, axes = tile_grid(max(len(images), 1), columns=6)
    for ax, image, label, probability in zip(axes, images, labels, parasitized, strict=False):
        ax.imshow(image)
        ax.set_title(f"given: {LABEL_NAMES[label]}\nP(parasitized) = {probability:.2f}", fontsize=8)
    figure.suptitle("Labels worth a second look" if len(images) else "No label flagged")
    return figure


def tile_grid(count: int, columns: int, inches: float = TILE_INCHES) -> tuple[Figure, list]:
    """A figure of `count` image tiles, `columns` to a row, ticks off; unused tiles hidden."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = Figure(figsize=(inches * columns, inches * rows + 0.5), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        ax.set_visible(index < count)
    return figure, axes[:count]


def mosaic(tiles: np.ndarray, columns: int, gap: int = MOSAIC_GAP) -> np.ndarray:
    """Tiles (N × h × w) laid out `columns` to a row, `gap` pixels apart, as one float array
    (NaN between and after the tiles: drawn as the figure's background). One image in one
    axes renders in a fraction of the time of a grid of axes."""
    count, height, width = tiles.shape
    rows = -(-count // columns)
    canvas = np.full(
        (rows * (height + gap) - gap, columns * (width + gap) - gap), np.nan, dtype=np.float32
    )
    for index, tile in enumerate(tiles):
        top, left = mosaic_origin(index, columns, tile.shape, gap)
        canvas[top : top + height, left : left + width] = tile
    return canvas


def mosaic_origin(
    index: int, columns: int, shape: tuple[int, ...], gap: int = MOSAIC_GAP
) -> tuple[int, int]:
    """Top-left pixel of tile `index` in a `mosaic` of tiles of `shape`."""
    row, column = divmod(index, columns)
    return row * (shape[0] + gap), column * (shape[1] + gap)


def mosaic_figure(
    canvas: np.ndarray, inches_per_pixel: float, cmap: str, title: str
) -> tuple[Figure, Axes]:
    """A figure showing a `mosaic` in one axes (ticks off), each pixel `inches_per_pixel` wide;
    its axes is returned for labels."""
    height, width = canvas.shape
    figure = Figure(
        figsize=(width * inches_per_pixel + 0.8, height * inches_per_pixel + 0.9),
        layout="constrained",
    )
    ax = figure.add_subplot()
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    ax.imshow(canvas, cmap=colormap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    figure.suptitle(title)
    return figure, ax


def unit_range(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes mid-grey."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.full(values.shape, 0.5)
    return (values - low) / (high - low)
