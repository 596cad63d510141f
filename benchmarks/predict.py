"""Prediction benchmark: `malaria predict` on a folder against the model's own inference rate.

    python benchmarks/predict.py --folder ../shared/data/malaria-dev

Trains the default recipe's model for one epoch on synthetic cells (`malaria pipeline`, into a
temporary store: the weights do not change the cost of scoring), then times, in this order:

1. the model's own rate: the registered model (with test-time augmentation, as served)
   scoring the folder's images already decoded into memory, in the pipeline's batches, the
   way `predict` calls it (`cnn.evaluation.scoring.parasitized_probability`), after a warm-up batch;
2. the whole `malaria predict --input FOLDER` command, and its task's own rate (listing,
   reading, decoding, resizing, scoring and writing the Parquet file);
3. the decode workers' priority, A/B: the task's rate with them at the lowest priority
   (`cnn.ingest.parallel.YIELDING_NICENESS`, today's) and at the caller's, alternating
   (`--niceness-rounds`, 0 to skip).

Prints and saves benchmarks/results/predict.json.
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
from _measure import measure, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="a folder of cell images")
    parser.add_argument("--niceness-rounds", type=int, default=2)
    args = parser.parse_args()
    folder = args.folder.resolve()
    malaria = str(Path(sys.executable).with_name("malaria"))

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as scratch:
        scratch = Path(scratch)
        env = {
            "MALARIA_DATA_DIR": str(scratch / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
            "PREFECT_HOME": str(scratch / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        os.environ.update(env)
        os.environ.pop("PREFECT_API_URL", None)
        trained = measure(
            [
                malaria,
                "pipeline",
                "--source",
                "synthetic",
                "--limit",
                "400",
                "--epochs",
                "1",
                "--json",
            ]
        )
        if trained.returncode != 0:
            sys.exit(f"malaria pipeline failed:\n{trained.stderr[-3000:]}")
        (run,) = json.loads(trained.stdout.strip().splitlines()[-1])["runs"]

        model_rate = _model_rate(run["model_uri"], folder)
        command = measure(
            [
                malaria,
                "predict",
                "--model",
                run["model_uri"],
                "--input",
                str(folder),
                "--output",
                str(scratch / "predictions.parquet"),
                "--json",
            ]
        )
        if command.returncode != 0:
            sys.exit(f"malaria predict failed:\n{command.stderr[-3000:]}")
        summary = json.loads(command.stdout.strip().splitlines()[-1])
        task_rate = summary["rows"] / summary["seconds"]
        predict = ["predict", "--model", run["model_uri"], "--input", str(folder), "--json"]
        niceness = _niceness_ab(predict, scratch, args.niceness_rounds)
        save(
            "predict",
            {
                "benchmark": "predict",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "model": {"variant": run["variant"], "uri": run["model_uri"]},
                "images": summary["rows"],
                "model_images_per_second": round(model_rate, 1),
                "predict_task_seconds": summary["seconds"],
                "predict_task_images_per_second": round(task_rate, 1),
                "predict_task_share_of_model_rate": round(task_rate / model_rate, 3),
                "predict_command_seconds": round(command.seconds, 2),
                "predict_command_peak_rss_gib": command.peak_rss_gib,
                "predict_task_images_per_second_by_worker_niceness": niceness,
            },
        )


NICENESS_RUN = (
    "import sys, cnn.ingest.parallel as parallel; parallel.YIELDING_NICENESS = int(sys.argv[1]); "
    "from app.cli import run; sys.argv = ['malaria', *sys.argv[2:]]; run()"
)


def _niceness_ab(predict: list[str], scratch: Path, rounds: int) -> dict[str, list[float]]:
    """The predict task's images/s with its decode workers at the lowest priority (19,
    today's) and at the caller's (0), alternating."""
    rates: dict[str, list[float]] = {"19": [], "0": []}
    for round_ in range(rounds):
        for level in rates:
            output = ["--output", str(scratch / f"niceness-{level}-{round_}.parquet")]
            run = measure([sys.executable, "-c", NICENESS_RUN, level, *predict, *output])
            if run.returncode != 0:
                sys.exit(f"malaria predict failed:\n{run.stderr[-3000:]}")
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            rates[level].append(round(summary["rows"] / summary["seconds"], 1))
    print(f"predict task images/s by decode workers' niceness: {rates}", flush=True)
    return rates


def _model_rate(model_uri: str, folder: Path) -> float:
    """Images/s of the served model on the folder's images, decoded beforehand."""
    import numpy as np

    from cnn.config import PREDICT_BATCH
    from cnn.evaluation.scoring import model_image_size
    from cnn.evaluation.scoring import parasitized_probability as score
    from cnn.prediction.batch import InputReport, iter_input_batches
    from tracking.models import load_keras_model

    model = load_keras_model(model_uri)
    batches = [
        images
        for _, images in iter_input_batches(
            folder, model_image_size(model), PREDICT_BATCH, InputReport()
        )
    ]
    score(model, batches[:1])  # compiles the prediction function
    started = time.perf_counter()
    scored = score(model, batches)
    seconds = time.perf_counter() - started
    assert len(scored) == sum(len(images) for images in batches) and np.isfinite(scored).all()
    return len(scored) / seconds


if __name__ == "__main__":
    main()
