"""The team profile for real: `malaria stack up --profile team` starts PostgreSQL (Debian's
server, its own data folder) and SeaweedFS under the state folder, Prefect's and MLflow's
servers on PostgreSQL, MLflow's artifacts in the bucket; a pipeline fans two variants out to a
worker at once; everything lands where it should and `stack down` leaves no process."""

import json
import shutil
import tempfile
from pathlib import Path

import psutil
import psycopg2
import pyarrow.fs as pafs
import pytest

from app.team import BUCKET, POSTGRES_BIN_DIRS
from cnn.storage import location
from tests.integration.servers import free_port, malaria_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any((folder / "initdb").exists() for folder in POSTGRES_BIN_DIRS)
        and shutil.which("initdb") is None,
        reason="PostgreSQL's server programs are not installed (.ci/run installs them)",
    ),
]


@pytest.fixture
def reachable_folder():
    """A folder the postgres account can reach (pytest's are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="malaria-team-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def team_stack(reachable_folder):
    tmp_path = reachable_folder
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    ports = {
        "--prefect-port": free_port(),
        "--mlflow-port": free_port(),
        "--postgres-port": free_port(),
        "--object-store-port": free_port(),
    }
    options = [str(part) for option in ports.items() for part in option]
    up = ["stack", "up", "--profile", "team", *options, "--mlflow-workers", "1", "--json"]
    started = malaria_in(tmp_path, *up, env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        state = json.loads(started.stdout.strip().splitlines()[-1])
        yield state, tmp_path, env, ports["--postgres-port"]
    finally:
        stopped = malaria_in(tmp_path, "stack", "down", "--json", env=env)
        if started.returncode == 0:
            assert stopped.returncode == 0, stopped.stderr[-3000:]
    if started.returncode == 0:
        assert not [pid for pid in state["processes"].values() if _running(pid)]


def test_a_team_stack_keeps_runs_in_postgresql_and_artifacts_in_the_bucket(team_stack, monkeypatch):
    state, root, env, postgres_port = team_stack
    assert {"postgres", "object-store", "prefect-server", "mlflow-server"} <= set(
        state["processes"]
    )
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(state)  # keys stay in their 0600 file
    pipeline = malaria_in(
        root,
        "pipeline", "--source", "synthetic", "--limit", "120", "--image-size", "32",
        "--variants", "simple,lenet5", "--epochs", "1", "--work-pool", "cpu", "--json",
        env=env,
    )  # fmt: skip
    assert pipeline.returncode == 0, pipeline.stderr[-3000:]
    result = json.loads(pipeline.stdout.strip().splitlines()[-1])
    assert {run["variant"] for run in result["runs"]} == {"simple", "lenet5"}

    def query(database: str, sql: str) -> list[tuple]:
        connection = psycopg2.connect(
            host="127.0.0.1", port=postgres_port, user="postgres", dbname=database
        )
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    runs = dict(query("mlflow", "select run_uuid, status from runs"))
    assert {run["run_id"] for run in result["runs"]} <= set(runs)
    assert set(runs.values()) == {"FINISHED"}
    assert len(query("mlflow", "select version from model_versions")) == 2
    variants = query("prefect", "select state_type from flow_run where name like 'train-variant %'")
    assert [state for (state,) in variants] == ["COMPLETED", "COMPLETED"]

    for name, value in state["env"].items():
        if name.startswith("AWS_"):  # the endpoint and the credentials file, as workers get
            monkeypatch.setenv(name, value)
    bucket = location(f"s3://{BUCKET}/mlflow")
    objects = bucket.filesystem.get_file_info(pafs.FileSelector(bucket.path, recursive=True))
    models = [info.path for info in objects if info.path.endswith("/MLmodel")]
    assert len(models) >= 2
    assert not (root / "mlflow" / "store").exists()  # nothing in the embedded store

    for name, log in state["logs"].items():
        assert "database is locked" not in Path(log).read_text(), name


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
