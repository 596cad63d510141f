"""Which Prefect server a command uses, and the temporary one that dies with its command."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.prefect_api import adopt_running_stack
from app.stack_settings import QUIET_ENVIRONMENT
from tests.integration.servers import REPO, free_port

STACK_VARIABLES = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MALARIA_DATA_DIR")


def _answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_prefect_url_that_does_not_answer_is_named_and_nothing_is_written(tmp_path):
    """In a process of its own: Prefect reads `PREFECT_API_URL` once, when imported."""
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {"PREFECT_API_URL": url, "MALARIA_DATA_DIR": str(tmp_path / "data")}
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "ingest", "--source", "synthetic", "--limit", "40"],
        cwd=REPO,
        env={**os.environ, **QUIET_ENVIRONMENT, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    (line,) = completed.stderr.strip().splitlines()
    assert line == f"malaria: error: PREFECT_API_URL {url} does not answer"
    assert not (tmp_path / "data").exists()


PROFILE_SERVER = """
import psutil
from app.prefect_api import PrefectApiError, connect_prefect
try:
    connect_prefect()
except PrefectApiError as error:
    print(error)
print(len(psutil.Process().children()))
"""


def test_a_profiles_url_wins_and_no_temporary_server_starts(tmp_path):
    """A URL in the active profile (not in the environment) is the server to use: it is
    checked, and no temporary server is started beside it."""
    url = f"http://127.0.0.1:{free_port()}/api"
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "elsewhere"\n\n[profiles.elsewhere]\nPREFECT_API_URL = "{url}"\n'
    )
    completed = _python_in_prefect_home(PROFILE_SERVER, home)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.splitlines() == [f"PREFECT_API_URL {url} does not answer", "0"]


TEMPORARY_SERVER = """
from app.prefect_api import connect_prefect
api = connect_prefect()
api.wait_ready()
print(api.url)
"""


def test_the_temporary_server_starts_in_a_prefect_home_whose_folders_do_not_exist_yet(tmp_path):
    home = tmp_path / "new" / "nested" / "prefect"
    completed = _python_in_prefect_home(TEMPORARY_SERVER, home)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().startswith("http://127.0.0.1:")
    assert (home / "prefect.db").is_file()


def _python_in_prefect_home(
    script: str, home: Path, *args: str | os.PathLike
) -> subprocess.CompletedProcess:
    """`script` (with `args`) in a Python process whose only Prefect setting is `PREFECT_HOME`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**env, **QUIET_ENVIRONMENT, "PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


HEARTBEAT_PROBE = """
from prefect import flow
from prefect.settings import get_current_settings


@flow
def probe():
    return get_current_settings().flows.heartbeat_frequency
"""
RUN_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from app.commands import run_flow
print("heartbeat", run_flow("heartbeat_probe", "probe"))
"""


@pytest.mark.slow
def test_flow_runs_on_a_temporary_server_send_no_heartbeat(tmp_path):
    """Nothing watches a temporary server; each flow run's end waited for its heartbeat."""
    (tmp_path / "heartbeat_probe.py").write_text(HEARTBEAT_PROBE)
    completed = _python_in_prefect_home(RUN_PROBE, tmp_path / "prefect", tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "heartbeat None"


def test_flow_runs_on_a_running_server_beat_as_often_as_its_lost_run_alert_expects(
    tmp_path, monkeypatch, prefect_harness
):
    """With Prefect's default (every 180 s), a `malaria train` on the stack was marked Crashed
    by the alert that waits 90 s for a heartbeat, then Completed."""
    import app.commands
    from app.stack_settings import HEARTBEAT_SECONDS

    (tmp_path / "heartbeat_probe.py").write_text(HEARTBEAT_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert app.commands.run_flow("heartbeat_probe", "probe") == HEARTBEAT_SECONDS


def _record_stack(tmp_path, prefect_url: str) -> os.PathLike:
    state_file = tmp_path / "stack.json"
    env = {
        "PREFECT_API_URL": prefect_url,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999",
        "MALARIA_DATA_DIR": str(tmp_path / "stack-data"),
    }
    state_file.write_text(json.dumps({"env": env}))
    return state_file


def test_a_recorded_stack_that_answers_is_used_and_set_variables_win(
    tmp_path, monkeypatch, prefect_harness
):
    from prefect.settings import PREFECT_API_URL

    for name in STACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALARIA_DATA_DIR", str(tmp_path / "mine"))
    state_file = _record_stack(tmp_path, PREFECT_API_URL.value())

    assert adopt_running_stack(state_file)
    assert os.environ["PREFECT_API_URL"] == PREFECT_API_URL.value()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert os.environ["MALARIA_DATA_DIR"] == str(tmp_path / "mine")


def test_a_recorded_stack_that_is_gone_is_ignored(tmp_path, monkeypatch):
    for name in STACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    state_file = _record_stack(tmp_path, f"http://127.0.0.1:{free_port()}/api")
    assert not adopt_running_stack(state_file)
    assert not adopt_running_stack(tmp_path / "no-such-stack.json")
    assert not any(name in os.environ for name in STACK_VARIABLES)


START_AND_WAIT = """
import sys, time
from app.prefect_api import connect_prefect
api = connect_prefect()
api.wait_ready()
print(api.process.pid, api.url, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_command_killed_with_sigkill_leaves_no_temporary_server(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    command = subprocess.Popen(
        [sys.executable, "-c", START_AND_WAIT],
        cwd=REPO,
        env={**env, **QUIET_ENVIRONMENT, "PREFECT_HOME": str(tmp_path / "prefect-home")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid, url = command.stdout.readline().split()
        assert _answers(url)
        command.send_signal(signal.SIGKILL)  # the command only, as the OOM killer does
        command.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(int(pid))
        assert not _answers(url)
    finally:
        command.kill()
        command.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1]
    except FileNotFoundError:
        return False
    return not state.startswith("Z")  # a zombie has exited, and waits for init to reap it
