"""Recipe benchmark: accuracy, ROC-AUC, sensitivity and specificity on unseen patients.

    python benchmarks/recipe.py --folder ../shared/data/malaria-dev \
        [--recipes "default lecture resnet@64:augment=none"] [--folds 5] [--fold-limit K]

A recipe is `default` (the pipeline's own settings), `lecture` (the original course's recipe),
`previous` (the default before stain normalization and HED jitter), `before` (the one before
it), or `variant@image_size[:key=value,...]` over the pipeline's defaults. Keys: `epochs`,
`lr`, `batch`, `wd`, `schedule`, `warmup`, `patience` (0: none), `augment`, `tta` (0/1),
`target` (a sensitivity, or 0 for P > 0.5), `seed`, `ema` (a momentum), and any other key is
a variant option (e.g. `resnet@64:base_filters=16`).

`--folds 5`: patient-grouped stratified 5-fold cross-validation (`StratifiedGroupKFold`;
each fold's validation split is a further patient-grouped tenth of its training patients);
every recipe sees the same folds. `--folds 0`: the pipeline's own fixed patient split, for
quick ablations. Each recipe trains as the pipeline does (`cnn.training.train.fit_variant`),
chooses its threshold on validation, and is scored on the held-out patients with and without
test-time augmentation. Prints and saves benchmarks/results/<output>.json and .md.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _folds import ATYPICAL, atypical_patients, fold_splits, with_splits
from _measure import RESULTS_DIR

TRAINING_KEYS = {
    "epochs": "epochs",
    "lr": "learning_rate",
    "batch": "batch_size",
    "wd": "weight_decay",
    "schedule": "schedule",
    "warmup": "warmup_epochs",
    "smooth": "label_smoothing",
    "patience": "patience",
    "augment": "augment",
    "tta": "test_time_augmentation",
    "target": "target_sensitivity",
    "seed": "seed",
    "ema": "ema_momentum",
}
NAMED_RECIPES = {
    "default": "",
    "lecture": "simple@100:epochs=50,patience=5,schedule=constant,wd=0,augment=none,tta=0,target=0",
    "previous": "resnet@64:augment=dihedral+stain,target=0.97,stain_normalize=0",
    "before": "resnet@64:epochs=30,patience=5,schedule=constant,wd=0,augment=none,tta=0,target=0,"
    "base_filters=32,per_image=0,stain_normalize=0",
}
METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity")
PRIVATE = ("predictions",)
"""Per-run predictions: kept in memory for `--ensembles`, saved as Parquet, not in the JSON."""
VALIDATION_TARGETS = (0.95, 0.97, 0.98, 0.99, 0.995)
"""Target sensitivities on validation whose thresholds are also scored on test."""


def parse_recipe(text: str) -> tuple[str | None, int | None, dict, dict]:
    """`variant@size[:key=value,...]` (or a named recipe) → variant, size, training settings,
    variant options; None where the pipeline's default applies."""
    text = NAMED_RECIPES.get(text, text)
    head, _, settings = text.partition(":")
    variant, _, size = head.partition("@")
    training, options = {}, {}
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        if key not in TRAINING_KEYS:
            options[key] = _number(value)
        elif key in ("augment", "schedule"):
            training[TRAINING_KEYS[key]] = value
        elif key == "tta":
            training[TRAINING_KEYS[key]] = value == "1"
        elif key in ("patience", "target"):
            training[TRAINING_KEYS[key]] = _number(value) or None
        else:
            training[TRAINING_KEYS[key]] = _number(value)
    return variant or None, int(size) if size else None, training, options


def _number(value: str) -> int | float | None:
    if value == "none":
        return None
    return float(value) if "." in value or "e" in value else int(value)


def test_curve(dataset):
    """A Keras callback that scores the test split (no TTA, threshold 0.5) after each epoch."""
    import keras

    from cnn.evaluation.metrics import evaluate_predictions
    from cnn.evaluation.scoring import predict_split

    class TestCurve(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.points: list[dict] = []

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            scores = predict_split(self.model, dataset, "test")
            accuracy = evaluate_predictions(scores.labels, scores.parasitized_probability).accuracy
            self.points.append(
                {
                    "epoch": epoch + 1,
                    "val_accuracy": round(float(logs["val_accuracy"]), 4),
                    "test_accuracy": round(accuracy, 4),
                }
            )

    return TestCurve()


def score(validation, test, target: float | None) -> dict:
    """Test scores at the threshold chosen on validation for `target` (None: 0.5), at 0.5,
    and at the thresholds of each of `VALIDATION_TARGETS`; `validation` and `test` are
    (labels, P(parasitized)) pairs."""
    from cnn.evaluation.metrics import (
        DEFAULT_THRESHOLD,
        evaluate_predictions,
        threshold_for_sensitivity,
    )

    threshold = threshold_for_sensitivity(*validation, target) if target else DEFAULT_THRESHOLD
    evaluation = evaluate_predictions(*test, threshold)
    at_half = evaluate_predictions(*test)
    targets = {}
    for each in VALIDATION_TARGETS:
        point = evaluate_predictions(*test, threshold_for_sensitivity(*validation, each))
        targets[str(each)] = {
            name: round(point.scores()[name], 4)
            for name in ("accuracy", "sensitivity", "specificity")
        }
    return {
        **{name: round(evaluation.scores()[name], 4) for name in METRICS},
        "threshold": round(threshold, 4),
        "accuracy_at_0.5": round(at_half.accuracy, 4),
        "sensitivity_at_0.5": round(at_half.sensitivity, 4),
        "confusion_matrix": evaluation.confusion_matrix,
        "at_validation_targets": targets,
    }


def run_once(dataset, variant: str, config, label: str, curve: bool = False) -> dict:
    """Train on the dataset's train split and score its test split (and its `atypical`
    patients, when it has some) as the pipeline does."""
    from cnn.evaluation.scoring import predict_split
    from cnn.models.augmentation import with_test_time_augmentation
    from cnn.training.train import fit_variant

    callbacks = [test_curve(dataset)] if curve else []
    result = fit_variant(dataset, variant, config, callbacks=callbacks)
    splits = ["validation", "test"] + ([ATYPICAL] if ATYPICAL in dataset.manifest.counts else [])
    scored, predictions = {}, {}
    for tta, model in (
        (False, result.model),
        (True, with_test_time_augmentation(result.model)),
    ):
        scores = {split: predict_split(model, dataset, split) for split in splits}
        pairs = {s: (each.labels, each.parasitized_probability) for s, each in scores.items()}
        served = "tta" if tta else "plain"
        target = config.target_sensitivity
        scored[served] = score(pairs["validation"], pairs["test"], target)
        if ATYPICAL in pairs:
            scored[served][ATYPICAL] = score(pairs["validation"], pairs[ATYPICAL], target)
        if tta == config.test_time_augmentation:
            predictions = {s: split_predictions(dataset, s, *pairs[s]) for s in splits}
    run = {
        "fold": label,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": round(min(result.history["val_loss"]), 5),
        "train_seconds": round(result.seconds, 1),
        "val_accuracy": [round(v, 4) for v in result.history["val_accuracy"]],
        **({"test_curve": callbacks[0].points} if curve else {}),
        "parameters": result.model.count_params(),
        **scored,
    }
    print(label, json.dumps({k: v for k, v in run.items() if k != "val_accuracy"}), flush=True)
    return {**run, "predictions": predictions}


def split_predictions(dataset, split: str, labels, probabilities) -> dict[str, np.ndarray]:
    """A split's rows in the order `predict_split` scores them: source id, patient, label and
    the served model's P(parasitized)."""
    import pyarrow.parquet as pq

    table = pq.read_table(dataset.shard_paths, columns=["source_id", "group", "split"])
    rows = np.asarray(table["split"].to_pylist()) == split
    return {
        "source_id": np.asarray(table["source_id"].to_pylist())[rows],
        "group": np.asarray(table["group"].to_pylist())[rows],
        "label": labels,
        "probability": probabilities,
    }


def ensemble_result(results: list[dict], size: int, target: float | None) -> dict:
    """Per fold, the mean P(parasitized) of the `size` recipes of lowest validation loss (as
    the pipeline's `--ensemble` chooses), thresholded on validation and scored on test."""
    runs = []
    for fold in range(len(results[0]["runs"])):
        members = sorted((r["runs"][fold] for r in results), key=lambda r: r["best_val_loss"])
        members = members[:size]
        first = members[0]["predictions"]
        mean = {}
        for split, rows in first.items():
            aligned = [_aligned(m["predictions"][split], rows["source_id"]) for m in members]
            mean[split] = (rows["label"], np.mean(aligned, axis=0))
        scores = score(mean["validation"], mean["test"], target)
        if ATYPICAL in mean:
            scores[ATYPICAL] = score(mean["validation"], mean[ATYPICAL], target)
        members_text = " + ".join(m["fold"] for m in members)
        print(f"ensemble of {size}: {members_text}", json.dumps(scores), flush=True)
        runs.append(
            {
                "fold": f"ensemble of {size}: {members_text}",
                "epochs_run": sum(m["epochs_run"] for m in members),
                "train_seconds": sum(m["train_seconds"] for m in members),
                "served": scores,
            }
        )
    return {
        "recipe": f"ensemble of {size}",
        "folds": results[0]["folds"],
        "served": "served",
        "summary": summarise(runs, "served"),
        "summary_other": summarise(runs, "served"),
        "runs": runs,
    }


def _aligned(rows: dict, source_ids: np.ndarray) -> np.ndarray:
    """`rows`' probabilities in the order of `source_ids`."""
    order = dict(zip(rows["source_id"], rows["probability"], strict=True))
    return np.array([order[i] for i in source_ids])


def summarise(runs: list[dict], served: str) -> dict:
    """Mean and std over folds of each score of the `served` (tta/plain) predictions, of the
    atypical patients' scores when there are some, and of epochs and training time."""
    summary = summarise_scores([run[served] for run in runs])
    if ATYPICAL in runs[0][served]:
        summary[ATYPICAL] = summarise_scores([run[served][ATYPICAL] for run in runs])
    for name in ("epochs_run", "train_seconds"):
        values = np.array([run[name] for run in runs])
        summary[name] = {
            "mean": round(float(values.mean()), 1),
            "std": round(float(values.std()), 1),
        }
    return summary


def summarise_scores(scores: list[dict]) -> dict:
    """Mean and std of each score, at the recipe's threshold and at each validation target."""

    def spread(values: list[float]) -> dict:
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}

    summary = {
        name: spread([each[name] for each in scores])
        for name in (*METRICS, "threshold", "accuracy_at_0.5", "sensitivity_at_0.5")
    }
    summary["at_validation_targets"] = {
        target: {
            name: spread([each["at_validation_targets"][target][name] for each in scores])
            for name in ("accuracy", "sensitivity", "specificity")
        }
        for target in scores[0]["at_validation_targets"]
    }
    return summary


def run_recipe(
    folder: Path,
    text: str,
    folds: int,
    fold_limit: int,
    scratch: Path,
    curve: bool = False,
    held_out: list[str] | float = 0.0,
    excluded: frozenset[str] = frozenset(),
) -> dict:
    """Train and score one recipe on every fold; `held_out`: the atypical patients, or the
    share of patients to choose as such."""
    from cnn.config import IngestConfig, TrainConfig
    from cnn.ingest.build import build_dataset
    from cnn.sources.specs import open_source

    variant, size, training, options = parse_recipe(text)
    from cnn.config import DEFAULT_VARIANTS

    variant = variant or DEFAULT_VARIANTS[0]
    ingest = IngestConfig(source=f"folder:{folder}", **({"image_size": size} if size else {}))
    dataset, _ = build_dataset(open_source(ingest.source), ingest, scratch / "datasets")
    config = TrainConfig(
        **training, checkpoints=False, variant_options={variant: options} if options else {}
    )
    if isinstance(held_out, float):
        held_out = atypical_patients(dataset, held_out) if folds else []
    if folds:
        runs = []
        assignments = fold_splits(dataset, folds, ingest.seed, held_out, excluded)
        for index, splits in enumerate(assignments[:fold_limit]):
            fold = with_splits(
                dataset, splits, scratch / f"{dataset.name}-fold{index}-{time.time_ns()}"
            )
            runs.append(run_once(fold, variant, config, f"{text} fold {index + 1}/{folds}"))
    else:
        runs = [run_once(dataset, variant, config, f"{text} fixed split", curve)]
    served = "tta" if config.test_time_augmentation else "plain"
    return {
        "recipe": text,
        "variant": variant,
        "image_size": ingest.image_size,
        "training": config.model_dump(mode="json", exclude={"variant_options", "checkpoints"}),
        "variant_options": options,
        "folds": folds or "fixed",
        "atypical_patients": held_out,
        "excluded_from_training": len(excluded),
        "served": served,
        "summary": summarise(runs, served),
        "summary_other": summarise(runs, "plain" if served == "tta" else "tta"),
        "runs": runs,
    }


def markdown(results: list[dict]) -> str:
    """One row per recipe: mean ± std of each score (and of the atypical patients' when held
    out), epochs and training time."""
    lines = [
        "| recipe | folds | accuracy at 0.5 | ROC-AUC | threshold | sensitivity | specificity "
        "| atypical: accuracy at 0.5 | ROC-AUC | sensitivity | epochs | training s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        summary = result["summary"]

        def pm(name: str, percent: bool = True, source: dict = summary) -> str:
            if name not in source:
                return ""
            mean, std = source[name]["mean"], source[name]["std"]
            return f"{100 * mean:.2f} ± {100 * std:.2f}%" if percent else f"{mean:g} ± {std:g}"

        atypical = summary.get(ATYPICAL, {})
        lines.append(
            f"| `{result['recipe']}` ({result['served']}) | {result['folds']} | "
            f"{pm('accuracy_at_0.5')} | {pm('roc_auc', False)} | {pm('threshold', False)} | "
            f"{pm('sensitivity')} | {pm('specificity')} | "
            f"{pm('accuracy_at_0.5', source=atypical)} | {pm('roc_auc', False, atypical)} | "
            f"{pm('sensitivity', source=atypical)} | "
            f"{pm('epochs_run', False)} | {pm('train_seconds', False)} |"
        )
    return "\n".join(lines) + "\n"


def save(results: list[dict], args: argparse.Namespace) -> str:
    """Write the results so far: the JSON (scores), the Markdown table, and every run's
    predictions as Parquet (one row per scored image: recipe, fold, split, source id,
    patient, label, P(parasitized)) for the analyses that read them."""
    import pandas as pd

    table = markdown(results)
    kept = [
        {
            **result,
            "runs": [{k: v for k, v in run.items() if k not in PRIVATE} for run in result["runs"]],
        }
        for result in results
    ]
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.output}.md").write_text(table)
    (RESULTS_DIR / f"{args.output}.json").write_text(
        json.dumps(
            {
                "benchmark": "recipe",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                "folder": str(args.folder),
                "results": kept,
            },
            indent=1,
        )
    )
    frames = [
        pd.DataFrame({"recipe": result["recipe"], "fold": fold, "split": split, **rows})
        for result in results
        for fold, run in enumerate(result["runs"], start=1)
        for split, rows in run.get("predictions", {}).items()
    ]
    if frames:
        pd.concat(frames).to_parquet(RESULTS_DIR / f"{args.output}.predictions.parquet")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, type=Path, help="NIH-layout image folder")
    parser.add_argument("--recipes", default="default lecture before", help="space-separated")
    parser.add_argument("--folds", type=int, default=5, help="grouped folds (0: fixed split)")
    parser.add_argument("--fold-limit", type=int, default=99, help="run only the first K folds")
    parser.add_argument("--output", default="recipe", help="results file name (no suffix)")
    parser.add_argument(
        "--ensembles",
        default="",
        help="space-separated sizes K: also score, per fold, the mean of the K recipes of "
        'lowest validation loss (e.g. "2 3"; recipes must share folds and image ids)',
    )
    parser.add_argument(
        "--atypical-share",
        type=float,
        default=0.1,
        help="with --folds: hold this share of patients, those of the most atypical mean cell "
        "colour, out of every fold's training and score them apart (0: none)",
    )
    parser.add_argument(
        "--exclude-ids",
        type=Path,
        help="with --folds: a file of source ids (one a line) left out of every fold's "
        "training and validation, never out of its test split (e.g. likely label errors)",
    )
    parser.add_argument(
        "--test-curve",
        action="store_true",
        help="fixed split: also score the test split after every epoch (slower)",
    )
    args = parser.parse_args()
    results = []
    excluded = frozenset(args.exclude_ids.read_text().split()) if args.exclude_ids else frozenset()
    with tempfile.TemporaryDirectory() as scratch:
        for text in args.recipes.split():
            held_out = results[0]["atypical_patients"] if results else args.atypical_share
            results.append(
                run_recipe(
                    *(args.folder, text, args.folds, args.fold_limit, Path(scratch)),
                    curve=args.test_curve,
                    held_out=held_out,
                    excluded=excluded,
                )
            )
            print(json.dumps({"recipe": text, **results[-1]["summary"]}), flush=True)
            table = save(results, args)
    recipes = list(results)
    for size in map(int, args.ensembles.split()):
        target = recipes[0]["training"]["target_sensitivity"]
        results.append(ensemble_result(recipes, size, target))
        table = save(results, args)
    print(table, f"saved {RESULTS_DIR / args.output}.json and .md", sep="\n")


if __name__ == "__main__":
    main()
