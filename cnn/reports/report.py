"""The run report: its pictures as PNGs and one self-contained HTML page that embeds them."""

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from cnn.evaluation.lab_scores import LabScores
from cnn.evaluation.metrics import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    DEFAULT_THRESHOLD,
    BinaryEvaluation,
    evaluate_predictions,
)
from cnn.images import PNG_SIGNATURE
from cnn.labels import PARASITIZED, UNINFECTED
from cnn.models.augmentation import inner_network
from cnn.models.ensembles import ensemble_members
from cnn.reports.figures import (
    confusion_heatmap,
    learning_curves,
    misclassified_gallery,
    reliability_figure,
    roc_curve_figure,
    worst_mistakes,
)
from cnn.reports.inspection import feature_maps, filter_grid, grad_cam_figure

Cell = str | float | int


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
    """The confusion matrix as a report table (rows true:yes / no, columns pred:yes / no)."""
    rows = [
        [name, *counts]
        for name, counts in zip(CONFUSION_ROWS, evaluation.confusion_matrix, strict=True)
    ]
    return Table("Confusion matrix (yes = parasitized)", ["", *CONFUSION_COLUMNS], rows)


def patients_table(lab: LabScores) -> Table:
    """Per test patient: cells, estimated parasitemia (95% interval) and the labelled one."""
    rows = [
        [
            row.group,
            row.cells,
            row.predicted_parasitized,
            f"{row.parasitemia:.1%} ({row.parasitemia_low:.1%}–{row.parasitemia_high:.1%})",
            f"{row.labelled_parasitemia:.1%}",
            "yes" if row.flagged else "",
        ]
        for row in lab.patients.itertuples()
    ]
    caption = (
        f"Parasitemia per test patient (mean absolute error {lab.parasitemia_mae:.1%}; "
        "corrected for the model's validation sensitivity and specificity)"
    )
    columns = ["patient", "cells", "called parasitized", "estimated", "labelled", "flagged"]
    return Table(caption, columns, rows)


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


@dataclass(frozen=True)
class RunReport:
    """A run's pictures (file name → PNG) and the one HTML page that embeds them all."""

    pictures: dict[str, bytes]
    html: str


GRAD_CAM_CELLS_PER_CLASS = 4
GALLERY_LIMIT = 16


def report_cell_positions(
    labels: np.ndarray, parasitized_probability: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Positions (in the test split) of the cells the report shows: the worst mistakes at
    `threshold`, and the first few cells of each class (the first parasitized one gives the
    feature maps)."""
    labels = np.asarray(labels).ravel()
    firsts = [
        np.flatnonzero(labels == label)[:GRAD_CAM_CELLS_PER_CLASS]
        for label in (PARASITIZED, UNINFECTED)
    ]
    mistakes = worst_mistakes(labels, parasitized_probability, GALLERY_LIMIT, threshold)
    return np.unique(np.concatenate([*firsts, mistakes]).astype(int))


def build_run_report(
    title: str,
    summary: dict[str, Cell],
    model: keras.Model,
    labels: np.ndarray,
    parasitized_probability: np.ndarray,
    cells: dict[int, np.ndarray],
    history: dict[str, list[float]],
    augmentation_grids: dict[str, np.ndarray] | None = None,
    augmentation_used: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    lab: LabScores | None = None,
) -> RunReport:
    """Every picture of the report and the HTML page that embeds them.

    `labels` and `parasitized_probability` cover the whole test split; `cells` holds the
    images (at the model's input size) at `report_cell_positions` of it. Scores are at the
    model's `threshold`; the pictures of layers show the network inside a test-time-augmented
    model (an ensemble's first member). `augmentation_grids`: a preview per augmentation
    policy (its name → image), the one this run trained with (`augmentation_used`) first.
    """
    labels = np.asarray(labels).ravel()
    parasitized_probability = np.asarray(parasitized_probability).ravel()
    evaluation = evaluate_predictions(labels, parasitized_probability, threshold)
    model = inner_network(ensemble_members(inner_network(model))[0])

    def shown(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.stack([cells[int(position)] for position in positions])
        return images, labels[positions], parasitized_probability[positions]

    figures: dict[str, tuple[str, Figure]] = {
        "confusion_matrix.png": ("Confusion matrix (test split)", confusion_heatmap(evaluation)),
        "roc_curve.png": (
            "ROC curve and operating point",
            roc_curve_figure(labels, parasitized_probability, threshold),
        ),
    }
    if lab is not None:
        figures["reliability.png"] = (
            "Calibration: do the probabilities mean what they say?",
            reliability_figure(lab.curves()),
        )
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
    mistakes = worst_mistakes(labels, parasitized_probability, GALLERY_LIMIT, threshold)
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
    tables = [confusion_table(evaluation), *([patients_table(lab)] if lab is not None else [])]
    page = html_report(title, summary, sections, tables=tables)
    return RunReport(pictures=pictures, html=page)
