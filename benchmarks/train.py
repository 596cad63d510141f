"""Training benchmark: images/s per variant, and the pipeline's overhead over bare Keras.

    python benchmarks/train.py --dataset data/datasets/<name> [--variants simple,resnet]

1. Throughput: for each variant, one timed training epoch (after a warm-up epoch) over the
   dataset's train split as the pipeline streams it, and one inference pass over the test split
   with and without test-time augmentation (8 views an image).
2. Overhead: the whole `malaria train --dataset D --variants V --epochs E` command (Prefect,
   MLflow, evaluation, report, model logging included; on an MLflow store that exists, as a
   scheduled retrain's does) against a bare Keras script that loads the same arrays, fits the
   same network (`cnn.models.variants.build_model`) for the same epochs and evaluates it on the test
   split. The pipeline runs the bare script's recipe (no augmentation, no test-time
   augmentation; `--recipe` sets other options), so only its machinery differs. One run each,
   for `simple` (little compute, so the fixed costs weigh most) and `resnet` (the default
   recipe's). The pipeline's seconds are split into phases by the times of its log lines.

`--devices 1,2` runs the throughput part once per device count, one replica a device
(`cnn.training.devices`: MirroredStrategy, or DataParallel under JAX), each replica `--batch-size`
images a step; without GPUs the CPU is split into that many logical devices first, as the
tests do. Saved as train_devices.json.

Prints and saves benchmarks/results/train.json. On a GPU machine, run the throughput part
under JAX (no TensorFlow needed; the overhead part needs the full install):

    KERAS_BACKEND=jax python benchmarks/train.py --dataset D --skip-overhead \
        --batch-size 512 [--mixed-precision]
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import measure, save

BARE_KERAS = """
import sys, time
import keras, numpy as np, pyarrow.parquet as pq
from pathlib import Path
from cnn.models.variants import build_model
dataset, variant = Path(sys.argv[1]), sys.argv[2]
epochs, batch = int(sys.argv[3]), int(sys.argv[4])
table = pq.read_table(sorted(dataset.glob("*.parquet")), columns=["image", "label", "split"])
side = int((len(table["image"][0].as_py()) // 3) ** 0.5)
def split(name):
    part = table.filter(table["split"].to_numpy(zero_copy_only=False) == name)
    images = np.frombuffer(b"".join(part["image"].to_pylist()), np.uint8).reshape(-1, side, side, 3)
    return images, part["label"].to_numpy()
(x, y), validation = split("train"), split("validation")
keras.utils.set_random_seed(42)
model = build_model(variant, (side, side, 3))
model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=validation, verbose=0)
fit_seconds = time.perf_counter() - started
test_x, test_y = split("test")
model.evaluate(test_x, test_y, batch_size=batch, verbose=0)  # a bare script ends on its test score
print(fit_seconds)
"""
CREATE_STORE = "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
PREFECT_LOG_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+ +\| (Flow|Task) run '([^']+)' - (.*)$"
)


def throughput(
    dataset_path: str,
    variants: list[str],
    batch_size: int,
    mixed_precision: bool,
    devices: int = 1,
) -> list[dict]:
    """Images per second for one training epoch and one inference pass per variant, and the
    share of the epoch spent making batches (with JAX, Keras fetches batches in the training
    loop's thread, so that share is time the accelerator waits for input)."""
    import keras

    from cnn.data.batches import SplitBatches
    from cnn.data.dataset import open_dataset
    from cnn.models.augmentation import with_test_time_augmentation
    from cnn.models.variants import VARIANTS, build_model
    from cnn.training.devices import replicated, training_devices
    from cnn.training.train import compile_model, dtype_policy

    class TimedBatches(SplitBatches):
        """Counts the seconds spent making batches (reading, decoding, gathering rows)."""

        input_seconds = 0.0

        def __getitem__(self, index: int):
            started = time.perf_counter()
            batch = super().__getitem__(index)
            self.input_seconds += time.perf_counter() - started
            return batch

    dataset = open_dataset(dataset_path)
    train = TimedBatches(dataset, "train", batch_size * devices, shuffle=True)
    test = SplitBatches(dataset, "test", 256)
    results = []
    for variant in variants:
        keras.utils.set_random_seed(0)
        with replicated(training_devices(devices)), dtype_policy(mixed_precision):
            model = build_model(variant, dataset.image_shape, **VARIANTS[variant].offline_options)
            compile_model(model, keras.optimizers.Adam(1e-3))
        model.fit(train, epochs=1, verbose=0)  # warm-up: graph building, first reads
        train.input_seconds = 0.0
        started = time.perf_counter()
        model.fit(train, epochs=1, verbose=0)
        train_seconds = time.perf_counter() - started
        rates = {}
        for name, served in (
            ("predict", model),
            ("predict_tta", with_test_time_augmentation(model)),
        ):
            served.predict(test, verbose=0)
            started = time.perf_counter()
            served.predict(test, verbose=0)
            rates[f"{name}_images_per_second"] = round(
                test._count / (time.perf_counter() - started), 1
            )
        results.append(
            {
                "variant": variant,
                "devices": devices,
                "global_batch": batch_size * devices,
                "parameters": model.count_params(),
                "train_images_per_second": round(train._count / train_seconds, 1),
                "input_share_of_step_time": round(train.input_seconds / train_seconds, 3),
                **rates,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def overhead(
    dataset_path: str,
    variant: str,
    epochs: int,
    batch_size: int,
    recipe: list[str],
    scratch: Path,
) -> dict:
    malaria = str(Path(sys.executable).with_name("malaria"))
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    # A returning user's store: made (its tables migrated) before the timed run.
    subprocess.run([sys.executable, "-c", CREATE_STORE, env["MLFLOW_TRACKING_URI"]], check=True)
    wall_started = time.time()
    pipeline = measure(
        [
            malaria,
            "train",
            "--dataset",
            dataset_path,
            "--variants",
            variant,
            "--epochs",
            str(epochs),
            "--patience",
            str(epochs),
            "--batch-size",
            str(batch_size),
            *recipe,
            "--json",
        ],
        env=env,
    )
    if pipeline.returncode != 0:
        sys.exit(f"malaria train failed:\n{pipeline.stderr[-3000:]}")
    bare = measure(
        [sys.executable, "-c", BARE_KERAS, dataset_path, variant, str(epochs), str(batch_size)],
        cwd=Path(__file__).resolve().parents[1],
    )
    if bare.returncode != 0:
        sys.exit(f"bare Keras script failed:\n{bare.stderr[-3000:]}")
    (run,) = json.loads(pipeline.stdout.strip().splitlines()[-1])["runs"]
    pipeline_fit = run["train_seconds"]
    bare_fit = float(bare.stdout.strip().splitlines()[-1])
    return {
        "variant": variant,
        "epochs": epochs,
        "mlflow_store": "made before the timed run (a returning user's)",
        "pipeline_recipe_options": recipe,
        "bare_keras_does": "load arrays, fit, evaluate on the test split",
        "pipeline_phases_seconds": pipeline_phases(pipeline.stderr, wall_started, pipeline.seconds),
        "pipeline_seconds": round(pipeline.seconds, 2),
        "pipeline_fit_seconds": round(pipeline_fit, 2),
        "pipeline_peak_rss_gib": pipeline.peak_rss_gib,
        "bare_keras_seconds": round(bare.seconds, 2),
        "bare_keras_fit_seconds": round(bare_fit, 2),
        "bare_keras_peak_rss_gib": bare.peak_rss_gib,
        "overhead": round(pipeline.seconds / bare.seconds - 1, 3),
        # Around `fit`: server start, imports, evaluation, promotion, report, model logging
        # against imports and array loading. Epoch times on a shared 2-core machine vary up
        # to 2× between identical epochs, so this part is the pipeline's own cost.
        "fixed_seconds_added": round(
            (pipeline.seconds - pipeline_fit) - (bare.seconds - bare_fit), 2
        ),
        "fixed_overhead": round(
            ((pipeline.seconds - pipeline_fit) - (bare.seconds - bare_fit)) / bare.seconds, 3
        ),
    }


def pipeline_phases(log: str, wall_started: float, seconds: float) -> dict[str, float]:
    """Where `malaria train`'s seconds went, from the times of its Prefect log lines: until
    its first line (imports, the Prefect server), each task (from the previous task's end to
    its own), closing the flow runs, and after the last line (flushing, stopping the server)."""
    phases: dict[str, float] = {}
    mark = last = 0.0
    today = datetime.date.today()
    for line in log.splitlines():
        if not (match := PREFECT_LOG_LINE.match(line)):
            continue
        clock, kind, run_name, message = match.groups()
        last = datetime.datetime.combine(today, datetime.time.fromisoformat(clock)).timestamp()
        last -= wall_started
        if not phases:
            phases["start"] = mark = last
        if kind == "Task" and message.startswith("Finished in state"):
            # task runs are named <task>-<3 hex digits>, or <task> <what it works on>
            task = re.sub(r"-[0-9a-f]{3}$", "", run_name).split(" ")[0]
            phases[task] = phases.get(task, 0.0) + last - mark
            mark = last
    phases["flows_closing"] = last - mark
    phases["exit"] = seconds - last
    return {name: round(value, 2) for name, value in phases.items()}


def _split_the_cpu(count: int) -> None:
    """Without GPUs, `count` logical CPU devices (before the backend starts)."""
    if os.environ.get("KERAS_BACKEND") == "jax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        (cpu, *_) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="an ingested dataset directory")
    parser.add_argument("--variants", default="simple,lenet5,alexnet,resnet,transfer")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the overhead runs")
    parser.add_argument(
        "--overhead-variants",
        default="simple,resnet",
        help="variants of the overhead runs (resnet: the default recipe's)",
    )
    parser.add_argument(
        "--recipe",
        default="--augment none --no-tta",
        help="`malaria train` options of the overhead run; by default the bare script's recipe "
        "(no augmentation, no test-time augmentation), so only the pipeline's machinery differs",
    )
    parser.add_argument("--skip-overhead", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="overhead only")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    parser.add_argument("--devices", help="throughput per device count, e.g. 1,2 (only that)")
    args = parser.parse_args()
    device_counts = [int(count) for count in args.devices.split(",")] if args.devices else []
    if device_counts:
        _split_the_cpu(max(device_counts))
    import keras

    result = {
        "benchmark": "train",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "keras_backend": keras.backend.backend(),
        "devices": keras.distribution.list_devices(),
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
    }
    if device_counts:
        result["throughput"] = [
            row
            for count in device_counts
            for row in throughput(
                args.dataset, args.variants.split(","), args.batch_size, args.mixed_precision, count
            )
        ]
        save("train_devices", result)
        return
    if not args.skip_throughput:
        result["throughput"] = throughput(
            args.dataset, args.variants.split(","), args.batch_size, args.mixed_precision
        )
    if not args.skip_overhead:
        import tempfile

        result["overhead"] = []
        for variant in args.overhead_variants.split(","):
            with tempfile.TemporaryDirectory() as scratch:
                result["overhead"].append(
                    overhead(
                        args.dataset,
                        variant,
                        args.epochs,
                        args.batch_size,
                        args.recipe.split(),
                        Path(scratch),
                    )
                )
                print(json.dumps(result["overhead"][-1]), flush=True)
    save("train", result)


if __name__ == "__main__":
    main()
