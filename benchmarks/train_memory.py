"""Full-size training memory: the pipeline on the sample replicated to 27,558 images.

    python benchmarks/train_memory.py --folder ../shared/data/malaria-sample \
        [--replicated /tmp/rep27k] [--variants resnet] [--epochs 2]

Runs `malaria pipeline` (ingest at 100×100, train, evaluate, log) on the replicated folder and
samples, every 0.1 s, the resident memory of the training process itself and of its whole
process tree (the Prefect server it starts, decode workers). For scale, the lecture's recipe
holds every image as float32: 27,558 × 100 × 100 × 3 × 4 bytes = 3.1 GiB before training.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="NIH-layout folder")
    parser.add_argument("--replicated", type=Path, help="reuse (or make) the replica here")
    parser.add_argument("--variants", default="resnet")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        scratch = Path(scratch)
        folder = args.replicated or scratch / "cells"
        if not folder.exists():
            replicate(args.folder.resolve(), FULL_SIZE, folder)
        command = [
            str(Path(sys.executable).with_name("malaria")),
            "pipeline",
            "--source",
            f"folder:{folder}",
            "--image-size",
            str(args.image_size),
            "--variants",
            args.variants,
            "--epochs",
            str(args.epochs),
            "--patience",
            str(args.epochs),
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
            "train_memory",
            {
                "benchmark": "train_memory",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "images": summary["dataset"]["rows"],
                "image_size": args.image_size,
                "variants": args.variants,
                "epochs": args.epochs,
                "seconds": round(run.seconds, 1),
                "training_process_peak_rss_gib": run.main_peak_rss_gib,
                "process_tree_peak_rss_gib": run.peak_rss_gib,
                "lecture_float32_arrays_gib": round(
                    FULL_SIZE * args.image_size**2 * 3 * 4 / 2**30, 2
                ),
                "runs": [
                    {key: run[key] for key in ("variant", "test_accuracy", "train_seconds")}
                    for run in summary["runs"]
                ],
            },
        )


if __name__ == "__main__":
    main()
