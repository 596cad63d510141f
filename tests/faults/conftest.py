"""The fault suite's real servers: the session's Prefect server (the test harness's, a process
of its own) for every `malaria` process, so that killed runs leave no temporary server behind;
an MLflow store (or server) per test."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api(prefect_harness) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture
def fault_env(prefect_api, tmp_path) -> dict[str, str]:
    """Environment of one test's `malaria` processes: shared Prefect, own data and MLflow."""
    return {
        **prefect_api,
        "MALARIA_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


def data_dir_of(env: dict[str, str]) -> Path:
    return Path(env["MALARIA_DATA_DIR"])
