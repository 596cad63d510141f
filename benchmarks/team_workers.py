"""Many workers at once: the team stack training four variants on 1, 2 and 4 `gpu` workers.

    python benchmarks/team_workers.py --folder ../shared/data/malaria-dev --limit 4000

`malaria stack up --profile team` (PostgreSQL, SeaweedFS, Prefect and MLflow servers, the
stack's own `gpu` worker) in a temporary folder; the folder ingested into its bucket; then for
1, 2 and 4 `gpu` process workers (each extra one started as another host starts it: its own
home, the stack's environment, `--limit 1`), one `malaria train --work-pool gpu` of the four
variants, timed whole, with each variant's own training seconds. Saved to
benchmarks/results/team_workers.json.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import free_port, measure, save

from app.team import free_port_with_grpc

BIN = Path(sys.executable).parent
VARIANTS = "simple,lenet5,alexnet,resnet"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def _malaria(root: Path, env: dict[str, str], *arguments: str) -> dict:
    run = measure([str(BIN / "malaria"), *arguments, "--json"], env={**QUIET, **env}, cwd=root)
    if run.returncode != 0:
        sys.exit(f"malaria {arguments[0]} failed:\n{run.stderr[-3000:]}")
    return {"seconds": run.seconds, **json.loads(run.stdout.strip().splitlines()[-1])}


def _worker(root: Path, env: dict[str, str], name: str) -> subprocess.Popen:
    """A `gpu` worker as another host starts it: its own home, the stack's environment."""
    home = root / name
    home.mkdir()
    with open(home / "worker.log", "w") as log:
        return subprocess.Popen(
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                "gpu",
                "--limit",
                "1",
                "--name",
                name,
            ],
            env={**os.environ, **QUIET, **env, "HOME": str(home), "PREFECT_HOME": str(home)},
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop(worker: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: a Prefect worker may take minutes to exit on SIGTERM."""
    worker.terminate()
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="NIH-layout folder")
    parser.add_argument("--limit", type=int, default=4000, help="images of the dataset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="malaria-team-bench-"))
    root.chmod(0o755)  # the postgres account reaches its data folder
    env = {"PREFECT_HOME": str(root / "prefect-home")}
    ports = ["--prefect-port", free_port(), "--mlflow-port", free_port()]
    ports += ["--postgres-port", free_port(), "--object-store-port", free_port_with_grpc()]
    up = ["stack", "up", "--profile", "team", *map(str, ports), "--mlflow-workers", "1"]
    state = _malaria(root, env, *up)
    results: dict = {}
    try:
        stack_env = {**env, **state["env"]}
        ingest = ["ingest", "--source", f"folder:{args.folder.resolve()}", "--limit"]
        dataset = _malaria(root, stack_env, *ingest, str(args.limit), "--image-size", "64")
        for count in [int(count) for count in args.workers.split(",")]:
            with ExitStack() as extra:
                for index in range(count - 1):  # the stack runs one `gpu` worker itself
                    extra.callback(_stop, _worker(root, stack_env, f"gpu-{count}-{index}"))
                time.sleep(10)  # the workers start and poll
                train = ["train", "--dataset", dataset["path"], "--variants", VARIANTS]
                train += ["--epochs", str(args.epochs), "--work-pool", "gpu"]
                run = _malaria(root, stack_env, *train)
            results[f"{count}_workers"] = {
                "seconds": round(run["seconds"], 1),
                "variant_train_seconds": {
                    variant_run["variant"]: round(variant_run["train_seconds"], 1)
                    for variant_run in run["runs"]
                },
            }
            print(json.dumps(results[f"{count}_workers"]), flush=True)
    finally:
        _malaria(root, env, "stack", "down")
        shutil.rmtree(root, ignore_errors=True)
    save(
        "team_workers",
        {
            "benchmark": "team stack, four variants on 1, 2 and 4 gpu workers",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "variants": VARIANTS.split(","),
            "images": args.limit,
            "image_size": 64,
            "epochs": args.epochs,
            **results,
        },
    )


if __name__ == "__main__":
    main()
