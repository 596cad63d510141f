"""Run it the way the users do: `malaria stack up` (Prefect server, MLflow server, work pools,
the deployments on them, workers), then a `retrain` started through the API exactly as the UI's
Run button starts it, on real processes bound to 127.0.0.1."""

import json
import sqlite3
import time

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient

from app.alerts import ALERTS, AUTOMATION_PREFIX
from tests.integration.servers import (
    WebhookReceiver,
    free_port,
    malaria_in,
    run_as_the_ui_does,
)

pytestmark = pytest.mark.slow

RUN_TIMEOUT_SECONDS = 420
WEBHOOK_PASSWORD = "pass-in-url"
"""Written into the webhook URL, as services that take basic auth let users do."""
UI_PARAMETERS = {  # what the form of the retrain deployment sends for a small run
    "data": {"source": "synthetic", "limit": 60, "image_size": 32},
    "variants": ["simple"],
    "training": {"epochs": 1, "batch_size": 16},
}


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def stack(tmp_path, webhook):
    """`malaria stack up` in a fresh directory, with a Prefect home of its own (in a folder
    that does not exist yet: Prefect alone makes only the last one) and the server's alerts
    posting to `webhook`; down after."""
    env = {
        "PREFECT_HOME": str(tmp_path / "homes" / "prefect"),
        "MALARIA_DATA_DIR": str(tmp_path / "data"),
    }
    options = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
    with_password = webhook.url.replace("http://", f"http://alerts:{WEBHOOK_PASSWORD}@")
    options += ["--mlflow-workers", "1", "--webhook-url", with_password]
    started = malaria_in(tmp_path, "stack", "up", *options, "--json", env=env)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield json.loads(started.stdout.strip().splitlines()[-1]), tmp_path, env
    finally:
        stopped = malaria_in(tmp_path, "stack", "down", "--json", env=env)
        if started.returncode == 0:
            assert stopped.returncode == 0, stopped.stderr
    if started.returncode == 0:
        state = json.loads(started.stdout.strip().splitlines()[-1])
        assert not [pid for pid in state["processes"].values() if _running(pid)]


def test_retrain_started_like_the_ui_run_button_trains_registers_and_promotes(stack, webhook):
    state, root, env = stack
    api = f"{state['prefect_url']}/api"
    assert set(state["deployments"]) >= {
        "retrain",
        "ingest",
        "train",
        "train-variant",
        "evaluate",
        "predict",
        "label-issues",
        "train-variant-gpu",
    }
    assert "train-variant-kubernetes" not in state["deployments"]  # no such pool in the stack
    for name, pid in state["processes"].items():
        assert _listens_only_on_loopback(pid) or name.startswith("worker"), name
    gpu_worker = psutil.Process(state["processes"]["worker-gpu"]).cmdline()
    assert gpu_worker[gpu_worker.index("--limit") + 1] == "1"  # one variant at a time a GPU

    retrain = httpx.get(f"{api}/deployments/name/retrain/retrain", timeout=10).json()
    # any worker's host runs it from its own checkout, not from this host's path
    assert retrain["pull_steps"] == [{"app.deploy_steps.set_project_directory": {}}]
    automations = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
    assert sorted(a["name"] for a in automations) == sorted(state["alerts"])
    assert sorted(state["alerts"]) == sorted(AUTOMATION_PREFIX + title for title in ALERTS)
    (schedule,) = retrain["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert retrain["concurrency_limit"] == 1 or retrain["global_concurrency_limit"]["limit"] == 1
    assert retrain["enforce_parameter_schema"] is True

    _a_temporary_server_in_the_same_home_runs_no_stack_alert(root, env, webhook)

    refused = httpx.post(
        f"{api}/deployments/{retrain['id']}/create_flow_run",
        json={"parameters": {"data": {"source": "synthetic", "image_size": 5}}},
        timeout=10,
    )
    assert refused.status_code in (409, 422), refused.text
    assert "image_size" in refused.text

    flow_run = run_as_the_ui_does(api, retrain["id"], UI_PARAMETERS, RUN_TIMEOUT_SECONDS)
    assert flow_run["state"]["type"] == "COMPLETED", _worker_logs(state)
    assert flow_run["work_pool_name"] == "cpu"

    client = MlflowClient(state["mlflow_url"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "malaria-cnn"]
    parent, run = sorted(
        client.search_runs([experiment.experiment_id]),
        key=lambda run: "mlflow.parentRunId" in run.data.tags,
    )
    assert parent.info.run_name == flow_run["name"] and flow_run["name"].startswith("retrain ")
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.status == parent.info.status == "FINISHED"
    assert run.data.params["variant"] == "simple"
    assert run.data.params["image_shape"] == "(32, 32, 3)"
    champion = client.get_model_version_by_alias("malaria-cnn", "champion")
    assert champion.run_id == run.info.run_id

    artifacts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["retrain-summary"]}}},
        timeout=10,
    ).json()
    (summary,) = artifacts
    assert summary["flow_run_id"] == flow_run["id"]
    assert (
        f"{state['mlflow_url']}/#/experiments/{experiment.experiment_id}/runs/" in summary["data"]
    )
    assert "is the first champion" in summary["data"]
    assert (root / "data" / "datasets").is_dir()  # the workers used the stack's data dir
    promoted = webhook.wait_for(lambda body: body["event"] == "promoted")
    assert promoted["source"] == "prefect-server" and "version 1 is champion" in promoted["text"]

    # A flow run SIGKILLed (as the OOM killer does) sends nothing itself: the server alerts.
    longer = {**UI_PARAMETERS, "training": {"epochs": 200, "batch_size": 16}}
    created = httpx.post(
        f"{api}/deployments/{retrain['id']}/create_flow_run",
        json={"parameters": longer},
        timeout=10,
    )
    assert created.status_code == 201, created.text  # once seen failing under a loaded suite
    killed = _kill_when_running(api, created.json()["id"], state["processes"]["worker-cpu"])
    alert = webhook.wait_for(lambda body: body["event"] == "failed")
    assert killed["name"] in alert["text"] and "Crashed" in alert["text"]
    assert alert["source"] == "prefect-server"
    assert len(webhook.received) == 2  # no post from the workers themselves
    _the_webhook_url_is_kept_secret(api, root / ".stack", webhook)


def _a_temporary_server_in_the_same_home_runs_no_stack_alert(root, env, webhook) -> None:
    """A command's temporary server (its flow run fails inside: one patient cannot be split)
    in the stack's Prefect home. Was: it shared the stack's database, so it ran the stack's
    automations and posted `failed` (and its failed posts ended the output in tracebacks)."""
    elsewhere = root / "elsewhere"  # no .stack here: the command starts a temporary server
    for folder in ("Parasitized", "Uninfected"):
        (elsewhere / "cells" / folder).mkdir(parents=True)
        (elsewhere / "cells" / folder / "C33P1thinF_IMG_1_cell_1.png").write_bytes(b"not a png")
    failed = malaria_in(elsewhere, "ingest", "--source", "folder:cells", env=env)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Finished in state Failed" in failed.stderr  # the flow ran, and failed
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("malaria: error")]
    assert "needs at least 2 patients" in error
    assert "Traceback" not in failed.stderr
    assert webhook.received == []


def _the_webhook_url_is_kept_secret(api: str, state_dir, webhook) -> None:
    """Was: the URL in plain text in the block (the unauthenticated API returned it) and in
    the `prefect.block-document.created` event."""
    secrets = (webhook.url.rsplit("/", 1)[-1], WEBHOOK_PASSWORD)
    blocks = httpx.post(f"{api}/block_documents/filter", json={}, timeout=10)
    assert blocks.status_code == 200 and "malaria-alerts" in blocks.text
    assert not [secret for secret in secrets if secret in blocks.text]
    with sqlite3.connect(state_dir / "prefect.db") as database:
        events = database.execute("select event, payload from events").fetchall()
        logs = database.execute("select message from log").fetchall()
    assert "prefect.block-document.created" in {event for event, _ in events}
    assert not [row for row in events + logs for secret in secrets if secret in str(row)]


def _kill_when_running(api: str, flow_run_id: str, worker_pid: int) -> dict:
    """SIGKILL the process that runs the flow run once it runs; return the flow run."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        engines = [
            process
            for process in psutil.Process(worker_pid).children(recursive=True)
            if "prefect.engine" in " ".join(_command_line(process))
        ]
        if flow_run["state"]["type"] == "RUNNING" and engines:
            for process in engines:
                process.kill()
            return flow_run
        time.sleep(0.5)
    raise TimeoutError(f"flow run {flow_run_id} never ran")


def _command_line(process: psutil.Process) -> list[str]:
    """The process's command line; none for one that has ended (a zombie until reaped)."""
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (PID 1 here may never reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listens_only_on_loopback(pid: int) -> bool:
    """Whether every TCP socket the process tree listens on is bound to 127.0.0.1."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    listening = [
        connection.laddr.ip
        for process in tree
        for connection in process.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN
    ]
    return bool(listening) and all(ip == "127.0.0.1" for ip in listening)


def _worker_logs(state: dict) -> str:
    return "\n".join(
        open(path).read()[-3000:] for name, path in state["logs"].items() if "worker" in name
    )
