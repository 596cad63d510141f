"""Soak benchmark: many small pipeline runs back to back in one long-lived process, the way a
Prefect worker runs the weekly retrain for months.

    python benchmarks/soak.py --runs 30

Each run is the whole `pipeline` flow (ingest, a cache hit after the first; train `simple`
for 2 epochs on 60 synthetic cells of 24 px; evaluate, register, promote, report) against a
SQLite MLflow store and Prefect's temporary server in a temporary directory. Reported:
failures (must be 0), seconds per run and their drift (the last third's median over the
first third's), the process's memory after each run and its growth per run (least squares
over the runs after the first), open file descriptors and threads after each run, and the
child processes left at the end. Printed and saved to benchmarks/results/soak.json.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _measure import save  # noqa: E402


def slope(values: list[float]) -> float:
    """Least-squares growth per step."""
    if len(values) < 2:
        return 0.0
    steps = range(len(values))
    mean_step, mean_value = statistics.fmean(steps), statistics.fmean(values)
    covariance = sum((s - mean_step) * (v - mean_value) for s, v in zip(steps, values, strict=True))
    return covariance / sum((s - mean_step) ** 2 for s in steps)


def describe(child) -> str:
    """A child process's command line, or that it is a zombie (exited, never reaped)."""
    import psutil

    try:
        return " ".join(child.cmdline()[:4])
    except psutil.ZombieProcess:
        return f"zombie: {child.name()} (pid {child.pid})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="malaria-soak-"))
    os.environ.update(
        {
            "MALARIA_DATA_DIR": str(workdir / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}",
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # as `malaria` sets it
        }
    )
    import psutil

    from cnn.config import IngestConfig, TrainConfig
    from flows.pipeline import pipeline

    process = psutil.Process()
    data = IngestConfig(source="synthetic", limit=60, image_size=24)
    training = TrainConfig(epochs=args.epochs, batch_size=16, patience=20)
    runs, failures = [], []
    for index in range(args.runs):
        started = time.perf_counter()
        try:
            result = pipeline(data=data, variants=["simple"], training=training)
            ok, champion = True, result.champion.version if result.champion else None
        except Exception as error:
            ok, champion = False, None
            failures.append({"run": index + 1, "error": traceback.format_exception_only(error)})
        seconds = time.perf_counter() - started
        runs.append(
            {
                "run": index + 1,
                "ok": ok,
                "seconds": round(seconds, 2),
                "rss_mib": round(process.memory_info().rss / 2**20, 1),
                "open_files": process.num_fds(),
                "threads": threading.active_count(),
                "champion_version": champion,
            }
        )
        print(runs[-1], flush=True)

    seconds = [run["seconds"] for run in runs]
    rss = [run["rss_mib"] for run in runs]
    third = max(1, len(runs) // 3)
    children = [describe(child) for child in process.children(recursive=True)]
    save(
        "soak",
        {
            "runs": args.runs,
            "epochs": args.epochs,
            "failures": len(failures),
            "failure_details": failures,
            "seconds_first_run": seconds[0],
            "seconds_median": statistics.median(seconds),
            "seconds_drift_last_over_first_third": round(
                statistics.median(seconds[-third:]) / statistics.median(seconds[1 : third + 1]), 3
            )
            if len(runs) > 3
            else None,
            "seconds_slope_per_run": round(slope(seconds[1:]), 3),
            "rss_mib_after_first": rss[0],
            "rss_mib_after_last": rss[-1],
            "rss_growth_mib_per_run": round(slope(rss[1:]), 2),
            "open_files_first_last": [runs[0]["open_files"], runs[-1]["open_files"]],
            "threads_first_last": [runs[0]["threads"], runs[-1]["threads"]],
            "child_processes_at_end": children,
            "per_run": runs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
    )


if __name__ == "__main__":
    main()
