"""Storage benchmark: how to hold image pixels in Parquet so training loads them fast.

    python benchmarks/storage.py --dataset data/datasets/folder-100px-<fingerprint>

Rewrites the dataset's images as raw uint8 bytes under each compression, and as PNG bytes,
then times writing and reading back to a uint8 array (PNG: decoding included, since training
would pay it every epoch). Prints and saves benchmarks/results/storage.json.
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
    save(
        "storage",
        {"benchmark": "storage", "images": len(images), "image_shape": shape, "layouts": results},
    )


if __name__ == "__main__":
    main()
