"""Shared helpers of the benchmark scripts: run a command, time it, sample its peak memory;
a free port for a server they start."""

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Measurement:
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str
    main_peak_rss_bytes: int = 0
    """Peak of the command's own process, without its children."""

    @property
    def peak_rss_gib(self) -> float:
        return round(self.peak_rss_bytes / 2**30, 3)

    @property
    def main_peak_rss_gib(self) -> float:
        return round(self.main_peak_rss_bytes / 2**30, 3)


def measure(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Measurement:
    """Run `command`; wall time and the peak summed RSS of it and all its descendants."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = main_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, main_peak
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(_rss(member) for member in tree))
                main_peak = max(main_peak, _rss(parent))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return Measurement(seconds, peak, process.returncode, stdout, stderr, main_peak)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def save(name: str, result: dict) -> Path:
    """Print the result and save it as benchmarks/results/<name>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"saved {path}")
    return path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
