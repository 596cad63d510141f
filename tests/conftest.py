"""Shared fixtures: real Prefect (test harness), real MLflow (SQLite in a temp dir), tiny data."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread each: the workers share the cores
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn.sources.synthetic import draw_cell

LOGICAL_CPU_DEVICES = 2
"""The test processes split the CPU into this many TensorFlow devices, before TensorFlow
starts, so that one model on several devices (`cnn.training.devices`) is tested without GPUs;
training uses one of them unless a test asks for more."""


def _split_the_cpu() -> None:
    import tensorflow as tf

    (cpu, *_) = tf.config.list_physical_devices("CPU")
    devices = [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPU_DEVICES
    tf.config.set_logical_device_configuration(cpu, devices)


_split_the_cpu()

NIH_PATIENTS = (
    "C100P61ThinF",
    "C101P62ThinF",
    "C33P1thinF",
    "C48P9thinF",
    "C59P20thinF",
    "C68P29N",
    "C99P60ThinF",
    "C116P77ThinF",
    "C130P91ThinF",
    "C182P143NThinF",
)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server and database for the session."""
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Now, not in a test's first flow run: its console handler would keep writing to that
    # test's `capsys` stream, closed when the test ends.
    setup_logging()
    # No test reads flow-run logs back from the API; shipping them loaded the test server and
    # the harness drained the backlog at the end of the session (92 s seen on one worker).
    no_api_logs = {PREFECT_LOGGING_TO_API_ENABLED: False}
    with temporary_settings(updates=no_api_logs), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh MLflow SQLite store for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("MALARIA_DATA_DIR", str(path))
    return path


def write_nih_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """An NIH-layout folder of synthetic PNGs with real-form file names over ten patients."""
    rng = np.random.default_rng(seed)
    for label, class_folder in enumerate(("Parasitized", "Uninfected")):
        folder = root / class_folder
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            patient = NIH_PATIENTS[index % len(NIH_PATIENTS)]
            name = f"{patient}_IMG_20150918_1441{index:02d}_cell_{index}.png"
            Image.fromarray(draw_cell(rng, parasitized=label == 0)).save(folder / name)
    return root


def write_easy_folder(root, per_class: int):
    """Parasitized cells are purple discs, uninfected ones pink: learnable in a few steps."""
    rng = np.random.default_rng(0)
    for label, (name, color) in enumerate(
        (("Parasitized", (120, 50, 150)), ("Uninfected", (220, 140, 160)))
    ):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(rng.normal(color, 20, size=(36, 36, 3)), 0, 255).astype(np.uint8)
            patient = NIH_PATIENTS[index % len(NIH_PATIENTS)]
            path = root / name / f"{patient}_IMG_{label}{index:03d}_cell_{index}.png"
            Image.fromarray(pixels).save(path)
    return root


@pytest.fixture
def nih_folder(tmp_path) -> Path:
    return write_nih_folder(tmp_path / "cells", per_class=30)


def write_nih_zip(path: Path, folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Zip an NIH-layout folder as `cell_images/<Class>/<file>`, plus any extra members."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*.png")):
            archive.write(file, f"cell_images/{file.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def pytest_collection_modifyitems(items):
    """Files with slow tests first, in reverse path order (the integration and command-line
    files, the longest, come early); each file's tests keep their order. xdist hands each
    worker whole files in this order (`--no-loadscope-reorder`; by default it sends the files
    with the most tests first): started early, the long ones do not end the run on one worker
    while the other idles."""

    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    slow_files = sorted({file_of(item) for item in items if item.get_closest_marker("slow")})
    rank = {file: -index for index, file in enumerate(slow_files)}
    items.sort(key=lambda item: rank.get(file_of(item), 1))


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than cores. Much of the suite waits on `malaria` processes and
    servers; a third worker on 2 cores fills that time (8 min 54 s against 9 min 40 s)."""
    return (os.cpu_count() or 1) + 1
