"""Soak benchmark: many small pipeline runs back to back, the way a worker runs the weekly
retrain for months.

    python benchmarks/soak.py --runs 30          # all in this one process
    python benchmarks/soak.py --runs 10 --cli    # each its own `malaria pipeline` process

Each run is the whole `pipeline` flow (ingest, a cache hit after the first; train `simple`
for 2 epochs on 60 synthetic cells of 24 px; evaluate, register, promote, report) against a
SQLite MLflow store and Prefect's temporary server in a temporary directory. Reported:
Prefect temporary servers still running after each run (a leak if they outlive their run),
failures (must be 0), seconds per run and their drift (the last third's median over the
first third's), the process's memory after each run and its growth per run (least squares
over the runs after the first), open file descriptors and threads after each run, and the
child processes left at the end. Printed and saved to benchmarks/results/soak.json
(soak-cli.json with --cli, where memory is each run's peak over its process tree).
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


def temporary_prefect_servers() -> int:
    """Prefect temporary servers running on this machine that this process did not start
    (with --cli: those its finished runs left behind)."""
    import psutil

    own = {child.pid for child in psutil.Process().children(recursive=True)}
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        temporary = ("prefect.server.api.server:create_app", "-m app.prefect_api")
        if any(mark in command for mark in temporary) and process.pid not in own:
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--cli",
        action="store_true",
        help="each run its own `malaria pipeline` process, as a Prefect process worker runs "
        "each flow run (default: all runs in this one process, the worst case for leaks)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="malaria-soak-"))
    os.environ.update(
        {
            "MALARIA_DATA_DIR": str(workdir / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # Prefect's own, in-process
        }
    )
    import psutil
    from _measure import measure

    process = psutil.Process()
    servers_before = temporary_prefect_servers()
    command = [
        sys.executable, "-m", "app.cli", "pipeline", "--source", "synthetic", "--limit", "60",
        "--image-size", "24", "--variants", "simple", "--batch-size", "16",
        "--epochs", str(args.epochs), "--json",
    ]  # fmt: skip

    def run_in_a_new_process() -> dict:
        measured = measure(command, cwd=REPO)
        if measured.returncode != 0:
            raise RuntimeError(measured.stderr.strip().splitlines()[-1])
        return {"peak_rss_mib": round(measured.peak_rss_bytes / 2**20, 1)}

    def run_here() -> dict:
        from cnn.config import IngestConfig, TrainConfig
        from flows.pipeline import pipeline

        pipeline(
            data=IngestConfig(source="synthetic", limit=60, image_size=24),
            variants=["simple"],
            training=TrainConfig(epochs=args.epochs, batch_size=16, patience=20),
        )
        return {"rss_mib": round(process.memory_info().rss / 2**20, 1)}

    run_once = run_in_a_new_process if args.cli else run_here
    runs, failures = [], []
    for index in range(args.runs):
        started = time.perf_counter()
        try:
            measured, ok = run_once(), True
        except Exception as error:
            measured, ok = {}, False
            failures.append({"run": index + 1, "error": traceback.format_exception_only(error)})
        runs.append(
            {
                "run": index + 1,
                "ok": ok,
                "seconds": round(time.perf_counter() - started, 2),
                **measured,
                "open_files": process.num_fds(),
                "threads": threading.active_count(),
                "prefect_servers_left": temporary_prefect_servers() - servers_before,
            }
        )
        print(runs[-1], flush=True)

    seconds = [run["seconds"] for run in runs]
    memory_key = "peak_rss_mib" if args.cli else "rss_mib"
    memory = [run.get(memory_key, 0.0) for run in runs]
    third = max(1, len(runs) // 3)
    save(
        "soak-cli" if args.cli else "soak",
        {
            "mode": "a process per run" if args.cli else "one process",
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
            f"{memory_key}_first": memory[0],
            f"{memory_key}_last": memory[-1],
            f"{memory_key}_growth_per_run": round(slope(memory[1:]), 2),
            "open_files_first_last": [runs[0]["open_files"], runs[-1]["open_files"]],
            "threads_first_last": [runs[0]["threads"], runs[-1]["threads"]],
            "prefect_servers_left_at_end": runs[-1]["prefect_servers_left"],
            "child_processes_at_end": [
                describe(child) for child in process.children(recursive=True)
            ],
            "per_run": runs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
    )


if __name__ == "__main__":
    main()
