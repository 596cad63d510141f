"""What a lab reads, measured on the recipe benchmark's out-of-fold predictions.

    python benchmarks/lab_analysis.py \
        --predictions benchmarks/results/cv-default.predictions.parquet \
        --folder ../shared/data/malaria-dev [--output lab-default] [--target 0.95]

Per recipe and fold, as the pipeline does it: a temperature fitted on the fold's validation
split, the threshold for `--target` sensitivity on the calibrated validation scores, and the
validation sensitivity and specificity there. On the fold's test patients (and its atypical
ones): expected calibration error and Brier score before and after the temperature, and the
per-patient parasitemia (Rogan-Gladen) against the labelled one. Over all folds' test cells
(each cell scored once, by the model that never saw its patient): cleanlab's likely label
errors, with a gallery of the most doubtful for a look by eye, and the ROC-AUC with them
left out. Prints and saves benchmarks/results/<output>.json, <output>.label-issues.txt
(their source ids) and <output>.label-issues.png.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import RESULTS_DIR

from cnn.config import LabelIssuesConfig
from cnn.curation.issues import flag_label_issues
from cnn.evaluation.calibration import reliability, with_temperature
from cnn.evaluation.metrics import evaluate_predictions
from cnn.evaluation.operating_point import choose_on_validation
from cnn.evaluation.parasitemia import ErrorRates, evaluated_patients, parasitemia_error
from cnn.labels import LABEL_NAMES, PARASITIZED
from cnn.reports.figures import tile_grid

GALLERY = 50


def fold_scores(rows: pd.DataFrame, target: float) -> dict:
    """One fold: calibration before/after and parasitemia error on its test and atypical
    patients, with the operating point chosen on its validation split."""
    validation = rows[rows.split == "validation"]
    choice = choose_on_validation(validation.label, validation.probability, True, target)
    temperature, threshold = choice.temperature, choice.threshold
    rates = ErrorRates(choice.sensitivity, choice.specificity)
    scores = {"temperature": temperature, "threshold": threshold}
    for split in ("test", "atypical"):
        cells = rows[rows.split == split]
        if cells.empty:
            continue
        served = with_temperature(cells.probability, temperature)
        before, after = (
            reliability(cells.label, cells.probability),
            reliability(cells.label, served),
        )
        called = served > threshold
        patients = evaluated_patients(cells.group.to_numpy(), cells.label, called, rates)
        uncorrected = evaluated_patients(
            cells.group.to_numpy(), cells.label, called, ErrorRates(1.0, 1.0 - 1e-12)
        )
        scores[split] = {
            "ece_before": before.expected_calibration_error,
            "ece_after": after.expected_calibration_error,
            "brier_before": before.brier_score,
            "brier_after": after.brier_score,
            "parasitemia_mae": parasitemia_error(patients),
            "parasitemia_mae_uncorrected": parasitemia_error(uncorrected),
            "patients": len(patients),
            "interval_covers_labelled": float(
                np.mean(
                    (patients.parasitemia_low <= patients.labelled_parasitemia + 1e-9)
                    & (patients.labelled_parasitemia <= patients.parasitemia_high + 1e-9)
                )
            ),
        }
    return scores


def mean_std(folds: list[dict], split: str) -> dict:
    names = [name for name in folds[0][split] if name != "patients"]
    return {
        name: {
            "mean": round(float(np.mean([fold[split][name] for fold in folds])), 4),
            "std": round(float(np.std([fold[split][name] for fold in folds])), 4),
        }
        for name in names
    }


def label_issues(test: pd.DataFrame) -> pd.DataFrame:
    """cleanlab's likely label errors among out-of-fold test cells (the pipeline's rule and
    filter), most doubtful first."""
    labels, probability = test.label.to_numpy(), test.probability.to_numpy()
    flagged, quality = flag_label_issues(labels, probability, LabelIssuesConfig().filter_by)
    ranked = test.assign(flagged=flagged, quality=quality)
    return ranked[ranked.flagged].sort_values("quality")


def gallery(issues: pd.DataFrame, folder: Path, path: Path) -> None:
    """The most doubtful cells in a grid, each titled with its given label and P(parasitized)."""
    from PIL import Image

    shown = issues.head(GALLERY)
    figure, axes = tile_grid(len(shown), columns=10, inches=1.3)
    for index, (ax, row) in enumerate(zip(axes, shown.itertuples(), strict=True)):
        ax.imshow(Image.open(folder / row.source_id).convert("RGB"))
        ax.set_title(f"{index + 1}. {LABEL_NAMES[row.label][:4]} {row.probability:.2f}", fontsize=7)
    figure.savefig(path, dpi=110)


def averaged(predictions: pd.DataFrame, others: list[Path]) -> pd.DataFrame:
    """The mean P(parasitized) of each cell over the runs (same folds, other seeds or
    recipes): one recipe, `ensemble of N`."""
    runs = [predictions, *(pd.read_parquet(path) for path in others)]
    keys = ["fold", "split", "source_id"]
    merged = pd.concat(runs).groupby(keys, sort=False)
    mean = merged.agg(group=("group", "first"), label=("label", "first"))
    mean["probability"] = merged["probability"].mean()
    return mean.reset_index().assign(recipe=f"ensemble of {len(runs)}")


def ensemble_scores(rows: pd.DataFrame, target: float | None) -> dict:
    """The recipe benchmark's scores of the averaged runs, fold by fold, and their mean ± std."""
    from recipe import score, summarise_scores

    folds = []
    for _, fold in rows.groupby("fold"):
        pairs = {
            s: (c.label.to_numpy(), c.probability.to_numpy()) for s, c in fold.groupby("split")
        }
        scored = score(pairs["validation"], pairs["test"], target)
        if "atypical" in pairs:
            scored["atypical"] = score(pairs["validation"], pairs["atypical"], target)
        folds.append(scored)
    summary = summarise_scores(folds)
    if "atypical" in folds[0]:
        summary["atypical"] = summarise_scores([fold["atypical"] for fold in folds])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", required=True, type=Path)
    parser.add_argument("--folder", required=True, type=Path, help="the images' NIH folder")
    parser.add_argument("--output", default="lab")
    parser.add_argument("--target", type=float, default=0.95, help="validation sensitivity")
    parser.add_argument(
        "--ensemble-with",
        type=Path,
        nargs="*",
        default=[],
        help="other runs' predictions on the same folds: analyse the mean of all",
    )
    args = parser.parse_args()
    predictions = pd.read_parquet(args.predictions)
    if args.ensemble_with:
        predictions = averaged(predictions, args.ensemble_with)
    results = {}
    for recipe, rows in predictions.groupby("recipe", sort=False):
        folds = [fold_scores(fold, args.target) for _, fold in rows.groupby("fold")]
        test = rows[rows.split == "test"]
        issues = label_issues(test)
        kept = test[~test.source_id.isin(issues.source_id)]
        result = {
            **({"scores": ensemble_scores(rows, args.target)} if args.ensemble_with else {}),
            "temperature": [round(fold["temperature"], 3) for fold in folds],
            "test": mean_std(folds, "test"),
            **({"atypical": mean_std(folds, "atypical")} if "atypical" in folds[0] else {}),
            "label_issues": {
                "cells_checked": len(test),
                "flagged": len(issues),
                "flagged_given_parasitized": int((issues.label == PARASITIZED).sum()),
                "roc_auc_all": evaluate_predictions(test.label, test.probability).roc_auc,
                "roc_auc_without_flagged": evaluate_predictions(
                    kept.label, kept.probability
                ).roc_auc,
            },
        }
        results[recipe] = result
        print(recipe, json.dumps(result, indent=1), flush=True)
        stem = RESULTS_DIR / f"{args.output}{'' if len(results) == 1 else len(results)}"
        stem.with_suffix(".label-issues.txt").write_text("\n".join(issues.source_id) + "\n")
        gallery(issues, args.folder, stem.with_suffix(".label-issues.png"))
    (RESULTS_DIR / f"{args.output}.json").write_text(
        json.dumps(
            {"benchmark": "lab_analysis", "target": args.target, "results": results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
