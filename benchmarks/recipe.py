"""Recipe benchmark: test accuracy against training time, epoch by epoch, per recipe.

    python benchmarks/recipe.py --folder ../shared/data/malaria-sample \
        [--recipes "resnet@64 resnet@100:base_filters=16"] [--epochs 30]

A recipe is `variant@image_size`, optionally `:key=value,...` for training settings
(`lr`, `batch`, `patience`, `plateau` = epochs before the learning rate is cut,
`augment=lecture|flips`) and variant options (e.g. `resnet@64:base_filters=16`). Each one
ingests the folder at its image size (patient-grouped split, the pipeline's defaults), trains
as the pipeline does (streamed batches, early stopping on val_loss, best weights restored) and,
after every epoch, scores the test split. The time axis is training time: the test scoring
is not counted. Prints and saves benchmarks/results/recipe.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import save

TRAINING_KEYS = {
    "lr": "learning_rate",
    "batch": "batch_size",
    "patience": "patience",
    "plateau": "reduce_lr_patience",
}

AUGMENTATIONS = {
    "lecture": {"enabled": True},
    "flips": {
        "enabled": True,
        **dict.fromkeys(("rotation_degrees", "zoom", "width_shift", "height_shift", "shear"), 0),
        "vertical_flip": True,
    },
}


def parse_recipe(text: str) -> tuple[str, int, dict, dict]:
    """`variant@size[:key=value,...]` → variant, size, training settings, variant options."""
    head, _, settings = text.partition(":")
    variant, _, size = head.partition("@")
    training, options = {}, {}
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        if key == "augment":
            training["augmentation"] = AUGMENTATIONS[value]
            continue
        number = float(value) if "." in value or "e" in value else int(value)
        if key in TRAINING_KEYS:
            training[TRAINING_KEYS[key]] = number
        else:
            options[key] = number
    return variant, int(size or 100), training, options


def run_recipe(folder: Path, text: str, epochs: int, datasets_dir: Path) -> dict:
    import keras
    import numpy as np

    from cnn.batches import SplitBatches
    from cnn.config import IngestConfig, TrainConfig
    from cnn.dataset import build_dataset
    from cnn.metrics import evaluate_predictions
    from cnn.sources import open_source
    from cnn.training import PREDICT_BATCH, train_on_dataset

    variant, size, training, options = parse_recipe(text)
    started = time.perf_counter()
    dataset, cached = build_dataset(
        open_source(f"folder:{folder}"), IngestConfig(image_size=size), datasets_dir
    )
    ingest_seconds = time.perf_counter() - started
    test = SplitBatches(dataset, "test", PREDICT_BATCH)
    config = TrainConfig(epochs=epochs, **training, variant_options={variant: options})

    class TestCurve(keras.callbacks.Callback):
        """After each epoch: training seconds so far (scoring excluded) and test accuracy."""

        def __init__(self) -> None:
            super().__init__()
            self.points: list[dict] = []
            self.scoring_seconds = 0.0

        def on_train_begin(self, logs=None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            scoring_started = time.perf_counter()
            seconds = scoring_started - self.started - self.scoring_seconds
            probability = np.asarray(self.model.predict(test, verbose=0)).reshape(-1)
            accuracy = evaluate_predictions(test.labels, probability).accuracy
            self.points.append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": round(seconds, 1),
                    "val_accuracy": round(float(logs["val_accuracy"]), 4),
                    "test_accuracy": round(accuracy, 4),
                }
            )
            self.scoring_seconds += time.perf_counter() - scoring_started
            print(text, json.dumps(self.points[-1]), flush=True)

    curve = TestCurve()
    result = train_on_dataset(dataset, variant, config, callbacks=[curve])
    probability = np.asarray(result.model.predict(test, verbose=0)).reshape(-1)
    final = evaluate_predictions(test.labels, probability)
    return {
        "recipe": text,
        "variant": variant,
        "image_size": size,
        "training": config.model_dump(
            include={"epochs", "batch_size", "learning_rate", "patience"}
        ),
        "variant_options": options,
        "parameters": result.model.count_params(),
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_cached": cached,
        "train_seconds": round(curve.points[-1]["train_seconds"], 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "test_accuracy": round(final.accuracy, 4),
        "confusion_matrix": final.confusion_matrix,
        "curve": curve.points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, type=Path, help="NIH-layout image folder")
    parser.add_argument(
        "--recipes", default="simple@100 resnet@64 resnet@100", help="space-separated recipes"
    )
    parser.add_argument("--epochs", type=int, default=30, help="most epochs per recipe")
    parser.add_argument("--output", default="recipe", help="results file name (no .json)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for text in args.recipes.split():
            results.append(run_recipe(args.folder, text, args.epochs, Path(scratch)))
            summary = {key: value for key, value in results[-1].items() if key != "curve"}
            print(json.dumps(summary), flush=True)
    save(
        args.output,
        {
            "benchmark": "recipe",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "folder": str(args.folder),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
