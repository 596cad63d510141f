"""The team profile for real: `malaria stack up --profile team` starts PostgreSQL (Debian's
server, its own data folder) and SeaweedFS under the state folder, Prefect's and MLflow's
servers on PostgreSQL, MLflow's artifacts and the workers' data folder in the bucket. A second
`gpu` worker joins (as a second host would: its own home, the stack's environment); a retrain
created through the API, as the UI's Run button does, trains two variants on the two workers
at once; everything lands where it should and `stack down` leaves no process."""

import json
import shutil
import tempfile
from pathlib import Path

import httpx
import psutil
import psycopg2
import pyarrow.fs as pafs
import pytest

from app.team import BUCKET, POSTGRES_BIN_DIRS, free_port_with_grpc
from cnn.data.dataset import open_dataset
from cnn.io.storage import location
from tests.integration.servers import (
    BIN,
    background,
    free_port,
    malaria_in,
    run_as_the_ui_does,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any((folder / "initdb").exists() for folder in POSTGRES_BIN_DIRS)
        and shutil.which("initdb") is None,
        reason="PostgreSQL's server programs are not installed (.ci/run installs them)",
    ),
]


RETRAIN_PARAMETERS = {  # what the retrain deployment's form sends: two variants on `gpu`
    "data": {"source": "synthetic", "limit": 120, "image_size": 32},
    "variants": ["simple", "lenet5"],
    "training": {"epochs": 1, "batch_size": 16},
    "work_pool": "gpu",
}
RUN_TIMEOUT_SECONDS = 480


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
        "--object-store-port": free_port_with_grpc(),
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
    state, root, _, postgres_port = team_stack
    assert {"postgres", "object-store", "prefect-server", "mlflow-server"} <= set(
        state["processes"]
    )
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(state)  # keys stay in their 0600 file
    assert state["env"]["MALARIA_DATA_DIR"] == f"s3://{BUCKET}/data"
    api = state["env"]["PREFECT_API_URL"]
    second_host = root / "second-host"
    second_host.mkdir()
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1"]
    joined = {**state["env"], "HOME": str(second_host), "PREFECT_HOME": str(second_host)}
    with background(
        [*worker, "--name", "second-host-gpu"], second_host / "worker.log", joined, second_host
    ):
        retrain = httpx.get(f"{api}/deployments/name/retrain/retrain", timeout=10).json()
        flow_run = run_as_the_ui_does(api, retrain["id"], RETRAIN_PARAMETERS, RUN_TIMEOUT_SECONDS)
    assert flow_run["state"]["type"] == "COMPLETED", (second_host / "worker.log").read_text()

    def query(database: str, sql: str) -> list[tuple]:
        connection = psycopg2.connect(
            host="127.0.0.1", port=postgres_port, user="postgres", dbname=database
        )
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    runs = dict(query("mlflow", "select run_uuid, status from runs"))
    assert len(runs) == 3  # the retrain's parent run and one run a variant
    assert set(runs.values()) == {"FINISHED"}
    assert len(query("mlflow", "select version from model_versions")) == 2
    variants = query(
        "prefect",
        "select state_type, start_time, end_time, infrastructure_pid from flow_run "
        "where name like 'train-variant %' order by start_time",
    )
    assert [state for state, *_ in variants] == ["COMPLETED", "COMPLETED"]
    (_, _, first_end, first_worker), (_, second_start, _, second_worker) = variants
    assert second_start < first_end  # at once: each worker takes one run at a time
    assert first_worker != second_worker

    for name, value in state["env"].items():
        if name.startswith("AWS_"):  # the endpoint and the credentials file, as workers get
            monkeypatch.setenv(name, value)
    bucket = location(f"s3://{BUCKET}/mlflow")
    objects = bucket.filesystem.get_file_info(pafs.FileSelector(bucket.path, recursive=True))
    models = [info.path for info in objects if info.path.endswith("/MLmodel")]
    assert len(models) >= 2
    (dataset,) = [found for found in location(f"s3://{BUCKET}/data/datasets").children()]
    assert open_dataset(dataset).rows == RETRAIN_PARAMETERS["data"]["limit"]
    assert not (root / "mlflow" / "store").exists()  # nothing in the embedded store
    assert not (root / "data").exists()  # nor in a local data folder

    for log in [*state["logs"].values(), second_host / "worker.log"]:
        assert "database is locked" not in Path(log).read_text(), log


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
