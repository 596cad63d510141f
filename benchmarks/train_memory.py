"""Full-size time and memory: the pipeline on a folder replicated to 27,558 images.

    python benchmarks/train_memory.py --folder ../shared/data/malaria-dev \
        [--replicated /tmp/rep27k] [--images 27558|0] [--variants V] [--epochs N]
        [--image-size N] [--output NAME]

Runs `malaria pipeline` (ingest, train, evaluate, log, report) on the replicated folder (or,
with `--images 0`, the folder itself) with its own defaults, except for the options given, and
samples, every 0.1 s, the resident memory of the training process itself and of its whole
process tree (the Prefect server it starts, decode workers). For scale, every image held as
float32 arrays takes 27,558 × 100 × 100 × 3 × 4 bytes = 3.1 GiB before training.
Prints and saves benchmarks/results/train_memory.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure, save
from ingest import replicate

FULL_SIZE = 27_558
SCORES = ("accuracy", "sensitivity", "specificity", "roc_auc", "threshold", "confusion_matrix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="NIH-layout folder")
    parser.add_argument("--replicated", type=Path, help="reuse (or make) the replica here")
    parser.add_argument("--images", type=int, default=FULL_SIZE, help="0: the folder as it is")
    parser.add_argument("--variants", help="default: the pipeline's")
    parser.add_argument("--epochs", type=int, help="default: the pipeline's")
    parser.add_argument("--image-size", type=int, help="default: the pipeline's")
    parser.add_argument("--output", default="train_memory", help="results file name")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        scratch = Path(scratch)
        folder = args.replicated or scratch / "cells"
        if not args.images:
            folder = args.folder.resolve()
        elif not folder.exists():
            replicate(args.folder.resolve(), args.images, folder)
        given = {"--image-size": args.image_size, "--variants": args.variants}
        given["--epochs"] = args.epochs
        options = [item for name, value in given.items() if value for item in (name, str(value))]
        command = [
            str(Path(sys.executable).with_name("malaria")),
            "pipeline",
            "--source",
            f"folder:{folder}",
            *options,
            "--json",
        ]
        env = {
            "MALARIA_DATA_DIR": str(scratch / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        }
        run = measure(command, env=env)
        if run.returncode != 0:
            sys.exit(f"malaria pipeline failed:\n{run.stderr[-3000:]}")
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        save(
            args.output,
            {
                "benchmark": "train_memory",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "images": summary["dataset"]["rows"],
                "options": options,
                "seconds": round(run.seconds, 1),
                "training_process_peak_rss_gib": run.main_peak_rss_gib,
                "process_tree_peak_rss_gib": run.peak_rss_gib,
                "lecture_float32_arrays_gib": round(FULL_SIZE * 100**2 * 3 * 4 / 2**30, 2),
                "runs": [
                    {
                        **{key: run[key] for key in ("variant", "epochs_run", "train_seconds")},
                        **{key: run["test_scores"].get(key) for key in SCORES},
                    }
                    for run in summary["runs"]
                ],
            },
        )


if __name__ == "__main__":
    main()
