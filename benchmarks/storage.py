"""Storage benchmark: how to hold image pixels in Parquet so training loads them fast, and
how fast training's input streams from an S3-compatible store against local disk.

    python benchmarks/storage.py --dataset data/datasets/folder-100px-<fingerprint> [--s3]

Rewrites the dataset's images as raw uint8 bytes under each compression, and as PNG bytes,
then times writing and reading back to a uint8 array (PNG: decoding included, since training
would pay it every epoch). With `--s3`, starts a SeaweedFS server on 127.0.0.1 (the tests'
helper), uploads the dataset, and times epochs of training input (`SplitBatches`, shuffled,
the train split) from there and from the local copy, alternating. Prints and saves
benchmarks/results/storage.json.
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import save

from cnn.dataset import images_from_column, open_dataset


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
    parser.add_argument("--s3", action="store_true", help="also stream from a local S3 server")
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
    streaming = _streaming_rates(dataset, args.repeats) if args.s3 else None
    save(
        "storage",
        {
            "benchmark": "storage",
            "images": len(images),
            "image_shape": shape,
            "layouts": results,
            "training_input_images_per_second": streaming,
        },
    )


def _streaming_rates(dataset, repeats: int) -> dict[str, list[float]]:
    """Images/s of one shuffled epoch of the train split's batches, local and from S3."""
    import os

    import pyarrow.fs as pafs

    from cnn.batches import SplitBatches
    from cnn.storage import location
    from tests.integration.servers import seaweed_s3

    def epoch_rate(source) -> float:
        batches = SplitBatches(source, "train", 100, shuffle=True, seed=1)
        started = time.perf_counter()
        count = sum(len(batches[index][1]) for index in range(len(batches)))
        return round(count / (time.perf_counter() - started), 1)

    rates: dict[str, list[float]] = {"local": [], "s3": []}
    with tempfile.TemporaryDirectory() as scratch, seaweed_s3(Path(scratch)) as (env, _):
        os.environ.update(env)
        remote = location(f"s3://benchmark/{dataset.name}")
        pafs.copy_files(str(dataset.path), remote.path, destination_filesystem=remote.filesystem)
        remote_dataset = open_dataset(remote)
        for _ in range(repeats):
            rates["local"].append(epoch_rate(dataset))
            rates["s3"].append(epoch_rate(remote_dataset))
    return rates


if __name__ == "__main__":
    main()
