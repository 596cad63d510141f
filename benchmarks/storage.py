"""Storage benchmark: how to hold image pixels in Parquet so training loads them fast, and
how fast ingest and training's input go to and from an S3-compatible store against local disk.

    python benchmarks/storage.py --dataset data/datasets/folder-100px-<fingerprint> [--s3]

Rewrites the dataset's images as raw uint8 bytes under each compression, and as PNG bytes,
then times writing and reading back to a uint8 array (PNG: decoding included, since training
would pay it every epoch). With `--s3`, starts a SeaweedFS server on 127.0.0.1 (the tests'
helper) and, alternating local and S3 runs: ingests the dataset's source again into a local
folder and into the bucket (images/s); times epochs of training input (`SplitBatches`,
shuffled, the train split) from the bucket and from the local copy; and runs `malaria train`
(`simple`, one epoch, streamed: `--in-memory-limit-mb 0`) from the bucket on the dataset and
on it replicated `--replicas` times (its shards copied under new ids), sampling peak memory.
Prints and saves benchmarks/results/storage.json.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import measure, save

from cnn.config import IngestConfig
from cnn.data.batches import SplitBatches
from cnn.data.dataset import Dataset, images_from_column, open_dataset
from cnn.data.manifest import MANIFEST_NAME, Manifest
from cnn.ingest.build import build_dataset
from cnn.io.storage import Location, location
from cnn.sources.specs import open_source
from tests.integration.servers import seaweed_s3


def _png_bytes(images: np.ndarray) -> list[bytes]:
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def _decode_png(column: pa.ChunkedArray) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(data))) for data in column.to_pylist()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="an ingested dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also measure a local S3 server")
    parser.add_argument("--replicas", type=int, default=10, help="of the dataset, for memory")
    args = parser.parse_args()

    dataset = open_dataset(args.dataset)
    shape = dataset.image_shape
    images = images_from_column(
        pq.read_table(dataset.shard_paths, columns=["image"])["image"], shape
    )
    raw = pa.array([image.tobytes() for image in images], pa.binary(int(np.prod(shape))))
    started = time.perf_counter()
    png = pa.array(_png_bytes(images), pa.binary())
    png_encode_seconds = time.perf_counter() - started

    layouts = [("raw", codec, raw) for codec in ("none", "snappy", "lz4", "zstd")]
    layouts.append(("png", "none", png))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for encoding, codec, column in layouts:
            path = Path(scratch) / f"{encoding}-{codec}.parquet"
            table = pa.table({"image": column})
            started = time.perf_counter()
            pq.write_table(table, path, compression=codec, use_dictionary=False, row_group_size=256)
            write_seconds = time.perf_counter() - started
            if encoding == "png":
                write_seconds += png_encode_seconds
            timings = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                loaded = pq.read_table(path)["image"]
                pixels = (
                    images_from_column(loaded, shape) if encoding == "raw" else _decode_png(loaded)
                )
                timings.append(time.perf_counter() - started)
            assert pixels.shape == images.shape
            results.append(
                {
                    "encoding": encoding,
                    "compression": codec,
                    "megabytes": round(path.stat().st_size / 1e6, 1),
                    "write_ms_per_1000_images": round(write_seconds / len(images) * 1e6, 1),
                    "read_ms_per_1000_images": round(min(timings) / len(images) * 1e6, 1),
                }
            )
    result = {
        "benchmark": "storage",
        "images": len(images),
        "image_shape": shape,
        "layouts": results,
    }
    if args.s3:
        result.update(_object_store(dataset, args.repeats, args.replicas))
    save("storage", result)


def _object_store(dataset: Dataset, repeats: int, replicas: int) -> dict:
    """Ingest and streaming rates, local and S3, and training's peak memory from S3."""
    with tempfile.TemporaryDirectory() as scratch, seaweed_s3(Path(scratch) / "s3") as (env, _):
        os.environ.update(env)
        remote = location(f"s3://benchmark/{dataset.name}")
        pafs.copy_files(str(dataset.path), remote.path, destination_filesystem=remote.filesystem)
        return {
            "ingest_images_per_second": _ingest_rates(dataset, Path(scratch), repeats),
            "training_input_images_per_second": _streaming_rates(
                dataset, open_dataset(remote), repeats
            ),
            "training_from_s3": [
                _train_memory(replicate(remote, copies), Path(scratch), env)
                for copies in (1, replicas)
            ],
        }


def _ingest_rates(dataset: Dataset, scratch: Path, repeats: int) -> dict[str, list[float]]:
    """Images/s of ingesting the dataset's source again (same settings), into a local folder
    and into the bucket, alternating."""
    config = IngestConfig.model_validate(dataset.manifest.config)
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    for attempt in range(repeats):
        for where, folder in (("local", scratch / "ingest"), ("s3", "s3://benchmark/ingest")):
            target = location(folder)
            target.delete()
            started = time.perf_counter()
            written, cached = build_dataset(open_source(config.source), config, target)
            assert not cached
            rates[where].append(round(written.rows / (time.perf_counter() - started), 1))
            print(f"ingest {attempt + 1}/{repeats} {where}: {rates[where][-1]} images/s")
    return rates


def _streaming_rates(local: Dataset, remote: Dataset, repeats: int) -> dict[str, list[float]]:
    """Images/s of one shuffled epoch of the train split's batches, local and from S3."""

    def epoch_rate(source: Dataset) -> float:
        batches = SplitBatches(source, "train", 100, shuffle=True, seed=1)
        started = time.perf_counter()
        count = sum(len(batches[index][1]) for index in range(len(batches)))
        return round(count / (time.perf_counter() - started), 1)

    rates: dict[str, list[float]] = {"local": [], "s3": []}
    for _ in range(repeats):
        rates["local"].append(epoch_rate(local))
        rates["s3"].append(epoch_rate(remote))
    return rates


def replicate(dataset: Location, copies: int) -> Location:
    """The dataset `copies` times over beside it (each copy's ids suffixed), as a dataset."""
    if copies == 1:
        return dataset
    original = open_dataset(dataset)
    target = location(f"{dataset.uri}-x{copies}")
    target.delete()
    shards = []
    for shard in original.manifest.shards:
        table = (dataset / shard.file).parquet().read()
        for copy in range(copies):
            ids = pc.binary_join_element_wise(table["source_id"], f"#{copy}", "")
            name = f"{shard.file.removesuffix('.parquet')}-copy{copy}.parquet"
            written = table.set_column(table.schema.get_field_index("source_id"), "source_id", ids)
            pq.write_table(written, (target / name).path, filesystem=target.filesystem)
            shards.append({"file": name, "rows": shard.rows})
    counts = {
        split: {label: count * copies for label, count in per_label.items()}
        for split, per_label in original.manifest.counts.items()
    }
    stated = {"rows": original.rows * copies, "shards": shards, "counts": counts}
    manifest = Manifest.model_validate({**original.manifest.model_dump(mode="json"), **stated})
    manifest.write(target / MANIFEST_NAME)
    return target


def _train_memory(dataset: Location, scratch: Path, env: dict[str, str]) -> dict:
    """`malaria train` of `simple` for one epoch, streamed from the bucket: peak memory."""
    command = [str(Path(sys.executable).with_name("malaria")), "train", "--dataset", dataset.uri]
    options = ["--variants", "simple", "--epochs", "1", "--in-memory-limit-mb", "0", "--json"]
    run = measure(
        [*command, *options],
        env={
            **env,
            "MALARIA_DATA_DIR": str(scratch / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        },
    )
    if run.returncode != 0:
        sys.exit(f"malaria train failed:\n{run.stderr[-3000:]}")
    rows = open_dataset(dataset).rows
    print(f"train from S3, {rows} images: {run.seconds:.0f} s, {run.main_peak_rss_gib} GiB")
    return {
        "images": rows,
        "seconds": round(run.seconds, 1),
        "training_process_peak_rss_gib": run.main_peak_rss_gib,
        "process_tree_peak_rss_gib": run.peak_rss_gib,
    }


if __name__ == "__main__":
    main()
