"""Grad-CAM check: does the heatmap's peak fall on the parasite of real parasitized cells?

    python benchmarks/gradcam.py --folder ../shared/data/malaria-dev [--epochs 20] [--model M]

Ingests the folder at the default image size, trains the default variant with the default
recipe on the pipeline's own patient split (or loads `--model`), then takes the report's
heatmap (`cnn.reports.inspection.grad_cam`, for the parasitized class) of every test cell that is
parasitized and predicted so (at 0.5). The parasite is found by a simple colour mask: inside
the cell (filled, its rim of `RIM_PIXELS` eroded), the pixels whose green is under
`STAIN_GREEN_RATIO` of the cell's median green (the stain is dark purple on a pink cell).
A heatmap points at the parasite when its peak lies in the mask ("on"), or in the mask grown
by `NEAR_PIXELS` ("near"). Beside them: the rates of a point drawn at random in the cell;
each method of `GRAD_CAM_METHODS` at the layers that other `min_scale` values would
choose; and the same network untrained (the rates must come from what it learned, not from
its shape).

Prints and saves benchmarks/results/gradcam.json and a picture of examples, gradcam.png.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import RESULTS_DIR, save

BACKGROUND_LEVEL = 30
"""A pixel whose brightest channel is at most this is the black background around a cell."""
RIM_PIXELS = 3
"""The cell's rim (dark where it fades into the background) is left out of the mask."""
STAIN_GREEN_RATIO = 0.7
NEAR_PIXELS = 4
"""Half a cell of an 8×8 map at 64 px."""
MIN_BLOB_PIXELS = 4
"""A cell whose mask is smaller has no stain this rule can see: it is left out of the rates."""
MIN_SCALES = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
"""`min_scale` values compared (2×2 to 32×32 maps at 64 px); the pipeline's is among them."""
EXAMPLES = 16
MODEL_PATH = RESULTS_DIR / "gradcam.keras"


def cell_and_stain(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cell's inside (rim left out) and its dark-purple stain, as boolean masks."""
    cell = ndimage.binary_fill_holes(image.max(axis=-1) > BACKGROUND_LEVEL)
    inside = ndimage.binary_erosion(cell, iterations=RIM_PIXELS)
    if not inside.any():
        return inside, inside
    green = image[..., 1].astype(np.float32)
    return inside, inside & (green < STAIN_GREEN_RATIO * np.median(green[inside]))


def peak_rates(heatmaps: np.ndarray, insides: np.ndarray, stains: np.ndarray) -> dict:
    """How often the heatmaps' peaks fall on the stain and near it, and how often a point
    drawn at random in the cell would."""
    near = np.stack([ndimage.binary_dilation(s, iterations=NEAR_PIXELS) for s in stains]) & insides
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    rows = np.arange(len(heatmaps))
    on, close = stains.reshape(len(rows), -1), near.reshape(len(rows), -1)
    area = insides.reshape(len(rows), -1).sum(axis=1)
    return {
        "peak_on_stain": round(float(on[rows, flat].mean()), 4),
        "peak_near_stain": round(float(close[rows, flat].mean()), 4),
        "random_point_on_stain": round(float((on.sum(axis=1) / area).mean()), 4),
        "random_point_near_stain": round(float((close.sum(axis=1) / area).mean()), 4),
    }


def examples_figure(images, heatmaps, stains, path: Path) -> None:
    """A few cells, each above its heatmap with the peak (white ×) and the stain's outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = EXAMPLES // 2
    figure, axes = plt.subplots(4, columns, figsize=(1.5 * columns, 6.4))
    shown = zip(images[:EXAMPLES], heatmaps[:EXAMPLES], stains[:EXAMPLES], strict=True)
    for index, (image, heatmap, stain) in enumerate(shown):
        row, column = divmod(index, columns)
        cell_ax, overlay_ax = axes[2 * row, column], axes[2 * row + 1, column]
        cell_ax.imshow(image)
        overlay_ax.imshow(image)
        overlay_ax.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        overlay_ax.contour(stain, levels=[0.5], colors="white", linewidths=0.8)
        y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
        overlay_ax.plot(x, y, "wx", markersize=6, markeredgewidth=1.5)
    for ax in axes.ravel():
        ax.axis("off")
    figure.suptitle("Parasitized test cells and their heatmaps: peak (×), stain mask (outline)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="an NIH-layout image folder")
    parser.add_argument("--epochs", type=int, help="training epochs (the recipe's by default)")
    parser.add_argument(
        "--model",
        type=Path,
        help="check this trained model (.keras) instead of training one (a training saves its "
        f"model as benchmarks/results/{MODEL_PATH.name})",
    )
    args = parser.parse_args()

    import keras

    from cnn.config import DEFAULT_VARIANTS, IngestConfig, TrainConfig
    from cnn.data.dataset import load_split
    from cnn.evaluation.metrics import predicted_labels
    from cnn.evaluation.scoring import in_batches, parasitized_probability
    from cnn.ingest.build import build_dataset
    from cnn.labels import PARASITIZED
    from cnn.models.variants import build_model  # also registers the variants' custom layers
    from cnn.reports import inspection
    from cnn.sources.specs import open_source
    from cnn.training.train import fit_variant

    variant = DEFAULT_VARIANTS[0]
    ingest = IngestConfig(source=f"folder:{args.folder.resolve()}")
    config = TrainConfig(checkpoints=False, **({"epochs": args.epochs} if args.epochs else {}))
    trained = {}
    with tempfile.TemporaryDirectory(prefix="gradcam-bench-") as scratch:
        dataset, _ = build_dataset(open_source(ingest.source), ingest, Path(scratch))
        if args.model:
            model = keras.saving.load_model(args.model)
        else:
            result = fit_variant(dataset, variant, config)
            model = result.model
            MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
            model.save(MODEL_PATH)
            trained = {"epochs_run": result.epochs_run, "train_seconds": round(result.seconds, 1)}
        images, labels = load_split(dataset, "test")
    predicted = predicted_labels(parasitized_probability(model, in_batches(images)))  # at 0.5
    chosen = np.flatnonzero((labels == PARASITIZED) & (predicted == PARASITIZED))
    masks = [cell_and_stain(images[index]) for index in chosen]
    insides = np.stack([inside for inside, _ in masks])
    stains = np.stack([stain for _, stain in masks])
    visible = stains.reshape(len(chosen), -1).sum(axis=1) >= MIN_BLOB_PIXELS
    cells, insides, stains = images[chosen][visible], insides[visible], stains[visible]

    pipeline = (inspection.GRAD_CAM_MIN_SCALE, inspection.GRAD_CAM_METHODS[0])
    layers, shown = [], None
    for scale in MIN_SCALES:
        path, _ = inspection.grad_cam_target(model, scale)
        for method in inspection.GRAD_CAM_METHODS:
            started = time.perf_counter()
            heatmaps = inspection.grad_cam(model, cells, method=method, min_scale=scale)
            layers.append(
                {
                    "min_scale": scale,
                    "layer": path[-1].name,
                    "map_side": int(path[-1].output.shape[1]),
                    "method": method,
                    "seconds": round(time.perf_counter() - started, 2),
                    **peak_rates(heatmaps, insides, stains),
                }
            )
            print(json.dumps(layers[-1]), flush=True)
            if (scale, method) == pipeline:
                shown = heatmaps
    keras.utils.set_random_seed(ingest.seed)
    untrained = inspection.grad_cam(build_model(variant, dataset.image_shape), cells)
    figure = RESULTS_DIR / "gradcam.png"
    save(
        "gradcam",
        {
            "folder": str(args.folder),
            "variant": variant,
            "image_size": ingest.image_size,
            "model": str(args.model or MODEL_PATH),
            **trained,
            "test_cells": len(labels),
            "test_accuracy_at_half": round(float((predicted == labels).mean()), 4),
            "parasitized_predicted_so": len(chosen),
            "with_visible_stain": int(visible.sum()),
            "mask": {
                "stain_green_ratio": STAIN_GREEN_RATIO,
                "rim_pixels": RIM_PIXELS,
                "near_pixels": NEAR_PIXELS,
                "min_blob_pixels": MIN_BLOB_PIXELS,
            },
            "pipeline": dict(zip(("min_scale", "method"), pipeline, strict=True)),
            "pipeline_rates": peak_rates(shown, insides, stains),
            "untrained_rates": peak_rates(untrained, insides, stains),
            "layers": layers,
            "figure": str(figure),
            "machine": platform.node(),
        },
    )
    examples_figure(cells, shown, stains, figure)


if __name__ == "__main__":
    main()
