"""The fault suite's real servers: one Prefect server for every run of the suite, so that
killed runs leave no temporary server behind; an MLflow store (or server) per test."""

from pathlib import Path

import pytest

from tests.integration.servers import prefect_server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> dict[str, str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


@pytest.fixture
def fault_env(prefect_api, tmp_path) -> dict[str, str]:
    """Environment of one test's `malaria` processes: shared Prefect, own data and MLflow."""
    return {
        **prefect_api,
        "MALARIA_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
    }


def data_dir_of(env: dict[str, str]) -> Path:
    return Path(env["MALARIA_DATA_DIR"])
