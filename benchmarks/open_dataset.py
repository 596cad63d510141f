"""What checking a manifest's counts costs: `open_dataset` (every count against the shards'
split and label columns, and each shard's image width) beside reading only the shards' footers
(the check it replaced).

    python benchmarks/open_dataset.py --dataset data/datasets/folder-64px-<fingerprint>

Prints and saves benchmarks/results/open_dataset.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import save

from cnn.data.dataset import open_dataset


def _seconds(action, repeats: int) -> float:
    """The median wall time of `action` over `repeats` calls (after one warm-up)."""
    action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dataset = open_dataset(args.dataset)
    footers = _seconds(
        lambda: [pq.ParquetFile(path).metadata.num_rows for path in dataset.shard_paths],
        args.repeats,
    )
    checked = _seconds(lambda: open_dataset(args.dataset), args.repeats)
    result = {
        "dataset": str(args.dataset),
        "rows": dataset.rows,
        "shards": len(dataset.shard_paths),
        "footers_only_ms": round(footers * 1000, 2),
        "open_dataset_ms": round(checked * 1000, 2),
        "repeats": args.repeats,
    }
    save("open_dataset", result)


if __name__ == "__main__":
    main()
