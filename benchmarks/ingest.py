"""Ingest benchmark: the whole `malaria ingest` command against the original course's loop.

    python benchmarks/ingest.py --folder ../shared/data/malaria-sample --replicate-to 27558

That loop (`LECTURE_LOOP`) reads one image at a time with scikit-image (`imread`, then
`resize` to 100×100) and appends it to a list. Both run on the same files in the same run,
each as its own process, timed whole, with the peak memory of its process tree sampled every
0.1 s.
`--replicate-to N` hard-links the folder's files under new patient ids until there are N.

Before them, one image's path is split into its steps on one core (read, decode, to Pillow,
resize, to array, Arrow table + zstd Parquet write), the shard writer's images/s is taken over
1 and 2 worker processes, and one image's decode + resize is timed for each decoder installed
(`--decoders 0` skips it): today's (imagecodecs' libpng, then Pillow's resize), libspng
(imagecodecs' other PNG decoder), Pillow alone
(the decode limit the targets were set against), Pillow with `reduce()` where the scale
allows, OpenCV `imdecode` + `resize` (area and linear) and pyvips; each with its pixels'
difference from today's. OpenCV and pyvips are not dependencies of the project: install them
beside it to compare (`pip install opencv-python-headless pyvips-binary`).
Results are printed and saved to benchmarks/results/ingest.json.

`--engines` instead compares where the shards are written, each a whole `malaria ingest` into
an empty data folder, one after another: this host's process pool, then a Dask cluster
(`dask scheduler` and 1, then 2 single-thread `dask worker` processes started here) through
`--dask-address`; and the cost of one task on each engine (a Prefect task that does nothing,
mapped 200 times). Saved to benchmarks/results/ingest_engines.json.
"""

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import free_port, measure, save

LECTURE_LOOP = """
import sys, time
from pathlib import Path
from skimage.io import imread
from skimage.transform import resize
size = int(sys.argv[2])
images, labels = [], []
for label, folder in enumerate(("Parasitized", "Uninfected")):
    for path in sorted((Path(sys.argv[1]) / folder).glob("*.png")):
        images.append(resize(imread(path), (size, size)))
        labels.append(label)
print(len(images))
"""


def replicate(folder: Path, target: int, into: Path) -> Path:
    """Hard-link (or copy) the NIH files into `into`, each copy under new patient ids."""
    sources = {
        name: sorted((folder / name).glob("*.png")) for name in ("Parasitized", "Uninfected")
    }
    total = sum(len(files) for files in sources.values())
    copies = -(-target // total)
    for name, files in sources.items():
        (into / name).mkdir(parents=True)
        for copy in range(copies):
            for path in files[: (target // 2 if copy == copies - 1 else len(files))]:
                patient, marker, rest = path.name.partition("_IMG_")
                new = into / name / f"{patient}r{copy}{marker}{rest}"
                try:
                    os.link(path, new)
                except OSError:
                    shutil.copy2(path, new)
    for name in sources:  # trim to the exact target, balanced
        files = sorted((into / name).glob("*.png"))
        for extra in files[target // 2 + (target % 2 if name == "Parasitized" else 0) :]:
            extra.unlink()
    return into


def _decoders(size: int) -> dict[str, Callable[[bytes], np.ndarray]]:
    """Encoded PNG → (size × size × 3) uint8, by each library that is installed."""
    import imagecodecs
    from PIL import Image

    from cnn.images import decode_and_resize

    bilinear = Image.Resampling.BILINEAR

    def pillow(payload: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(payload)).convert("RGB")
        return np.asarray(image.resize((size, size), bilinear))

    def pillow_reduce(payload: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(payload)).convert("RGB")
        return np.asarray(image.resize((size, size), bilinear, reducing_gap=2.0))

    def spng(payload: bytes) -> np.ndarray:
        image = Image.fromarray(imagecodecs.spng_decode(payload))
        return np.asarray(image.resize((size, size), bilinear))

    decoders = {
        "imagecodecs + Pillow resize (today)": lambda payload: decode_and_resize(payload, size),
        "imagecodecs' libspng + Pillow resize": spng,
        "Pillow": pillow,
        "Pillow, reduce() first": pillow_reduce,
    }
    try:
        import cv2

        cv2.setNumThreads(1)

        def opencv(interpolation: int) -> Callable[[bytes], np.ndarray]:
            def decode(payload: bytes) -> np.ndarray:
                pixels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
                pixels = cv2.resize(pixels, (size, size), interpolation=interpolation)
                return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)

            return decode

        decoders["OpenCV, INTER_AREA"] = opencv(cv2.INTER_AREA)
        decoders["OpenCV, INTER_LINEAR"] = opencv(cv2.INTER_LINEAR)
    except ImportError:
        pass
    try:
        import pyvips

        def vips(payload: bytes) -> np.ndarray:
            image = pyvips.Image.thumbnail_buffer(payload, size, height=size, size="force")
            return np.ndarray(
                (image.height, image.width, image.bands), np.uint8, image.write_to_memory()
            )[..., :3]

        decoders["pyvips thumbnail"] = vips
    except (ImportError, OSError):
        pass
    return decoders


def compare_decoders(folder: Path, size: int, count: int) -> dict[str, dict[str, float]]:
    """µs per image on one core (best of 3) and mean / max |pixel difference| from today's."""
    files = sorted(folder.glob("*/*.png"))
    payloads = [path.read_bytes() for path in files[:: max(1, len(files) // count)][:count]]
    decoders = _decoders(size)
    reference = np.stack([decoders["imagecodecs + Pillow resize (today)"](p) for p in payloads])
    results = {}
    for name, decode in decoders.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            decoded = [decode(payload) for payload in payloads]
            best = min(best, time.perf_counter() - started)
        difference = np.abs(np.stack(decoded).astype(np.int16) - reference)
        results[name] = {
            "microseconds_per_image": round(best / len(payloads) * 1e6),
            "images_per_second_per_core": round(len(payloads) / best),
            "mean_abs_difference": round(float(difference.mean()), 3),
            "max_abs_difference": int(difference.max()),
        }
        print(f"{name:38s} {results[name]}")
    return results


def profile_stages(folder: Path, size: int, count: int) -> dict[str, float]:
    """µs per image of each step of today's path on one core (best of 3): read the file,
    decode the PNG, hand the pixels to Pillow, resize, take them back as an array, and write
    them as zstd Parquet row groups (the shard writer's table and writer)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from cnn.images import _decode_rgb_png
    from cnn.ingest.shards import COMPRESSION, DICTIONARY_COLUMNS, WRITE_BATCH, _rows_table, _schema
    from cnn.sources.specs import open_source

    source = open_source(f"folder:{folder}")
    records = source.list_records()[:: max(1, len(source.list_records()) // count)][:count]
    split_of = {record.source_id: "train" for record in records}
    bilinear = Image.Resampling.BILINEAR
    stages: dict[str, Callable[[list], list]] = {
        "read": lambda _: [payload for _, payload in source.iter_payloads(records)],
        "decode (imagecodecs)": lambda payloads: [_decode_rgb_png(p) for p in payloads],
        "to Pillow": lambda pixels: [Image.fromarray(p) for p in pixels],
        "resize (Pillow bilinear)": lambda images: [
            image.resize((size, size), bilinear) for image in images
        ],
        "to array": lambda images: [np.asarray(image) for image in images],
    }

    def write(pixels: list) -> list:
        schema = _schema(size)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "part.parquet"
            with pq.ParquetWriter(
                path, schema, compression=COMPRESSION, use_dictionary=DICTIONARY_COLUMNS
            ) as writer:
                for start in range(0, len(pixels), WRITE_BATCH):
                    batch = slice(start, start + WRITE_BATCH)
                    rows = list(zip(records[batch], pixels[batch], strict=True))
                    writer.write_table(_rows_table(rows, split_of, schema))
        return pixels

    stages["Arrow table + zstd Parquet write"] = write
    result: dict[str, float] = {}
    items: list = records
    for name, stage in stages.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            output = stage(items)
            best = min(best, time.perf_counter() - started)
        items = output
        result[name] = round(best / len(records) * 1e6)
    result["total"] = sum(result.values())
    print(f"one image's path, µs: {result}")
    return result


def pool_scaling(folder: Path, size: int) -> dict[str, float]:
    """Images/s of the shard writer (`cnn.ingest.shards.write_shards`, reading, decoding,
    resizing and writing in worker processes) over 1 and 2 workers, the workers started
    beforehand."""
    from cnn.ingest.parallel import start_decode_workers
    from cnn.ingest.shards import write_shards
    from cnn.io.storage import location
    from cnn.sources.specs import open_source

    source = open_source(f"folder:{folder}")
    records = source.list_records()
    split_of = {record.source_id: "train" for record in records}
    result = {}
    for workers in (1, 2):
        start_decode_workers(len(records), workers)
        time.sleep(3)  # the workers import their libraries
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            write_shards(location(scratch), "bench", source, records, split_of, size, workers)
            result[f"{workers}_workers"] = round(len(records) / (time.perf_counter() - started))
    print(f"shard writer, images/s: {result}")
    return result


def _ingest(command: list[str], env: dict[str, str]) -> dict:
    """One whole `malaria ingest`: its seconds and peak memory, and its task's own rate."""
    run = measure(command, env=env)
    if run.returncode != 0:
        sys.exit(f"malaria ingest failed:\n{run.stderr[-3000:]}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "seconds": round(run.seconds, 2),
        "peak_rss_gib": run.peak_rss_gib,
        "cache_hit": summary["cache_hit"],
        "rows": summary["rows"],
        "skipped": len(summary["skipped"]),
        "ingest_task_seconds": summary["seconds"],
        "ingest_task_images_per_second": round(summary["rows"] / max(summary["seconds"], 1e-9)),
    }


@contextmanager
def _prefect_server(home: Path, env: dict[str, str]):
    """`prefect server start` on a free port until the block ends: `{"PREFECT_API_URL": …}`."""
    port = free_port()
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env, "PREFECT_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("prefect server did not start")
                time.sleep(0.5)
        yield {"PREFECT_API_URL": url}
    finally:
        server.terminate()
        server.wait(timeout=30)


TASK_COST = """
import json, sys, time
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

@task
def nothing(index):
    return index

def seconds_per_task(runner, tasks):
    @flow(task_runner=runner)
    def mapped():
        started = time.perf_counter()
        nothing.map(range(tasks)).result()
        return (time.perf_counter() - started) / tasks
    mapped()  # the first run starts what later ones reuse
    return mapped()

tasks = int(sys.argv[2])
runners = {"prefect_thread_pool_ms": ThreadPoolTaskRunner(1),
           "prefect_dask_ms": DaskTaskRunner(address=sys.argv[1])}
print(json.dumps({name: round(1000 * seconds_per_task(runner, tasks), 1)
                  for name, runner in runners.items()}))
"""


@contextmanager
def _dask_cluster(workers: int, logs: Path):
    """`dask scheduler` and `workers` single-thread `dask worker` processes on 127.0.0.1."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    logs.mkdir(parents=True, exist_ok=True)
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    commands += [[dask, "worker", address, "--nthreads", "1", "--no-dashboard"]] * workers
    processes = []
    for index, command in enumerate(commands):
        with open(logs / f"{index}.log", "w") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
        time.sleep(2)  # the workers finish importing
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)


def compare_engines(command: list[str], env: dict[str, str], scratch: Path) -> dict:
    """Whole ingests into empty data folders: the local pool, Dask with 1 and 2 workers; and
    the milliseconds one no-op task costs on Prefect's thread pool and on Dask."""
    local = _ingest(command, {**env, "MALARIA_DATA_DIR": str(scratch / "local")})
    result = {"local_pool": local}
    for workers in (1, 2):
        with _dask_cluster(workers, scratch / f"dask-{workers}-logs") as address:
            data = {**env, "MALARIA_DATA_DIR": str(scratch / f"dask-{workers}")}
            result[f"dask_{workers}_workers"] = _ingest([*command, "--dask-address", address], data)
            if workers == 1:
                cost = measure([sys.executable, "-c", TASK_COST, address, "200"], env=env)
                if cost.returncode != 0:
                    sys.exit(f"task cost failed:\n{cost.stderr[-3000:]}")
                result["one_task_milliseconds"] = json.loads(cost.stdout.splitlines()[-1])
    for run in result.values():
        if "rows" in run:
            run["images_per_second"] = round(run["rows"] / run["seconds"])
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="NIH-layout folder")
    parser.add_argument("--replicate-to", type=int, help="grow the folder to N images first")
    parser.add_argument("--image-size", type=int, default=100)
    parser.add_argument("--skip-lecture", action="store_true", help="time only the pipeline")
    parser.add_argument("--decoders", type=int, default=1500, help="images to compare decoders on")
    parser.add_argument(
        "--engines", action="store_true", help="compare the local pool with Dask, only that"
    )
    args = parser.parse_args()
    if args.engines:
        args.decoders = 0
    decoders, stages = {}, {}
    if args.decoders:
        decoders = compare_decoders(args.folder, args.image_size, args.decoders)
        stages = profile_stages(args.folder.resolve(), args.image_size, args.decoders)

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        scratch = Path(scratch)
        folder = args.folder.resolve()
        if args.replicate_to:
            folder = replicate(folder, args.replicate_to, scratch / "cells")
        images = sum(1 for _ in folder.glob("*/*.png"))
        scaling = pool_scaling(folder, args.image_size) if args.decoders else {}
        malaria = str(Path(sys.executable).with_name("malaria"))
        command = [
            malaria,
            "ingest",
            "--source",
            f"folder:{folder}",
            "--image-size",
            str(args.image_size),
            "--json",
        ]
        quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env = {**quiet, "MALARIA_DATA_DIR": str(scratch / "data"), "PREFECT_HOME": str(scratch)}
        os.environ.pop("PREFECT_API_URL", None)  # the first runs start their own server

        # A first run migrates the new Prefect database (seconds no later run pays).
        measure([malaria, "ingest", "--source", "synthetic", "--limit", "40"], env=env)
        if args.engines:
            engines = compare_engines(command, env, scratch)
            machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
            save(
                "ingest_engines",
                {
                    "benchmark": "ingest engines",
                    "machine": machine,
                    "images": images,
                    "image_size": args.image_size,
                    **engines,
                },
            )
            return
        cold = _ingest(command, env)
        warm = _ingest(command, env)
        with _prefect_server(scratch / "server-home", quiet) as api_url:
            served = _ingest(
                command, {**env, "MALARIA_DATA_DIR": str(scratch / "data-2"), **api_url}
            )
        pillow = decoders.get("Pillow", {}).get("images_per_second_per_core")
        result = {
            "benchmark": "ingest",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "images": images,
            "image_size": args.image_size,
            "decoders": decoders,
            "one_image_path_microseconds": stages,
            "shard_writer_images_per_second": scaling,
            "pillow_decode_limit_per_second": pillow and pillow * (os.cpu_count() or 1),
            "pipeline": cold,
            "pipeline_with_a_running_server": served,
            "unchanged_rerun": warm,
        }
        if not args.skip_lecture:
            lecture = measure(
                [sys.executable, "-c", LECTURE_LOOP, str(folder), str(args.image_size)]
            )
            if lecture.returncode != 0:
                sys.exit(f"lecture loop failed:\n{lecture.stderr[-3000:]}")
            result["lecture_loop"] = {
                "seconds": round(lecture.seconds, 2),
                "images_per_second": round(images / lecture.seconds, 1),
                "peak_rss_gib": lecture.peak_rss_gib,
            }
            result["speedup"] = round(lecture.seconds / cold["seconds"], 2)
            result["speedup_with_a_running_server"] = round(lecture.seconds / served["seconds"], 2)
        save("ingest", result)


if __name__ == "__main__":
    main()
