"""Ingest benchmark: the whole `malaria ingest` command against the lecture's loop.

    python benchmarks/ingest.py --folder ../shared/data/malaria-sample --replicate-to 27558

The lecture's loop reads one image at a time with scikit-image (`imread`, then `resize` to
100×100) and appends it to a list. Both run on the same files in the same run, each as its
own process, timed whole, with the peak memory of its process tree sampled every 0.1 s.
`--replicate-to N` hard-links the folder's files under new patient ids until there are N.
Results are printed and saved to benchmarks/results/ingest.json.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure, save

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="NIH-layout folder")
    parser.add_argument("--replicate-to", type=int, help="grow the folder to N images first")
    parser.add_argument("--image-size", type=int, default=100)
    parser.add_argument("--skip-lecture", action="store_true", help="time only the pipeline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        scratch = Path(scratch)
        folder = args.folder.resolve()
        if args.replicate_to:
            folder = replicate(folder, args.replicate_to, scratch / "cells")
        images = sum(1 for _ in folder.glob("*/*.png"))
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
        env = {
            "MALARIA_DATA_DIR": str(scratch / "data"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

        cold = measure(command, env=env)
        if cold.returncode != 0:
            sys.exit(f"malaria ingest failed:\n{cold.stderr[-3000:]}")
        summary = json.loads(cold.stdout.strip().splitlines()[-1])
        warm = measure(command, env=env)
        warm_summary = json.loads(warm.stdout.strip().splitlines()[-1])

        result = {
            "benchmark": "ingest",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "images": images,
            "image_size": args.image_size,
            "pipeline": {
                "seconds": round(cold.seconds, 2),
                "images_per_second": round(images / cold.seconds, 1),
                "peak_rss_gib": cold.peak_rss_gib,
                "ingest_task_seconds": summary["seconds"],
                "rows": summary["rows"],
                "skipped": len(summary["skipped"]),
            },
            "unchanged_rerun": {
                "seconds": round(warm.seconds, 2),
                "cache_hit": warm_summary["cache_hit"],
                "ingest_task_seconds": warm_summary["seconds"],
            },
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
            result["speedup"] = round(lecture.seconds / cold.seconds, 2)
        save("ingest", result)


if __name__ == "__main__":
    main()
