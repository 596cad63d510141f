"""Checkpoint benchmark: what a per-epoch checkpoint costs each variant.

    python benchmarks/checkpoints.py --image-size 64

Saves a checkpoint as training does (weights, best weights, Adam's two moments per weight,
fsynced, renamed into place) five times per variant and loads the newest once. Compare the
median save with an epoch's time (docs/benchmarks.md). Printed and saved to
benchmarks/results/checkpoints.json.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from _measure import save

from cnn.models.variants import VARIANTS, build_model
from cnn.training.checkpoints import CheckpointStore, TrainingState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--variants", default="simple,resnet,lenet5,alexnet")
    args = parser.parse_args()
    results = {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {variant!r}")
        weights = build_model(variant, (args.image_size, args.image_size, 3)).get_weights()
        store = CheckpointStore(Path(tempfile.mkdtemp(prefix="checkpoints-")))
        state = TrainingState(
            phase=0,
            phase_start=0,
            history={"loss": [], "val_loss": []},
            phase_finished=False,
            callbacks={"early_stopping": {"wait": 0, "best": 1.0, "best_epoch": 0}},
            weights=weights,
            optimizer=[*weights, *weights],
            best_weights=weights,
        )
        seconds = []
        for epoch in range(5):
            state.history["loss"].append(1.0 / (epoch + 1))
            state.history["val_loss"].append(1.0 / (epoch + 1))
            started = time.perf_counter()
            store.save(state)
            seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.latest()
        load_seconds = time.perf_counter() - started
        store.clear()
        results[variant] = {
            "weights_mib": round(sum(array.nbytes for array in weights) / 2**20, 2),
            "save_seconds_median": round(statistics.median(seconds), 4),
            "load_seconds": round(load_seconds, 4),
        }
    save(
        "checkpoints",
        {
            "image_size": args.image_size,
            "variants": results,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
    )


if __name__ == "__main__":
    main()
